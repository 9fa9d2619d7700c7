//! Pixel decoding of the chosen series: one preallocated `[z, y, x]` array, filled frame by
//! frame, files in parallel (each worker holds one file in memory at a time).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use ndarray::Array3;
use rayon::prelude::*;

use super::scan::{Instance, PixelFormat, Rescale};
use super::select::{Plan, SliceRef};
use super::AssembleError;
use crate::volume::Volume;

/// HU written for PixelPaddingValue (air).
pub const PADDING_HU: i16 = -1024;

/// Decode every slice of `plan` into a volume.
pub fn decode_plan(plan: &Plan, instances: &[Instance]) -> Result<Volume, AssembleError> {
    let frame_len = plan.rows * plan.cols;
    check_duplicates(plan, instances, frame_len)?;

    let mut hu = Array3::<i16>::zeros((plan.slices.len(), plan.rows, plan.cols));
    if let Some(flat) = hu.as_slice_mut() {
        let mut jobs: BTreeMap<usize, Vec<(&SliceRef, &mut [i16])>> = BTreeMap::new();
        for (out, s) in flat.chunks_mut(frame_len).zip(&plan.slices) {
            jobs.entry(s.instance).or_default().push((s, out));
        }
        jobs.into_iter()
            .collect::<Vec<_>>()
            .into_par_iter()
            .try_for_each(|(i, frames)| decode_instance(plan, &instances[i], frames))?;
    }

    Ok(Volume {
        hu,
        geometry: plan.geometry.clone(),
        meta: plan.meta.clone(),
        sop_instance_uids: plan
            .slices
            .iter()
            .map(|s| instances[s.instance].sop_instance_uid.clone())
            .collect(),
        source_frames: plan.slices.iter().map(|s| s.frame as u32 + 1).collect(),
    })
}

/// Frames at one position must be the same image; keep one, refuse otherwise.
fn check_duplicates(
    plan: &Plan,
    instances: &[Instance],
    frame_len: usize,
) -> Result<(), AssembleError> {
    for (i, others) in &plan.duplicates {
        let primary = &plan.slices[*i];
        let mut a = vec![0i16; frame_len];
        decode_instance(plan, &instances[primary.instance], vec![(primary, &mut a)])?;
        for other in others {
            let mut b = vec![0i16; frame_len];
            decode_instance(plan, &instances[other.instance], vec![(other, &mut b)])?;
            if a != b {
                let name = |s: &SliceRef| {
                    let inst = &instances[s.instance];
                    match &inst.frames {
                        Ok(f) if f.len() > 1 => {
                            format!("{} frame {}", inst.sop_instance_uid, s.frame + 1)
                        }
                        _ => inst.sop_instance_uid.clone(),
                    }
                };
                return Err(AssembleError::DuplicatePosition {
                    series_uid: plan.series_uid.clone(),
                    position_mm: primary.distance,
                    first: name(primary),
                    second: name(other),
                });
            }
        }
    }
    Ok(())
}

