//! Which ONNX Runtime execution providers a session asks for, in which order, and why one was
//! left out — kept free of ONNX Runtime itself so the choice and every fallback are
//! unit-tested on any machine (CI has only the CPU provider).
//!
//! The accelerated engine (`EngineKind::TensorRt`, feature `tensorrt`) asks for TensorRT, then
//! CUDA, then CPU: ONNX Runtime gives each node to the first provider that can run it, so a
//! node TensorRT refuses still runs on the GPU through CUDA. A provider the loaded library was
//! not built with is skipped before registration; one whose registration fails (CUDA or
//! TensorRT libraries missing at run time) is skipped after. Whatever remains first names the
//! engine in `result.json` (`model.engine`), and every skip is logged with its reason.

use std::path::{Path, PathBuf};

/// One ONNX Runtime execution provider cacd knows how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    TensorRt,
    Cuda,
    Cpu,
}

impl Provider {
    /// The name ONNX Runtime's `GetAvailableProviders` reports.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::TensorRt => "TensorrtExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::Cpu => "CPUExecutionProvider",
        }
    }

    /// The engine name reported in `result.json` when this provider leads the session.
    pub fn engine_name(self) -> &'static str {
        match self {
            Provider::TensorRt => "ort-tensorrt",
            Provider::Cuda => "ort-cuda",
            Provider::Cpu => "ort-cpu",
        }
    }
}

/// The providers a session asks for, best first, and the ones left out with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub chain: Vec<Provider>,
    pub skipped: Vec<(Provider, String)>,
}

impl Plan {
    /// Plans a session. `accelerated`: the TensorRT engine (else the CPU-only ONNX Runtime
    /// engine, whose figures must not silently move to a GPU). `available`: the providers the
    /// loaded library was built with.
    pub fn new(accelerated: bool, available: &[String]) -> Plan {
        let mut plan = Plan {
            chain: Vec::new(),
            skipped: Vec::new(),
        };
        if accelerated {
            for p in [Provider::TensorRt, Provider::Cuda] {
                if available.iter().any(|a| a == p.ort_name()) {
                    plan.chain.push(p);
                } else {
                    plan.skipped.push((
                        p,
                        format!(
                            "this ONNX Runtime library has no {} (it has {})",
                            p.ort_name(),
                            available.join(", ")
                        ),
                    ));
                }
            }
        }
        // CPU is always last: it runs every operator, so the session always builds.
        plan.chain.push(Provider::Cpu);
        plan
    }

    /// Drops a provider whose registration failed, keeping the reason.
    pub fn registration_failed(&mut self, p: Provider, reason: String) {
        self.chain.retain(|&q| q != p);
        self.skipped
            .push((p, format!("registration failed: {reason}")));
    }

    /// The provider that leads the session (names the engine).
    pub fn primary(&self) -> Provider {
        self.chain.first().copied().unwrap_or(Provider::Cpu)
    }

    /// A one-line account for the log: the chain and every fallback with its reason.
    pub fn describe(&self) -> String {
        let chain: Vec<&str> = self.chain.iter().map(|p| p.ort_name()).collect();
        let mut s = format!("execution providers: {}", chain.join(" → "));
        for (p, why) in &self.skipped {
            s += &format!("; without {}: {why}", p.ort_name());
        }
        s
    }
}

/// What a TensorRT engine cache is valid for: an engine built for one model, TensorRT version
/// and GPU is wrong for any other, so each combination gets its own folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    pub model_sha256: String,
    /// e.g. "10.3.0"; "unknown" when libnvinfer cannot be asked.
    pub tensorrt_version: String,
    /// e.g. "Orin (nvgpu)"; "unknown" when the driver cannot be asked.
    pub gpu_name: String,
}

impl CacheKey {
    /// The cache folder under `root` (the data partition): readable, and safe as one path
    /// component whatever the GPU's name contains.
    pub fn dir(&self, root: &Path) -> PathBuf {
        let sha: String = self.model_sha256.chars().take(16).collect();
        root.join(format!(
            "{}-trt{}-{}",
            sanitize(&sha),
            sanitize(&self.tensorrt_version),
            sanitize(&self.gpu_name)
        ))
    }
}

