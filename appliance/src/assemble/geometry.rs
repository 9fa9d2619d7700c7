//! Pure slice-stack geometry: orientation, sort order along the normal, spacing from
//! positions, and the checks that make a stack one regular grid (no shear, no gaps).
//! No DICOM here, so every rule is unit-tested on plain numbers.

pub type Vec3 = [f64; 3];

/// A slice normal within this angle of the patient z axis counts as axial.
pub const AXIAL_MAX_DEG: f64 = 10.0;
/// Positions closer than this along the normal are the same slice position.
pub const SAME_POSITION_MM: f64 = 0.01;
/// A gap may deviate this fraction from the median spacing before it counts as missing slices.
pub const GAP_TOLERANCE: f64 = 0.10;
/// Two orientations agree when every direction-cosine component differs by less than this.
pub const ORIENTATION_TOLERANCE: f64 = 1e-3;

pub fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}

fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn normalize(a: Vec3) -> Option<Vec3> {
    let n = norm(a);
    (n.is_finite() && n > 1e-6).then(|| [a[0] / n, a[1] / n, a[2] / n])
}

/// Row and column direction cosines (ImageOrientationPatient) and the slice normal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Orientation {
    pub row: Vec3,
    pub col: Vec3,
    pub normal: Vec3,
}

impl Orientation {
    /// From the six values of ImageOrientationPatient; `None` unless they are finite, non-zero
    /// and close to orthogonal.
    pub fn from_iop(iop: &[f64]) -> Option<Orientation> {
        if iop.len() != 6 {
            return None;
        }
        let row = normalize([iop[0], iop[1], iop[2]])?;
        let col = normalize([iop[3], iop[4], iop[5]])?;
        if dot(row, col).abs() > 0.01 {
            return None;
        }
        let normal = normalize(cross(row, col))?;
        Some(Orientation { row, col, normal })
    }

    pub fn approx_eq(&self, other: &Orientation) -> bool {
        let close = |a: Vec3, b: Vec3| (0..3).all(|i| (a[i] - b[i]).abs() < ORIENTATION_TOLERANCE);
        close(self.row, other.row) && close(self.col, other.col)
    }

    /// Angle (degrees) between the slice normal and the patient z axis, either sense.
    pub fn angle_from_z_deg(&self) -> f64 {
        self.normal[2].abs().clamp(0.0, 1.0).acos().to_degrees()
    }

    pub fn is_axial(&self) -> bool {
        self.angle_from_z_deg() <= AXIAL_MAX_DEG
    }
}

/// Indices of `positions` sorted by their distance along `normal` (stable for ties).
pub fn sort_along(positions: &[Vec3], normal: Vec3) -> Vec<usize> {
    let mut order: Vec<usize> = (0..positions.len()).collect();
    order.sort_by(|&a, &b| dot(positions[a], normal).total_cmp(&dot(positions[b], normal)));
    order
}

/// Runs of coincident positions in an ascending list of distances: each item is the index
/// range of one slice position (length > 1 means duplicates).
pub fn group_same_position(sorted_distances: &[f64]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=sorted_distances.len() {
        if i == sorted_distances.len()
            || sorted_distances[i] - sorted_distances[start] > SAME_POSITION_MM
        {
            groups.push(start..i);
            start = i;
        }
    }
    groups
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Median step between consecutive distinct positions (ascending); `None` with fewer than two.
pub fn median_spacing(distinct: &[f64]) -> Option<f64> {
    let steps: Vec<f64> = distinct.windows(2).map(|w| w[1] - w[0]).collect();
    median(&steps)
}

/// A gap that breaks the regular grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    pub gap_mm: f64,
    pub after_mm: f64,
    pub median_mm: f64,
}

/// Check that all steps between distinct positions (ascending) stay within
/// [`GAP_TOLERANCE`] of the median, and return the grid spacing (first to last over n-1).
pub fn regular_spacing(distinct: &[f64]) -> Result<f64, Gap> {
    let Some(med) = median_spacing(distinct) else {
        return Ok(0.0);
    };
    for w in distinct.windows(2) {
        let step = w[1] - w[0];
        if (step - med).abs() > GAP_TOLERANCE * med {
            return Err(Gap {
                gap_mm: step,
                after_mm: w[0],
                median_mm: med,
            });
        }
    }
    Ok((distinct[distinct.len() - 1] - distinct[0]) / (distinct.len() - 1) as f64)
}

/// How far a stack leans off its normal.
#[derive(Debug, Clone, PartialEq)]
pub struct Shear {
    /// Largest in-plane distance (mm) of a slice position from the line through the first
    /// position along the normal.
    pub offset_mm: f64,
    /// Lean of the whole stack from the normal (degrees).
    pub angle_deg: f64,
}

/// In-plane drift of sorted positions from the line through the first along `normal`.
pub fn shear(sorted: &[Vec3], normal: Vec3) -> Shear {
    let Some(&first) = sorted.first() else {
        return Shear {
            offset_mm: 0.0,
            angle_deg: 0.0,
        };
    };
    let perp = |p: Vec3| {
        let d = sub(p, first);
        let along = dot(d, normal);
        (
            along,
            norm([
                d[0] - along * normal[0],
                d[1] - along * normal[1],
                d[2] - along * normal[2],
            ]),
        )
    };
    let offset_mm = sorted.iter().map(|&p| perp(p).1).fold(0.0, f64::max);
    let (along, off) = sorted.last().map(|&p| perp(p)).unwrap_or((0.0, 0.0));
    let angle_deg = off.atan2(along.abs()).to_degrees();
    Shear {
        offset_mm,
        angle_deg,
    }
}