/// Open one instance in full and decode the requested frames into their output slices.
fn decode_instance(
    plan: &Plan,
    inst: &Instance,
    frames: Vec<(&SliceRef, &mut [i16])>,
) -> Result<(), AssembleError> {
    let undecodable = |detail: String| AssembleError::Undecodable {
        series_uid: plan.series_uid.clone(),
        sop_instance_uid: inst.sop_instance_uid.clone(),
        detail,
    };
    let truncated = |detail: String| AssembleError::TruncatedPixelData {
        series_uid: plan.series_uid.clone(),
        sop_instance_uid: inst.sop_instance_uid.clone(),
        detail,
    };
    let format = inst.pixel.as_ref().map_err(|e| undecodable(e.clone()))?;
    // The header parsed before, so a failure now is in the pixel data (usually a cut file).
    // Walked first: dicom-rs would allocate a lying Pixel Data length before reading it.
    crate::lengths::check_file(&inst.path).map_err(|e| truncated(e.to_string()))?;
    let obj = OpenFileOptions::new()
        .open_file(&inst.path)
        .map_err(|e| truncated(one_line(&e)))?;
    check_native_length(&obj, format, frames.iter().map(|(s, _)| s.frame)).map_err(truncated)?;

    let mut converter: Option<Converter> = None;
    for (slice, out) in frames {
        // Third-party codecs (C and Rust) must not take the process down on hostile input.
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            obj.decode_pixel_data_frame(slice.frame as u32)
        }))
        .map_err(|_| undecodable("the decoder failed".into()))?
        .map_err(|e| undecodable(one_line(&e)))?;
        if decoded.rows() != format.rows || decoded.columns() != format.cols {
            return Err(undecodable(format!(
                "decoded {}×{} but the header says {}×{}",
                decoded.rows(),
                decoded.columns(),
                format.rows,
                format.cols
            )));
        }
        if decoded.samples_per_pixel() != 1 || decoded.bits_allocated() != format.bits_allocated {
            return Err(undecodable(format!(
                "decoded {} samples of {} bits, expected 1 of {}",
                decoded.samples_per_pixel(),
                decoded.bits_allocated(),
                format.bits_allocated
            )));
        }
        let data = decoded.data();
        let need = out.len() * usize::from(format.bits_allocated / 8);
        if data.len() < need {
            return Err(truncated(format!(
                "frame {} has {} bytes, {} needed",
                slice.frame + 1,
                data.len(),
                need
            )));
        }
        let conv = match converter.take() {
            Some(c) if c.rescale == slice.rescale => c,
            _ => Converter::new(*format, slice.rescale),
        };
        conv.run(&data[..need], out);
        converter = Some(conv);
    }
    Ok(())
}

