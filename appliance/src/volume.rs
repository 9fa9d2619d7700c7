//! The plain types every compute stage shares: a CT series on its native grid.
//!
//! Arrays are indexed `[z, y, x]`: `z` is the slice index along the slice normal (sorted so
//! that patient position increases along `normal`), `y` the row, `x` the column.

use ndarray::Array3;
use serde::{Deserialize, Serialize};

/// Where the voxel grid sits in patient space (DICOM LPS, millimetres).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    /// Voxel spacing `[z, y, x]` in mm. `z` is the spacing between slice positions along the
    /// normal (never SliceThickness), `y` the row spacing, `x` the column spacing.
    pub spacing: [f64; 3],
    /// Patient position (x, y, z) of the centre of voxel `[0, 0, 0]`.
    pub origin: [f64; 3],
    /// Direction of increasing column index `x` (first triplet of ImageOrientationPatient).
    pub row_dir: [f64; 3],
    /// Direction of increasing row index `y` (second triplet of ImageOrientationPatient).
    pub col_dir: [f64; 3],
    /// Direction of increasing slice index `z` (row_dir × col_dir).
    pub normal: [f64; 3],
}

impl Geometry {
    /// An axial grid (identity orientation) with the given spacing and origin.
    pub fn axial(spacing: [f64; 3], origin: [f64; 3]) -> Self {
        Geometry {
            spacing,
            origin,
            row_dir: [1.0, 0.0, 0.0],
            col_dir: [0.0, 1.0, 0.0],
            normal: [0.0, 0.0, 1.0],
        }
    }

    /// Patient position of the centre of voxel `[z, y, x]` (fractional indices allowed).
    pub fn index_to_patient(&self, z: f64, y: f64, x: f64) -> [f64; 3] {
        let mut p = self.origin;
        for (i, pi) in p.iter_mut().enumerate() {
            *pi += x * self.spacing[2] * self.row_dir[i]
                + y * self.spacing[1] * self.col_dir[i]
                + z * self.spacing[0] * self.normal[i];
        }
        p
    }

    /// Fractional voxel index `[z, y, x]` of a patient position.
    pub fn patient_to_index(&self, p: [f64; 3]) -> [f64; 3] {
        let d = [
            p[0] - self.origin[0],
            p[1] - self.origin[1],
            p[2] - self.origin[2],
        ];
        let dot = |a: [f64; 3]| d[0] * a[0] + d[1] * a[1] + d[2] * a[2];
        [
            dot(self.normal) / self.spacing[0],
            dot(self.col_dir) / self.spacing[1],
            dot(self.row_dir) / self.spacing[2],
        ]
    }
}

/// Header facts about the scored series that travel with it into the results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesMeta {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub frame_of_reference_uid: String,
    pub sop_class_uid: String,
    pub modality: String,
    pub kvp: Option<f64>,
    pub slice_thickness_mm: Option<f64>,
    pub series_description: Option<String>,
    pub series_number: Option<i32>,
    pub manufacturer: Option<String>,
    /// ContrastBolusAgent as the header gives it (the quality gate measures the image itself).
    #[serde(default)]
    pub contrast_agent: Option<String>,
    /// Patient and study identification, copied into the results' patient/study modules.
    /// Never logged or reported unless configuration says so.
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub study_id: Option<String>,
    pub accession_number: Option<String>,
    pub referring_physician_name: Option<String>,
}

/// One CT series on its native grid, in Hounsfield units.
#[derive(Debug, Clone)]
pub struct Volume {
    /// HU `[z, y, x]` (RescaleSlope/Intercept applied, rounded, saturated to i16).
    pub hu: Array3<i16>,
    pub geometry: Geometry,
    pub meta: SeriesMeta,
    /// SOP Instance UID of the source image of each slice `z` (for Enhanced CT: the one
    /// multi-frame instance, repeated, with `source_frames` telling the frame).
    pub sop_instance_uids: Vec<String>,
    /// 1-based frame number in the source instance for each slice (all 1 for single-frame).
    pub source_frames: Vec<u32>,
}

impl Volume {
    /// `(slices, rows, columns)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        self.hu.dim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_patient_round_trip_on_oblique_free_grid() {
        let g = Geometry {
            spacing: [2.5, 0.7, 0.65],
            origin: [-170.0, -160.0, -300.0],
            row_dir: [1.0, 0.0, 0.0],
            col_dir: [0.0, 1.0, 0.0],
            normal: [0.0, 0.0, 1.0],
        };
        let p = g.index_to_patient(3.0, 10.5, 200.0);
        assert!((p[0] - (-170.0 + 200.0 * 0.65)).abs() < 1e-9);
        assert!((p[1] - (-160.0 + 10.5 * 0.7)).abs() < 1e-9);
        assert!((p[2] - (-300.0 + 7.5)).abs() < 1e-9);
        let i = g.patient_to_index(p);
        assert!(
            (i[0] - 3.0).abs() < 1e-9 && (i[1] - 10.5).abs() < 1e-9 && (i[2] - 200.0).abs() < 1e-9
        );
    }
}