/// A stack is sheared when some slice is displaced in-plane by more than half a pixel, which
/// would misplace voxels on the grid we build.
pub fn is_sheared(s: &Shear, min_pixel_mm: f64) -> bool {
    s.offset_mm > 0.5 * min_pixel_mm
}

#[cfg(test)]
mod tests {
    use super::*;

    const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

    #[test]
    fn axial_orientation_has_z_normal() {
        let o = Orientation::from_iop(&AXIAL).unwrap();
        assert_eq!(o.normal, [0.0, 0.0, 1.0]);
        assert!(o.is_axial());
        assert!(o.angle_from_z_deg() < 1e-9);
    }

    #[test]
    fn feet_first_axial_normal_points_down_and_is_still_axial() {
        let o = Orientation::from_iop(&[-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).unwrap();
        assert_eq!(o.normal, [0.0, 0.0, -1.0]);
        assert!(o.is_axial());
    }

    #[test]
    fn oblique_and_coronal_are_not_axial() {
        let a = 15f64.to_radians();
        let o = Orientation::from_iop(&[1.0, 0.0, 0.0, 0.0, a.cos(), a.sin()]).unwrap();
        assert!((o.angle_from_z_deg() - 15.0).abs() < 1e-9);
        assert!(!o.is_axial());
        let a = 8f64.to_radians();
        let o = Orientation::from_iop(&[1.0, 0.0, 0.0, 0.0, a.cos(), a.sin()]).unwrap();
        assert!(o.is_axial());
        let coronal = Orientation::from_iop(&[1.0, 0.0, 0.0, 0.0, 0.0, -1.0]).unwrap();
        assert!((coronal.angle_from_z_deg() - 90.0).abs() < 1e-9);
    }

    #[test]
    fn degenerate_orientations_are_rejected() {
        assert!(Orientation::from_iop(&[0.0; 6]).is_none());
        assert!(Orientation::from_iop(&[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]).is_none());
        assert!(Orientation::from_iop(&[f64::NAN, 0.0, 0.0, 0.0, 1.0, 0.0]).is_none());
        assert!(Orientation::from_iop(&[1.0, 0.0, 0.0]).is_none());
    }

    #[test]
    fn sorts_by_projection_on_normal_not_by_input_order() {
        let p = vec![
            [0.0, 0.0, 5.0],
            [0.0, 0.0, -2.5],
            [0.0, 0.0, 2.5],
            [0.0, 0.0, 0.0],
        ];
        assert_eq!(sort_along(&p, [0.0, 0.0, 1.0]), vec![1, 3, 2, 0]);
        // Feet-first: normal points to -z, so the highest z comes first.
        assert_eq!(sort_along(&p, [0.0, 0.0, -1.0]), vec![0, 2, 3, 1]);
    }

    #[test]
    fn spacing_comes_from_positions() {
        let d: Vec<f64> = (0..20).map(|i| -100.0 + 1.25 * i as f64).collect();
        assert!((regular_spacing(&d).unwrap() - 1.25).abs() < 1e-12);
        // Small jitter (DS rounding) stays regular.
        let mut j = d.clone();
        j[7] += 0.05;
        assert!(regular_spacing(&j).is_ok());
    }

    #[test]
    fn missing_slice_is_a_gap() {
        let mut d: Vec<f64> = (0..20).map(|i| 2.5 * i as f64).collect();
        d.remove(10);
        let g = regular_spacing(&d).unwrap_err();
        assert!((g.gap_mm - 5.0).abs() < 1e-12);
        assert!((g.after_mm - 22.5).abs() < 1e-12);
        assert!((g.median_mm - 2.5).abs() < 1e-12);
    }

    #[test]
    fn a_step_eleven_percent_off_is_irregular_nine_percent_is_not() {
        let mut d: Vec<f64> = (0..10).map(|i| 2.0 * i as f64).collect();
        for x in d.iter_mut().skip(5) {
            *x += 0.18;
        }
        assert!(regular_spacing(&d).is_ok());
        for x in d.iter_mut().skip(5) {
            *x += 0.04;
        }
        assert!(regular_spacing(&d).is_err());
    }

    #[test]
    fn coincident_positions_group_together() {
        let d = [0.0, 2.5, 2.505, 5.0, 7.5, 7.5];
        assert_eq!(group_same_position(&d), vec![0..1, 1..3, 3..4, 4..6]);
        assert!(group_same_position(&[]).is_empty());
    }

    #[test]
    fn straight_stack_has_no_shear_tilted_stack_has() {
        let n = [0.0, 0.0, 1.0];
        let straight: Vec<Vec3> = (0..30).map(|i| [-100.0, -120.0, 2.0 * i as f64]).collect();
        let s = shear(&straight, n);
        assert!(s.offset_mm < 1e-12 && !is_sheared(&s, 0.7));
        // 15° gantry tilt: each slice shifts along y by tan(15°) × step.
        let t = 15f64.to_radians().tan();
        let tilted: Vec<Vec3> = (0..30)
            .map(|i| [-100.0, -120.0 + t * 2.0 * i as f64, 2.0 * i as f64])
            .collect();
        let s = shear(&tilted, n);
        assert!((s.angle_deg - 15.0).abs() < 1e-9);
        assert!(is_sheared(&s, 0.7));
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median_spacing(&[1.0]), None);
    }
}
