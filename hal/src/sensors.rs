//! Sensors: free disk space (statvfs), memory (/proc/meminfo), temperatures
//! (/sys/class/thermal) and whether a GPU device node exists. Each reader has a `*_from` form
//! taking its root, so tests run over a fake tree.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    pub total_bytes: u64,
    /// Free to unprivileged users (what the daemon may write).
    pub free_bytes: u64,
}

impl DiskSpace {
    pub fn free_percent(&self) -> f64 {
        self.free_bytes as f64 * 100.0 / self.total_bytes.max(1) as f64
    }
}

/// Space on the file system holding `path`.
pub fn disk_space(path: &Path) -> Result<DiskSpace, SensorError> {
    let st = rustix::fs::statvfs(path).map_err(|e| SensorError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(DiskSpace {
        total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
        free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Memory from `/proc/meminfo`.
pub fn memory() -> Result<Memory, SensorError> {
    memory_from(Path::new("/proc/meminfo"))
}

/// Memory from a meminfo-format file (`MemTotal:  16324 kB` lines).
pub fn memory_from(path: &Path) -> Result<Memory, SensorError> {
    let text = std::fs::read_to_string(path).map_err(|source| SensorError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let field = |name: &str| -> Result<u64, SensorError> {
        let parse = || -> Option<u64> {
            let line = text.lines().find(|l| l.starts_with(name))?;
            let rest = line.get(name.len()..)?.trim_start_matches(':');
            let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kb.saturating_mul(1024))
        };
        parse().ok_or_else(|| SensorError::Parse {
            path: path.to_path_buf(),
            message: format!("no readable {name} line"),
        })
    };
    Ok(Memory {
        total_bytes: field("MemTotal:")?,
        available_bytes: field("MemAvailable:")?,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Temperature {
    /// `thermal_zone0` ...
    pub zone: String,
    /// The zone's `type`, e.g. `x86_pkg_temp`, `cpu-thermal`, `gpu-thermal`.
    pub kind: String,
    pub celsius: f64,
}

/// Where the kernel lists thermal zones.
pub const SYSFS_THERMAL: &str = "/sys/class/thermal";

/// Every readable thermal zone; none (an empty list) on machines without any, such as most
/// containers and VMs.
pub fn temperatures() -> Vec<Temperature> {
    temperatures_from(Path::new(SYSFS_THERMAL))
}

/// Thermal zones under `root` (`thermal_zone*/{type,temp}`, temp in millidegrees Celsius),
/// in zone order. Zones whose sensor cannot be read right now (some answer EIO) are skipped.
pub fn temperatures_from(root: &Path) -> Vec<Temperature> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, Temperature)> = rd
        .flatten()
        .filter_map(|e| {
            let zone = e.file_name().to_string_lossy().to_string();
            let n: u32 = zone.strip_prefix("thermal_zone")?.parse().ok()?;
            let dir = e.path();
            let milli: i64 = std::fs::read_to_string(dir.join("temp"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let kind = std::fs::read_to_string(dir.join("type"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            Some((
                n,
                Temperature {
                    zone,
                    kind,
                    celsius: milli as f64 / 1000.0,
                },
            ))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out.into_iter().map(|(_, t)| t).collect()
}

/// Device nodes of an NVIDIA GPU: discrete (`nvidia0`) or Jetson (`nvgpu/igpu0` on JetPack 6
/// and later, `nvhost-gpu` before).
const GPU_NODES: [&str; 3] = ["nvidia0", "nvgpu/igpu0", "nvhost-gpu"];

/// Whether a GPU device node exists under `/dev`.
pub fn gpu_present() -> bool {
    gpu_present_in(Path::new("/dev"))
}

pub fn gpu_present_in(dev: &Path) -> bool {
    GPU_NODES.iter().any(|n| dev.join(n).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_of_a_real_folder() {
        let t = tempfile::tempdir().unwrap();
        let d = disk_space(t.path()).unwrap();
        assert!(d.total_bytes > 0);
        assert!(d.free_bytes <= d.total_bytes);
        assert!((0.0..=100.0).contains(&d.free_percent()));
        assert!(disk_space(&t.path().join("missing")).is_err());
    }

    #[test]
    fn meminfo_is_parsed_and_a_broken_one_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("meminfo");
        std::fs::write(
            &p,
            "MemTotal:       16324048 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n",
        )
        .unwrap();
        let m = memory_from(&p).unwrap();
        assert_eq!(m.total_bytes, 16_324_048 * 1024);
        assert_eq!(m.available_bytes, 8_000_000 * 1024);
        std::fs::write(&p, "MemTotal: lots\n").unwrap();
        assert!(matches!(memory_from(&p), Err(SensorError::Parse { .. })));
        assert!(memory().is_ok(), "this machine's /proc/meminfo");
    }

    #[test]
    fn thermal_zones_in_order_unreadable_ones_skipped() {
        let t = tempfile::tempdir().unwrap();
        for (zone, kind, temp) in [
            ("thermal_zone10", "gpu-thermal", Some("48500")),
            ("thermal_zone2", "cpu-thermal", Some("51000")),
            ("thermal_zone3", "broken", None),
        ] {
            let d = t.path().join(zone);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            if let Some(v) = temp {
                std::fs::write(d.join("temp"), format!("{v}\n")).unwrap();
            }
        }
        std::fs::create_dir_all(t.path().join("cooling_device0")).unwrap();
        let ts = temperatures_from(t.path());
        assert_eq!(ts.len(), 2, "{ts:?}");
        assert_eq!(ts[0].zone, "thermal_zone2");
        assert_eq!(ts[0].kind, "cpu-thermal");
        assert!((ts[0].celsius - 51.0).abs() < 1e-9);
        assert_eq!(ts[1].kind, "gpu-thermal");
        assert!(temperatures_from(&t.path().join("none")).is_empty());
    }

    #[test]
    fn gpu_nodes() {
        let t = tempfile::tempdir().unwrap();
        assert!(!gpu_present_in(t.path()));
        std::fs::create_dir_all(t.path().join("nvgpu")).unwrap();
        std::fs::write(t.path().join("nvgpu/igpu0"), "").unwrap();
        assert!(gpu_present_in(t.path()));
    }
}