/// Keeps ASCII letters, digits, '.', '_' and '-'; everything else becomes '_'.
fn sanitize(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        "unknown".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ps: &[Provider]) -> Vec<String> {
        ps.iter().map(|p| p.ort_name().to_string()).collect()
    }

    #[test]
    fn gpu_library_gets_tensorrt_then_cuda_then_cpu() {
        let avail = names(&[Provider::TensorRt, Provider::Cuda, Provider::Cpu]);
        let plan = Plan::new(true, &avail);
        assert_eq!(
            plan.chain,
            [Provider::TensorRt, Provider::Cuda, Provider::Cpu]
        );
        assert!(plan.skipped.is_empty());
        assert_eq!(plan.primary().engine_name(), "ort-tensorrt");
    }

    #[test]
    fn cpu_only_library_falls_back_with_reasons() {
        // The PyPI wheel CI uses: CPU (and Azure) only.
        let avail = vec![
            "AzureExecutionProvider".to_string(),
            "CPUExecutionProvider".to_string(),
        ];
        let plan = Plan::new(true, &avail);
        assert_eq!(plan.chain, [Provider::Cpu]);
        assert_eq!(plan.primary().engine_name(), "ort-cpu");
        let skipped: Vec<Provider> = plan.skipped.iter().map(|(p, _)| *p).collect();
        assert_eq!(skipped, [Provider::TensorRt, Provider::Cuda]);
        let line = plan.describe();
        assert!(line.contains("without TensorrtExecutionProvider"), "{line}");
        assert!(
            line.contains("AzureExecutionProvider, CPUExecutionProvider"),
            "{line}"
        );
    }

    #[test]
    fn cuda_without_tensorrt_leads_with_cuda() {
        let avail = names(&[Provider::Cuda, Provider::Cpu]);
        let plan = Plan::new(true, &avail);
        assert_eq!(plan.chain, [Provider::Cuda, Provider::Cpu]);
        assert_eq!(plan.primary().engine_name(), "ort-cuda");
    }

    #[test]
    fn failed_registration_moves_to_the_next_provider() {
        let avail = names(&[Provider::TensorRt, Provider::Cuda, Provider::Cpu]);
        let mut plan = Plan::new(true, &avail);
        plan.registration_failed(Provider::TensorRt, "libnvinfer.so.10: not found".into());
        assert_eq!(plan.primary(), Provider::Cuda);
        plan.registration_failed(Provider::Cuda, "libcudart.so.12: not found".into());
        assert_eq!(plan.primary(), Provider::Cpu);
        assert_eq!(plan.skipped.len(), 2);
        assert!(plan.describe().contains("libnvinfer.so.10"));
    }

    #[test]
    fn the_cpu_engine_never_asks_for_a_gpu() {
        let avail = names(&[Provider::TensorRt, Provider::Cuda, Provider::Cpu]);
        let plan = Plan::new(false, &avail);
        assert_eq!(plan.chain, [Provider::Cpu]);
        assert!(plan.skipped.is_empty());
    }

    #[test]
    fn cache_folders_differ_by_model_tensorrt_and_gpu_and_are_one_component() {
        let k = CacheKey {
            model_sha256: "ab".repeat(32),
            tensorrt_version: "10.3.0".into(),
            gpu_name: "NVIDIA H100 80GB HBM3/../x".into(),
        };
        let root = Path::new("/var/lib/cacd/trt-cache");
        let d = k.dir(root);
        assert_eq!(d.parent(), Some(root));
        assert_eq!(
            d.file_name().and_then(|n| n.to_str()),
            Some("abababababababab-trt10.3.0-NVIDIA_H100_80GB_HBM3_.._x")
        );
        let other_trt = CacheKey {
            tensorrt_version: "8.6.2".into(),
            ..k.clone()
        };
        let other_gpu = CacheKey {
            gpu_name: "Orin (nvgpu)".into(),
            ..k.clone()
        };
        let other_model = CacheKey {
            model_sha256: "cd".repeat(32),
            ..k.clone()
        };
        for o in [other_trt, other_gpu, other_model] {
            assert_ne!(o.dir(root), d);
        }
        let empty = CacheKey {
            model_sha256: String::new(),
            tensorrt_version: "..".into(),
            gpu_name: String::new(),
        };
        assert_eq!(
            empty.dir(root).file_name().and_then(|n| n.to_str()),
            Some("unknown-trtunknown-unknown")
        );
    }
}
