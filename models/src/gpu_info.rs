//! What a TensorRT engine cache is keyed on besides the model: the TensorRT version (asked of
//! `libnvinfer`) and the GPU's name (asked of the CUDA driver). Both libraries are opened at
//! run time, like ONNX Runtime's providers open them, so a build with feature `tensorrt`
//! starts on a machine without either and the key says "unknown".
//!
//! Written by hand over `libloading`: two C functions of TensorRT and three of the driver API
//! do not justify binding crates (cudarc lives in the appliance, behind its own feature).

use std::ffi::{c_char, c_int, CStr};

use crate::providers::CacheKey;

/// The cache key for one model on GPU `device_id`.
pub fn cache_key(model_sha256: &str, device_id: i32) -> CacheKey {
    CacheKey {
        model_sha256: model_sha256.to_string(),
        tensorrt_version: tensorrt_version().unwrap_or_else(|| "unknown".into()),
        gpu_name: gpu_name(device_id).unwrap_or_else(|| "unknown".into()),
    }
}

/// TensorRT's version, e.g. "10.3.0", from `getInferLibVersion` (TensorRT ≥ 10 encodes
/// major·10000 + minor·100 + patch, TensorRT 8 major·1000 + minor·100 + patch).
pub fn tensorrt_version() -> Option<String> {
    for name in ["libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"] {
        // SAFETY: loading a shared library runs its initialisers; libnvinfer's are the ones
        // ONNX Runtime's TensorRT provider would run anyway.
        let Ok(lib) = (unsafe { libloading::Library::new(name) }) else {
            continue;
        };
        // SAFETY: `getInferLibVersion` is `int32_t getInferLibVersion(void)` in NvInfer.h.
        let v = unsafe {
            let f = lib.get::<unsafe extern "C" fn() -> i32>(b"getInferLibVersion\0");
            match f {
                Ok(f) => f(),
                Err(_) => continue,
            }
        };
        return Some(decode_trt_version(v));
    }
    None
}

fn decode_trt_version(v: i32) -> String {
    if v >= 100_000 {
        format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

/// The GPU's name from the CUDA driver (`cuDeviceGetName`).
pub fn gpu_name(device_id: i32) -> Option<String> {
    type CuInit = unsafe extern "C" fn(u32) -> c_int;
    type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    // SAFETY: libcuda.so.1 is the driver ONNX Runtime's CUDA provider loads; the three
    // functions have these C signatures in cuda.h (CUresult is an int, CUdevice an int).
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1").ok()?;
        let init = lib.get::<CuInit>(b"cuInit\0").ok()?;
        let get = lib.get::<CuDeviceGet>(b"cuDeviceGet\0").ok()?;
        let name = lib.get::<CuDeviceGetName>(b"cuDeviceGetName\0").ok()?;
        if init(0) != 0 {
            return None;
        }
        let mut dev: c_int = 0;
        if get(&mut dev, device_id) != 0 {
            return None;
        }
        let mut buf = [0 as c_char; 256];
        if name(buf.as_mut_ptr(), buf.len() as c_int, dev) != 0 {
            return None;
        }
        buf[buf.len() - 1] = 0;
        Some(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensorrt_versions_decode_in_both_encodings() {
        assert_eq!(decode_trt_version(100_300), "10.3.0");
        assert_eq!(decode_trt_version(100_701), "10.7.1");
        assert_eq!(decode_trt_version(8602), "8.6.2");
        assert_eq!(decode_trt_version(8_501), "8.5.1");
    }

    #[test]
    fn without_gpu_libraries_the_key_says_unknown_instead_of_failing() {
        // On a machine with TensorRT and a GPU this names them; either way it returns.
        let k = cache_key(&"0f".repeat(32), 0);
        println!("TensorRT cache key here: {k:?}");
        assert!(!k.tensorrt_version.is_empty() && !k.gpu_name.is_empty());
    }
}
