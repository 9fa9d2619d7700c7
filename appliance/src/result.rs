//! `result.json`, one per scored series (see docs/CONTRACT.md). Fields may be added,
//! never renamed.

use serde::{Deserialize, Serialize};

use crate::score::{Lesion, PerVessel, Scores};

/// Which model produced a result, as result.json and the DICOM results report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// sha256 of the calcium segmentation artifact (hex).
    pub sha256: String,
    /// "fp32" | "int8"
    pub precision: String,
    /// "tract-cpu" | "ort-cpu" | …
    pub engine: String,
    /// Where the resampling ran for this study: "gpu" (feature `cuda`) or "cpu" (also after a
    /// per-study GPU fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub slice_thickness_mm: Option<f64>,
    /// Spacing between slice positions along the normal (what the score uses).
    pub slice_spacing_mm: Option<f64>,
    pub kvp: Option<f64>,
    /// Image noise σ (HU) measured on soft tissue; the `refine` stage's yardstick.
    #[serde(default)]
    pub noise_hu: Option<f64>,
    pub warnings: Vec<String>,
    /// The heart as the outline stage found it (absent when none was found or the study was
    /// refused before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heart: Option<HeartFacts>,
}

/// What `quality.heart` reports of the outlined heart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartFacts {
    /// Volume of the outline (heart within its pericardial sac), ml.
    pub volume_ml: f64,
    /// Median HU deep inside the outline: 30–60 without contrast, well above with it.
    pub blood_pool_hu: f64,
    /// Height of the outline in the scanned range, mm.
    pub height_mm: f64,
    /// The first slice cuts the heart (its lowest part is not in the series).
    pub cut_below: bool,
    /// The last slice cuts the heart (its upper part is not in the series).
    pub cut_above: bool,
}

impl HeartFacts {
    pub fn of(h: &crate::heart::Heart) -> Self {
        HeartFacts {
            volume_ml: round(h.volume_ml, 0),
            blood_pool_hu: round(h.blood_pool_hu, 0),
            height_mm: round(h.coverage.height_mm, 0),
            cut_below: h.coverage.cut_below.is_some(),
            cut_above: h.coverage.cut_above.is_some(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub assemble: u64,
    pub preprocess: u64,
    pub infer: u64,
    pub score: u64,
    pub encode: u64,
}

/// A lesion as result.json lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LesionJson {
    pub vessel: String,
    pub slice: usize,
    pub area_mm2: f64,
    pub peak_hu: i16,
    pub agatston: f64,
    /// Mean calcium probability the segmenter gave the lesion's pixels, 0–1 (absent in
    /// results written before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Peak HU minus the median HU of the pixels around the lesion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_hu: Option<f64>,
}

impl From<&Lesion> for LesionJson {
    fn from(l: &Lesion) -> Self {
        LesionJson {
            vessel: l.vessel.name().to_string(),
            slice: l.slice,
            area_mm2: round(l.area_mm2, 3),
            peak_hu: l.peak_hu,
            agatston: round(l.agatston, 3),
            confidence: l.confidence.map(|c| round(c, 3)),
            contrast_hu: l.contrast_hu,
        }
    }
}

/// The whole of result.json. A rejected series carries `status = "rejected"` and `reason`;
/// the score fields are then absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultJson {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    /// "scored" | "rejected" | "failed" (a failure of ours, not of the study)
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a refusal of the quality gate: its code (`contrast_enhanced`, `no_chest`,
    /// `heart_not_found`, `heart_not_covered`); absent for refusals of the input itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agatston_total: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_mm3: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_vessel: Option<PerVessel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lesions: Option<Vec<LesionJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cac_drs: Option<String>,
    pub quality: Quality,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelInfo>,
    pub timings_ms: Timings,
    /// Result version: 1 for the first scoring of a series, +1 for each re-score.
    pub result_version: u32,
    pub cacd_version: String,
}

/// `x` to `digits` decimals; never -0.0 (a tiny negative rounds to a plain 0).
fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f + 0.0
}

impl ResultJson {
    /// A scored series.
    pub fn scored(
        study_instance_uid: &str,
        series_instance_uid: &str,
        scores: &Scores,
        quality: Quality,
        model: ModelInfo,
        timings_ms: Timings,
        result_version: u32,
    ) -> Self {
        let pv = scores.per_vessel;
        ResultJson {
            study_instance_uid: study_instance_uid.to_string(),
            series_instance_uid: series_instance_uid.to_string(),
            status: "scored".into(),
            reason: None,
            reason_code: None,
            agatston_total: Some(round(scores.agatston_total, 3)),
            volume_mm3: Some(round(scores.volume_mm3, 3)),
            per_vessel: Some(PerVessel {
                LM: round(pv.LM, 3),
                LAD: round(pv.LAD, 3),
                LCX: round(pv.LCX, 3),
                RCA: round(pv.RCA, 3),
            }),
            lesions: Some(scores.lesions.iter().map(LesionJson::from).collect()),
            risk_category: Some(scores.risk_category.clone()),
            cac_drs: Some(scores.cac_drs.clone()),
            quality,
            model: Some(model),
            timings_ms,
            result_version,
            cacd_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// A series whose scoring failed on our side (engine, encoder): `status = "failed"`.
    pub fn failed(study_instance_uid: &str, series_instance_uid: &str, reason: &str) -> Self {
        ResultJson {
            status: "failed".into(),
            ..ResultJson::rejected(study_instance_uid, series_instance_uid, reason)
        }
    }

    /// A refused series; UIDs may be empty when the input had none usable.
    pub fn rejected(study_instance_uid: &str, series_instance_uid: &str, reason: &str) -> Self {
        ResultJson {
            study_instance_uid: study_instance_uid.to_string(),
            series_instance_uid: series_instance_uid.to_string(),
            status: "rejected".into(),
            reason: Some(reason.to_string()),
            reason_code: None,
            agatston_total: None,
            volume_mm3: None,
            per_vessel: None,
            lesions: None,
            risk_category: None,
            cac_drs: None,
            quality: Quality::default(),
            model: None,
            timings_ms: Timings::default(),
            result_version: 0,
            cacd_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}
