//! Synthetic low-dose chest CT studies with ground truth (`cacd phantom`).
//!
//! There is no real chest CT we may ship, so these phantoms are what the networks are trained
//! and evaluated on. A phantom is a randomised patient ([`anatomy`]) voxelised on a 512×512
//! axial grid ([`render`]) with coronary plaques calibrated to a burden level ([`burden`]),
//! distractor calcifications that fool threshold-only methods, and low-dose noise. The truth
//! is the reference [`score::score`] over the plaque footprint mask.
//!
//! Everything is drawn from the seed (ChaCha streams), so [`generate`] is pure and
//! deterministic; [`write_study`] writes the DICOM series and `truth.json`.

mod anatomy;
mod burden;
mod dicom_write;
mod geom;
mod render;
pub mod rle;

use crate::score::{self, Scores, Vessel};
use crate::volume::{Geometry, SeriesMeta, Volume};
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub use anatomy::DistractorKind;
pub use dicom_write::{write_study, write_study_with, WriteOptions};

/// Coronary calcium burden of a phantom (coronary plaques only; distractors appear at every
/// level). `None` → truth 0; `Low` → total in (0, 100]; `Moderate` → (100, 400]; `High` → > 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Burden {
    None,
    Low,
    Moderate,
    High,
}

impl Burden {
    pub const ALL: [Burden; 4] = [Burden::None, Burden::Low, Burden::Moderate, Burden::High];

    /// Whether an Agatston total falls in this burden's range.
    pub fn contains(self, total: f64) -> bool {
        match self {
            Burden::None => total <= 0.0,
            Burden::Low => total > 0.0 && total <= 100.0,
            Burden::Moderate => total > 100.0 && total <= 400.0,
            Burden::High => total > 400.0,
        }
    }
}

/// Transfer syntax of the written files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TransferSyntaxChoice {
    /// Explicit VR Little Endian.
    Explicit,
    /// Implicit VR Little Endian.
    Implicit,
    /// Deflated Explicit VR Little Endian.
    Deflate,
    /// RLE Lossless.
    Rle,
    /// JPEG-LS Lossless (CharLS; needs the `jpegls` feature, off by default, on in shipped builds).
    JpegLs,
}

impl TransferSyntaxChoice {
    pub const ALL: [TransferSyntaxChoice; 5] = [
        TransferSyntaxChoice::Explicit,
        TransferSyntaxChoice::Implicit,
        TransferSyntaxChoice::Deflate,
        TransferSyntaxChoice::Rle,
        TransferSyntaxChoice::JpegLs,
    ];

    /// Whether this build can write the syntax (JPEG-LS needs the `jpegls` feature).
    pub fn encodable(self) -> bool {
        self != TransferSyntaxChoice::JpegLs || cfg!(feature = "jpegls")
    }

    pub fn uid(self) -> &'static str {
        match self {
            TransferSyntaxChoice::Explicit => "1.2.840.10008.1.2.1",
            TransferSyntaxChoice::Implicit => "1.2.840.10008.1.2",
            TransferSyntaxChoice::Deflate => "1.2.840.10008.1.2.1.99",
            TransferSyntaxChoice::Rle => "1.2.840.10008.1.2.5",
            TransferSyntaxChoice::JpegLs => "1.2.840.10008.1.2.4.80",
        }
    }
}

/// What to generate. Everything left `None` is drawn from the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhantomSpec {
    pub seed: u64,
    pub burden: Burden,
    /// Slice spacing = SliceThickness (contiguous), mm. Drawn from {1, 1.25, 1.5, 2, 2.5, 3, 5}.
    pub thickness_mm: Option<f64>,
    /// Number of slices; default covers about 200 mm with the heart inside.
    pub slices: Option<usize>,
    pub transfer_syntax: Option<TransferSyntaxChoice>,
    /// Signed (PixelRepresentation 1, intercept 0) or unsigned (0, intercept −1024) storage.
    pub signed: Option<bool>,
}

