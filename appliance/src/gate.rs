//! Stage "QC gate": whether a study can be scored at all, read from the image before the
//! networks run. Every refusal and warning is one sentence a technician at the scanner can act
//! on; each refusal has a [`Refusal`] code for machines.
//!
//! * contrast: the blood pool inside the outlined heart measures 30–60 HU without contrast
//!   and 150–500 HU with it; above [`CONTRAST_HU`] the study is refused (a calcium score from
//!   a contrast scan counts iodine as calcium). The header's ContrastBolusAgent is reported,
//!   not trusted: oral contrast and mislabelled series exist.
//! * slices: 3–5 mm is scored with a warning (Agatston on thick slices underestimates);
//!   thicker series never get here (assembly refuses them).
//! * coverage: no lungs, no heart, too little of it in the scanned range, or a scan ending
//!   across the heart's upper part (the coronary origins) is refused; a heart reaching the
//!   first or last slice otherwise is scored with a warning naming that end.

use serde::{Deserialize, Serialize};

use crate::heart::{Heart, HeartError};
use crate::volume::Volume;

/// Blood pool (median HU deep inside the heart) above which a study is contrast-enhanced.
pub const CONTRAST_HU: f64 = 120.0;
/// Slice spacing above which the score carries the thick-slice warning (mm).
pub const THICK_SLICE_MM: f64 = 3.0;
/// Less of the heart than this in the scanned range (mm of its height) is not scored.
pub const MIN_HEART_HEIGHT_MM: f64 = 60.0;
/// A cut where the heart's section is at least this share of its widest is through its middle.
pub const MIDDLE_CUT_SHARE: f64 = 0.5;
/// The heart at the first slice with at least this share of its widest section: a warning.
pub const LOW_END_WARN_SHARE: f64 = 0.02;

/// Why the gate refused a study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    ContrastEnhanced,
    NoChest,
    HeartNotFound,
    HeartNotCovered,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::ContrastEnhanced => "contrast_enhanced",
            Refusal::NoChest => "no_chest",
            Refusal::HeartNotFound => "heart_not_found",
            Refusal::HeartNotCovered => "heart_not_covered",
        }
    }
}

/// What the gate found: a refusal with its sentence, or none; warnings either way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub refusal: Option<(Refusal, String)>,
    pub warnings: Vec<String>,
}

/// Checks `volume` with its heart outline (or the reason there is none).
pub fn check(volume: &Volume, heart: &Result<Heart, HeartError>) -> Verdict {
    let mut v = Verdict::default();
    let spacing = volume.geometry.spacing[0];
    if spacing > THICK_SLICE_MM + 0.05 {
        v.warnings.push(format!(
            "slices {spacing:.1} mm apart (thicker than 3 mm): Agatston scores on thick slices \
             underestimate small and faint calcifications; compare with 2.5–3 mm scores with care"
        ));
    }
    let heart = match heart {
        Ok(h) => h,
        Err(HeartError::NoLungs) => {
            v.refusal = Some((
                Refusal::NoChest,
                "the series does not show the chest (no lungs in the scanned range): send the \
                 chest series of the study"
                    .into(),
            ));
            return v;
        }
        Err(HeartError::NotFound) => {
            v.refusal = Some((
                Refusal::HeartNotFound,
                "the heart was not found between the lungs: check that the series covers the \
                 heart"
                    .into(),
            ));
            return v;
        }
    };
    let agent = volume
        .meta
        .contrast_agent
        .as_deref()
        .filter(|a| !a.trim().is_empty());
    if heart.blood_pool_hu > CONTRAST_HU {
        let named = agent
            .map(|a| format!("; the header names contrast agent \"{a}\""))
            .unwrap_or_default();
        v.refusal = Some((
            Refusal::ContrastEnhanced,
            format!(
                "contrast-enhanced: the blood in the heart measures {:.0} HU (30–60 HU without \
                 contrast){named}; a calcium score needs a scan without contrast",
                heart.blood_pool_hu
            ),
        ));
        return v;
    }
    if let Some(a) = agent {
        v.warnings.push(format!(
            "the header names contrast agent \"{a}\", but the blood in the heart measures {:.0} \
             HU, as without contrast: scored",
            heart.blood_pool_hu
        ));
    }
    let c = heart.coverage;
    let cut = |share: Option<f64>| share.is_some_and(|s| s >= MIDDLE_CUT_SHARE);
    let covered_mm = c.height_mm;
    // A scan that ends across the heart's upper part misses the coronary origins: refused.
    // At the lower end the outline cannot always tell the heart's inferior wall from the
    // liver dome it rests on (scans often stop just below the heart): a warning only.
    if (c.cut_below.is_some() || c.cut_above.is_some()) && covered_mm < MIN_HEART_HEIGHT_MM
        || cut(c.cut_above)
    {
        let which = match (c.cut_below.is_some(), c.cut_above.is_some()) {
            (true, true) => "at both ends",
            (true, false) => "at its lower end",
            _ => "at its upper end",
        };
        v.refusal = Some((
            Refusal::HeartNotCovered,
            format!(
                "the heart is not covered: the scanned range cuts through it {which} ({covered_mm:.0} \
                 mm of it in the series); scan the whole heart"
            ),
        ));
        return v;
    }
    if c.cut_below.is_some_and(|s| s >= LOW_END_WARN_SHARE) {
        v.warnings.push(
            "the heart reaches the first slice: calcium below it (the heart's lowest part), if \
             any, is not counted"
                .into(),
        );
    }
    if c.cut_above.is_some() {
        v.warnings.push(
            "the series ends inside the heart: calcium above the last slice (the coronary \
             origins) is not counted"
                .into(),
        );
    }
    v
}