/// Native (uncompressed) pixel data must hold every frame we read.
fn check_native_length(
    obj: &DefaultDicomObject,
    format: &PixelFormat,
    frames: impl Iterator<Item = usize>,
) -> Result<(), String> {
    let Some(elem) = obj.get(tags::PIXEL_DATA) else {
        return Err("no Pixel Data".into());
    };
    let Value::Primitive(p) = elem.value() else {
        return Ok(()); // encapsulated: the codec checks its own stream
    };
    let frame_bytes =
        format.rows as usize * format.cols as usize * usize::from(format.bits_allocated / 8);
    let have = p.calculate_byte_len();
    let last = frames.max().unwrap_or(0);
    let need = (last + 1) * frame_bytes;
    if have < need {
        return Err(format!("{have} bytes of pixel data, {need} needed"));
    }
    Ok(())
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Stored sample → HU: bit extraction, sign, padding, rescale, rounding, saturation.
/// Samples of up to 16 bits go through a lookup table over every raw value.
struct Converter {
    format: PixelFormat,
    rescale: Rescale,
    lut: Option<Vec<i16>>,
}

impl Converter {
    fn new(format: PixelFormat, rescale: Rescale) -> Converter {
        let mut c = Converter {
            format,
            rescale,
            lut: None,
        };
        if format.bits_allocated <= 16 {
            let size = 1usize << format.bits_allocated;
            c.lut = Some((0..size as u32).map(|raw| c.hu(raw)).collect());
        }
        c
    }

    fn hu(&self, raw: u32) -> i16 {
        let f = &self.format;
        let shift = u32::from(f.high_bit + 1 - f.bits_stored);
        let bits = u32::from(f.bits_stored);
        let pattern = (u64::from(raw) >> shift) & ((1u64 << bits) - 1);
        let value = if f.signed && pattern & (1u64 << (bits - 1)) != 0 {
            pattern as i64 - (1i64 << bits)
        } else {
            pattern as i64
        };
        if let Some((pad, limit)) = f.padding {
            let is_pad = match limit {
                Some(l) => value >= pad.min(l) && value <= pad.max(l),
                None => value == pad,
            };
            // Some writers give a signed padding value as its unsigned bit pattern.
            if is_pad || pattern as i64 == pad {
                return PADDING_HU;
            }
        }
        let v = (value as f64 * self.rescale.slope + self.rescale.intercept).round();
        v.clamp(i16::MIN as f64, i16::MAX as f64) as i16
    }

    fn run(&self, data: &[u8], out: &mut [i16]) {
        match (self.format.bits_allocated, &self.lut) {
            (8, Some(lut)) => {
                for (o, &b) in out.iter_mut().zip(data) {
                    *o = lut[usize::from(b)];
                }
            }
            // Decoded samples are in native byte order (dicom-pixeldata's in-memory form).
            (16, Some(lut)) => {
                for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                    *o = lut[usize::from(u16::from_ne_bytes([b[0], b[1]]))];
                }
            }
            _ => {
                for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                    *o = self.hu(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(bits_stored: u16, signed: bool, padding: Option<(i64, Option<i64>)>) -> PixelFormat {
        PixelFormat {
            rows: 1,
            cols: 4,
            bits_allocated: 16,
            bits_stored,
            high_bit: bits_stored - 1,
            signed,
            padding,
        }
    }

    fn run(c: &Converter, raw: &[u16]) -> Vec<i16> {
        let data: Vec<u8> = raw.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut out = vec![0i16; raw.len()];
        c.run(&data, &mut out);
        out
    }

    const IDENTITY: Rescale = Rescale {
        slope: 1.0,
        intercept: 0.0,
    };

    #[test]
    fn unsigned_12_bit_with_intercept() {
        let c = Converter::new(
            fmt(12, false, None),
            Rescale {
                slope: 1.0,
                intercept: -1024.0,
            },
        );
        // High bits above BitsStored are ignored (overlay bits in old data).
        assert_eq!(
            run(&c, &[0, 1024, 4095, 0xF000 | 1100]),
            vec![-1024, 0, 3071, 76]
        );
    }

    #[test]
    fn signed_16_and_12_bit() {
        let c = Converter::new(fmt(16, true, None), IDENTITY);
        assert_eq!(
            run(&c, &[(-1000i16) as u16, 400, 0x7FFF]),
            vec![-1000, 400, 32767]
        );
        let c = Converter::new(fmt(12, true, None), IDENTITY);
        // 0xC18 is -1000 in 12-bit two's complement.
        assert_eq!(run(&c, &[0xC18, 0x7FF]), vec![-1000, 2047]);
    }

    #[test]
    fn slope_rounds_and_saturates() {
        let c = Converter::new(
            fmt(16, false, None),
            Rescale {
                slope: 0.5,
                intercept: -1024.5,
            },
        );
        assert_eq!(run(&c, &[3, 2049]), vec![-1023, 0]);
        let c = Converter::new(
            fmt(16, false, None),
            Rescale {
                slope: 4.0,
                intercept: 0.0,
            },
        );
        assert_eq!(run(&c, &[60000]), vec![i16::MAX]);
        let c = Converter::new(
            fmt(16, true, None),
            Rescale {
                slope: 4.0,
                intercept: -1024.0,
            },
        );
        assert_eq!(run(&c, &[(-30000i16) as u16]), vec![i16::MIN]);
    }

    #[test]
    fn padding_becomes_air_in_either_spelling() {
        let c = Converter::new(
            fmt(16, true, Some((-2000, None))),
            Rescale {
                slope: 1.0,
                intercept: 0.0,
            },
        );
        assert_eq!(
            run(&c, &[(-2000i16) as u16, (-1999i16) as u16]),
            vec![-1024, -1999]
        );
        // Signed data, padding given as the unsigned pattern 0x8000.
        let c = Converter::new(fmt(16, true, Some((32768, None))), IDENTITY);
        assert_eq!(run(&c, &[0x8000, 5]), vec![-1024, 5]);
        let c = Converter::new(
            fmt(16, false, Some((0, Some(10)))),
            Rescale {
                slope: 1.0,
                intercept: -1024.0,
            },
        );
        assert_eq!(run(&c, &[0, 10, 11, 2024]), vec![-1024, -1024, -1013, 1000]);
    }

    #[test]
    fn eight_and_thirty_two_bit_samples() {
        let mut f = fmt(8, false, None);
        f.bits_allocated = 8;
        let c = Converter::new(
            f,
            Rescale {
                slope: 10.0,
                intercept: -1000.0,
            },
        );
        let mut out = vec![0i16; 2];
        c.run(&[0, 200], &mut out);
        assert_eq!(out, vec![-1000, 1000]);
        let mut f = fmt(32, true, None);
        f.bits_allocated = 32;
        let c = Converter::new(f, IDENTITY);
        let data: Vec<u8> = [-1500i32, 70000]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        c.run(&data, &mut out);
        assert_eq!(out, vec![-1500, i16::MAX]);
    }
}