impl PhantomSpec {
    pub fn new(seed: u64, burden: Burden) -> Self {
        PhantomSpec {
            seed,
            burden,
            thickness_mm: None,
            slices: None,
            transfer_syntax: None,
            signed: None,
        }
    }
}

/// A plaque as reported in `truth.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaqueInfo {
    pub vessel: Vessel,
    pub center_mm: [f64; 3],
    pub length_mm: f64,
    pub peak_hu: f64,
}

/// A distractor calcification as reported in `truth.json` (never in the truth mask).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistractorInfo {
    pub kind: DistractorKind,
    pub center_mm: [f64; 3],
    pub size_mm: f64,
    pub peak_hu: f64,
}

/// How the phantom was made (serialised into `truth.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhantomInfo {
    pub seed: u64,
    pub burden: Burden,
    pub kvp: f64,
    pub noise_sigma_hu: f64,
    /// Side weight of the 3-tap noise blur (0 white … 0.6 soft).
    pub noise_correlation: f64,
    pub convolution_kernel: String,
    pub rows: usize,
    pub columns: usize,
    pub slices: usize,
    /// `[row spacing, column spacing]` mm.
    pub pixel_spacing_mm: [f64; 2],
    pub slice_spacing_mm: f64,
    pub slice_thickness_mm: f64,
    pub patient_width_mm: f64,
    pub patient_depth_mm: f64,
    /// 0 small … 1 large.
    pub habitus: f64,
    pub signed: bool,
    pub bits_stored: u16,
    pub rescale_intercept: f64,
    pub transfer_syntax: TransferSyntaxChoice,
    pub transfer_syntax_uid: String,
    pub heart_center_mm: [f64; 3],
    /// Unit vector base → apex.
    pub heart_long_axis: [f64; 3],
    pub target_agatston: Option<f64>,
    pub calibration_iterations: usize,
    pub plaques: Vec<PlaqueInfo>,
    pub distractors: Vec<DistractorInfo>,
}

/// One generated study.
#[derive(Debug, Clone)]
pub struct Phantom {
    pub volume: Volume,
    /// Vessel label (1 LM … 4 RCA) of every voxel a coronary plaque touches, else 0.
    pub lesion_labels: Array3<u8>,
    /// 1 inside the pericardium (incl. epicardial fat and the coronaries).
    pub heart_mask: Array3<u8>,
    /// 1 where a distractor calcification touches the voxel (the same footprint rule as
    /// `lesion_labels`; a plaque drawn over it keeps its vessel label there). For training a
    /// non-coronary class; the truth never counts it.
    pub distractor_mask: Array3<u8>,
    pub truth: Scores,
    pub info: PhantomInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("DICOM encoding of {what}: {message}")]
    Dicom { what: String, message: String },
    #[error("truth.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// A deterministic UID under the 2.25 root from the seed and a role string.
pub fn uid_for(seed: u64, role: &str) -> String {
    let h = Sha256::digest(format!("cacd-phantom/{seed}/{role}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// An RNG stream of the seed; every aspect draws from its own so e.g. forcing the transfer
/// syntax does not change the anatomy.
fn stream(seed: u64, id: u64) -> ChaCha20Rng {
    let mut r = ChaCha20Rng::seed_from_u64(seed);
    r.set_stream(id);
    r
}

const THICKNESSES: [f64; 7] = [1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0];

/// Days → (year, month, day) from 2024-01-01, for deterministic study dates.
fn date_from(days: u64) -> (u32, u32, u32) {
    let mut y = 2024u32;
    let mut d = days as u32;
    loop {
        let leap = y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let len = if leap { 366 } else { 365 };
        if d < len {
            let months = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            let mut m = 0;
            while d >= months[m] {
                d -= months[m];
                m += 1;
            }
            return (y, m as u32 + 1, d + 1);
        }
        d -= len;
        y += 1;
    }
}

/// Generates a phantom. Pure and deterministic in `spec`.
pub fn generate(spec: &PhantomSpec) -> Phantom {
    let seed = spec.seed;
    let mut rng_patient = stream(seed, 1);
    let mut rng_format = stream(seed, 2);
    let mut rng_plaque = stream(seed, 3);

    let habitus: f64 = rng_patient.gen();
    let patient = anatomy::draw_patient(&mut rng_patient, habitus);

    // Acquisition and storage choices.
    let drawn_thickness = THICKNESSES[rng_format.gen_range(0..THICKNESSES.len())];
    let dz = spec
        .thickness_mm
        .filter(|t| t.is_finite() && *t > 0.0)
        .unwrap_or(drawn_thickness)
        .clamp(0.5, 10.0);
    let drawn_ts =
        TransferSyntaxChoice::ALL[rng_format.gen_range(0..TransferSyntaxChoice::ALL.len())];
    // A build without an encoder for the drawn syntax writes Explicit VR instead (same pixels:
    // the draw itself is unchanged, so every other choice of the seed stays as it was).
    let drawn_ts = if drawn_ts.encodable() {
        drawn_ts
    } else {
        TransferSyntaxChoice::Explicit
    };
    let ts = spec.transfer_syntax.unwrap_or(drawn_ts);
    let drawn_signed = rng_format.gen_bool(0.5);
    let signed = spec.signed.unwrap_or(drawn_signed);
    let drawn_bits: u16 = if rng_format.gen_bool(0.5) { 12 } else { 16 };
    // JPEG-LS codes BitsStored-bit samples: signed data go as 16-bit two's complement.
    let bits_stored = if signed && ts == TransferSyntaxChoice::JpegLs {
        16
    } else {
        drawn_bits
    };
    let hu_max: i16 = if signed && bits_stored == 12 {
        2047
    } else {
        3071
    };
    let sigma = rng_format.gen_range(15.0..45.0);
    let corr = rng_format.gen_range(0.15..0.6);
    let kernel = if corr > 0.4 {
        "B30f"
    } else if corr > 0.25 {
        "STANDARD"
    } else {
        "B45f"
    };
    let need = (2.0 * patient.body_ax + 20.0) / 512.0;
    let px = rng_format.gen_range(0.6..0.8f64).max(need).min(0.8);
    let fov_c = [
        patient.body_c[0] + rng_format.gen_range(-10.0..10.0),
        patient.body_c[1] + rng_format.gen_range(-10.0..10.0),
    ];
    let days = rng_format.gen_range(0..730u64);
    let hour = rng_format.gen_range(7..19u32);
    let minute = rng_format.gen_range(0..60u32);

    // z coverage: about 200 mm with the heart inside; with fewer slices centre on the
    // coronaries.
    let nz = spec.slices.unwrap_or((200.0 / dz).round() as usize).max(1);
    let coverage = nz as f64 * dz;
    let [hz0, hz1] = patient.heart_z;
    let z_bottom = if coverage >= hz1 - hz0 + 16.0 {
        hz0 - 8.0 - rng_format.gen_range(0.0..=(coverage - (hz1 - hz0) - 16.0))
    } else {
        let (sum, n) = patient
            .coronaries
            .iter()
            .flat_map(|c| c.path.points.iter())
            .fold((0.0, 0usize), |(s, n), p| (s + p[2], n + 1));
        let zc = if n > 0 {
            sum / n as f64
        } else {
            patient.heart.c[2]
        };
        zc - coverage * 0.5
    };
    let grid = render::Grid {
        nz,
        ny: 512,
        nx: 512,
        spacing: [dz, px, px],
        origin: [
            fov_c[0] - 255.5 * px,
            fov_c[1] - 255.5 * px,
            z_bottom + dz * 0.5,
        ],
    };

    let distractors: Vec<render::CalcItem> = patient
        .distractors
        .iter()
        .map(|d| render::CalcItem {
            calc: d.calc.clone(),
            label: 0,
        })
        .collect();
    let noise = render::NoiseModel {
        sigma,
        corr,
        seed: seed ^ 0x6e6f_6973_6521,
    };
    let rendered = render::render(&patient, &grid, &noise, &distractors, hu_max);
    let mut hu = rendered.hu.clone();
    let mut labels = vec![0u8; hu.len()];
    let cal = burden::calibrate(
        &mut rng_plaque,
        spec.burden,
        &patient,
        &grid,
        &rendered,
        &mut hu,
        &mut labels,
        hu_max,
    );

    let dims = (grid.nz, grid.ny, grid.nx);
    // The shapes match by construction (nz·ny·nx elements each).
    let hu = Array3::from_shape_vec(dims, hu).unwrap_or_else(|_| Array3::zeros(dims));
    let lesion_labels =
        Array3::from_shape_vec(dims, labels).unwrap_or_else(|_| Array3::zeros(dims));
    let heart_mask =
        Array3::from_shape_vec(dims, rendered.heart).unwrap_or_else(|_| Array3::zeros(dims));
    let distractor_mask =
        Array3::from_shape_vec(dims, rendered.distractor).unwrap_or_else(|_| Array3::zeros(dims));
    let spacing = [dz, px, px];
    let truth = score::score(hu.view(), lesion_labels.view(), spacing);

    let (y, m, d) = date_from(days);
    let date = format!("{y:04}{m:02}{d:02}");
    let time = format!("{hour:02}{minute:02}00");
    let study_uid = uid_for(seed, "study");
    let series_uid = uid_for(seed, "series");
    let sop_instance_uids: Vec<String> = (0..nz)
        .map(|k| uid_for(seed, &format!("image/{k}")))
        .collect();
    let meta = SeriesMeta {
        study_instance_uid: study_uid,
        series_instance_uid: series_uid,
        frame_of_reference_uid: uid_for(seed, "frame-of-reference"),
        sop_class_uid: dicom_write::CT_IMAGE_STORAGE.to_string(),
        modality: "CT".into(),
        kvp: Some(120.0),
        slice_thickness_mm: Some(dz),
        series_description: Some("Low-dose chest CT (cacd phantom)".into()),
        series_number: Some(2),
        manufacturer: Some("cacd phantom".into()),
        contrast_agent: None,
        patient_name: Some(format!("PHANTOM^{seed}")),
        patient_id: Some(format!("PH{seed:08}")),
        patient_birth_date: Some(format!("{:04}0101", y - 45 - (seed % 35) as u32)),
        patient_sex: Some(if seed.is_multiple_of(2) { "M" } else { "F" }.into()),
        study_date: Some(date),
        study_time: Some(time),
        study_id: Some(format!("{}", seed % 100_000)),
        accession_number: Some(format!("ACC{:010}", seed % 10_000_000_000)),
        referring_physician_name: Some("REFERRER^PHANTOM".into()),
    };
    let volume = Volume {
        hu,
        geometry: Geometry::axial(spacing, grid.origin),
        meta,
        sop_instance_uids,
        source_frames: vec![1; nz],
    };

    let info = PhantomInfo {
        seed,
        burden: spec.burden,
        kvp: 120.0,
        noise_sigma_hu: sigma,
        noise_correlation: corr,
        convolution_kernel: kernel.into(),
        rows: grid.ny,
        columns: grid.nx,
        slices: nz,
        pixel_spacing_mm: [px, px],
        slice_spacing_mm: dz,
        slice_thickness_mm: dz,
        patient_width_mm: 2.0 * patient.body_ax,
        patient_depth_mm: patient.body_ay_ant + patient.body_ay_post,
        habitus,
        signed,
        bits_stored,
        rescale_intercept: if signed { 0.0 } else { -1024.0 },
        transfer_syntax: ts,
        transfer_syntax_uid: ts.uid().into(),
        heart_center_mm: patient.heart.c,
        heart_long_axis: patient.heart.eu,
        target_agatston: cal.target,
        calibration_iterations: cal.iterations,
        plaques: cal
            .plaques
            .iter()
            .map(|q| {
                let item = q.calc(&patient);
                PlaqueInfo {
                    vessel: Vessel::from_label(item.label).unwrap_or(Vessel::LAD),
                    center_mm: item.calc.center,
                    length_mm: q.len,
                    peak_hu: q.peak,
                }
            })
            .collect(),
        distractors: patient
            .distractors
            .iter()
            .map(|d| DistractorInfo {
                kind: d.kind,
                center_mm: d.calc.center,
                size_mm: 2.0 * d.calc.radii.iter().cloned().fold(0.0, f64::max),
                peak_hu: d.calc.peak_hu,
            })
            .collect(),
    };
    Phantom {
        volume,
        lesion_labels,
        heart_mask,
        distractor_mask,
        truth,
        info,
    }
}

/// `cacd phantom` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PhantomArgs {
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Burden::Moderate)]
    pub burden: Burden,
    /// Slice spacing = thickness (mm); drawn from the seed when absent.
    #[arg(long)]
    pub thickness: Option<f64>,
    /// Number of slices (default: about 200 mm of coverage).
    #[arg(long)]
    pub slices: Option<usize>,
    #[arg(long, value_enum)]
    pub transfer_syntax: Option<TransferSyntaxChoice>,
    /// Signed pixel storage (PixelRepresentation 1).
    #[arg(long, conflicts_with = "unsigned")]
    pub signed: bool,
    /// Unsigned pixel storage (PixelRepresentation 0, intercept −1024).
    #[arg(long)]
    pub unsigned: bool,
    /// Do not write the localizer (scout) image.
    #[arg(long)]
    pub no_localizer: bool,
}

/// The `cacd phantom` command.
pub fn run(args: PhantomArgs) -> anyhow::Result<()> {
    if let Some(t) = args.thickness {
        anyhow::ensure!(
            t.is_finite() && (0.5..=10.0).contains(&t),
            "--thickness must be within 0.5–10 mm, got {t}"
        );
    }
    if let Some(n) = args.slices {
        anyhow::ensure!(
            (1..=2000).contains(&n),
            "--slices must be within 1–2000, got {n}"
        );
    }
    let spec = PhantomSpec {
        seed: args.seed,
        burden: args.burden,
        thickness_mm: args.thickness,
        slices: args.slices,
        transfer_syntax: args.transfer_syntax,
        signed: if args.signed {
            Some(true)
        } else if args.unsigned {
            Some(false)
        } else {
            None
        },
    };
    let t0 = std::time::Instant::now();
    let p = generate(&spec);
    let gen_ms = t0.elapsed().as_millis();
    let files = write_study_with(
        &p,
        &args.out,
        &WriteOptions {
            localizer: !args.no_localizer,
        },
    )?;
    let (nz, ny, nx) = p.volume.dims();
    println!(
        "phantom seed {} burden {:?}: {}x{}x{} at {:.2}x{:.2}x{:.2} mm, {}, {}: Agatston {:.1} ({}, {}), {} files in {} (generated in {} ms)",
        p.info.seed,
        p.info.burden,
        nx,
        ny,
        nz,
        p.info.pixel_spacing_mm[1],
        p.info.pixel_spacing_mm[0],
        p.info.slice_spacing_mm,
        p.info.transfer_syntax_uid,
        if p.info.signed { "signed" } else { "unsigned" },
        p.truth.agatston_total,
        p.truth.risk_category,
        p.truth.cac_drs,
        files.len(),
        args.out.display(),
        gen_ms
    );
    Ok(())
}

/// Path of the truth file in a study folder.
pub fn truth_path(dir: &Path) -> PathBuf {
    dir.join("truth.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_valid_and_distinct() {
        let a = uid_for(7, "study");
        let b = uid_for(7, "series");
        assert_ne!(a, b);
        assert!(a.len() <= 64 && a.starts_with("2.25."));
        assert!(a[5..].chars().all(|c| c.is_ascii_digit()));
        assert!(!a[5..].starts_with('0') || a.len() == 6);
    }

    #[test]
    fn dates() {
        assert_eq!(date_from(0), (2024, 1, 1));
        assert_eq!(date_from(59), (2024, 2, 29));
        assert_eq!(date_from(366), (2025, 1, 1));
    }
}
