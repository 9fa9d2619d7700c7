//! Small 3-D vector helpers and the shapes the phantom is built from (patient LPS, mm).

pub type V3 = [f64; 3];

pub fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub fn scale(a: V3, s: f64) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}

pub fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub fn norm(a: V3) -> f64 {
    dot(a, a).sqrt()
}

pub fn normalize(a: V3) -> V3 {
    let n = norm(a);
    if n > 0.0 {
        scale(a, 1.0 / n)
    } else {
        [0.0, 0.0, 1.0]
    }
}

/// `a + (b - a) t`.
pub fn lerp(a: V3, b: V3, t: f64) -> V3 {
    add(a, scale(sub(b, a), t))
}

/// Rotates `v` about the unit axis `k` by `angle` (Rodrigues).
pub fn rotate(v: V3, k: V3, angle: f64) -> V3 {
    let (s, c) = angle.sin_cos();
    add(
        add(scale(v, c), scale(cross(k, v), s)),
        scale(k, dot(k, v) * (1.0 - c)),
    )
}

/// Any unit vector perpendicular to the unit vector `t`.
pub fn perpendicular(t: V3) -> V3 {
    let helper = if t[2].abs() < 0.9 {
        [0.0, 0.0, 1.0]
    } else {
        [1.0, 0.0, 0.0]
    };
    normalize(cross(t, helper))
}

/// Kinds of tubular structure; each has its own per-slice distance buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TubeClass {
    /// A coronary artery (carries a vessel label).
    Coronary,
    /// Aorta, pulmonary trunk and arteries, vena cava: blood in the mediastinum.
    GreatVessel,
    /// Trachea and main bronchi: air with a soft-tissue wall.
    Airway,
    /// Pulmonary vessels inside the lungs.
    LungVessel,
}

/// A tapered cylinder between two points (a capsule with linearly varying radius).
#[derive(Debug, Clone)]
pub struct Seg {
    pub a: V3,
    pub b: V3,
    pub ra: f64,
    pub rb: f64,
    pub class: TubeClass,
    /// Vessel label for coronaries (1 LM, 2 LAD, 3 LCX, 4 RCA), else 0.
    pub label: u8,
}

impl Seg {
    /// Signed distance of `p` from the tube surface (negative inside).
    pub fn signed_distance(&self, p: V3) -> f64 {
        let ab = sub(self.b, self.a);
        let l2 = dot(ab, ab);
        let t = if l2 > 0.0 {
            (dot(sub(p, self.a), ab) / l2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let q = add(self.a, scale(ab, t));
        norm(sub(p, q)) - (self.ra + (self.rb - self.ra) * t)
    }

    pub fn rmax(&self) -> f64 {
        self.ra.max(self.rb)
    }
}

/// A polyline with a radius at every point (a vessel centreline).
#[derive(Debug, Clone)]
pub struct Path {
    pub points: Vec<V3>,
    pub radii: Vec<f64>,
    /// Cumulative arc length at every point.
    pub arc: Vec<f64>,
}

impl Path {
    pub fn new(points: Vec<V3>, radii: Vec<f64>) -> Self {
        let mut arc = Vec::with_capacity(points.len());
        let mut s = 0.0;
        for i in 0..points.len() {
            if i > 0 {
                s += norm(sub(points[i], points[i - 1]));
            }
            arc.push(s);
        }
        Path { points, radii, arc }
    }

    pub fn length(&self) -> f64 {
        self.arc.last().copied().unwrap_or(0.0)
    }

    /// Point, unit tangent and radius at arc length `s` (clamped to the path).
    pub fn at(&self, s: f64) -> (V3, V3, f64) {
        let n = self.points.len();
        if n < 2 {
            let p = self.points.first().copied().unwrap_or([0.0; 3]);
            return (
                p,
                [0.0, 0.0, 1.0],
                self.radii.first().copied().unwrap_or(1.0),
            );
        }
        let s = s.clamp(0.0, self.length());
        let mut i = match self.arc.binary_search_by(|x| x.total_cmp(&s)) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        i = i.min(n - 2);
        let seg = self.arc[i + 1] - self.arc[i];
        let t = if seg > 0.0 {
            (s - self.arc[i]) / seg
        } else {
            0.0
        };
        let p = lerp(self.points[i], self.points[i + 1], t);
        let tan = normalize(sub(self.points[i + 1], self.points[i]));
        let r = self.radii[i] + (self.radii[i + 1] - self.radii[i]) * t;
        (p, tan, r)
    }

    /// The path as tube segments.
    pub fn segments(&self, class: TubeClass, label: u8) -> Vec<Seg> {
        self.points
            .windows(2)
            .zip(self.radii.windows(2))
            .map(|(p, r)| Seg {
                a: p[0],
                b: p[1],
                ra: r[0],
                rb: r[1],
                class,
                label,
            })
            .collect()
    }
}

/// A solid ellipsoid of calcium: plaque or distractor. Density falls a little towards the rim
/// (`peak_hu` at the centre, 0.7 × at the surface), so partial-volume averages stay below the peak.
#[derive(Debug, Clone)]
pub struct Calc {
    pub center: V3,
    /// Unit axes.
    pub axes: [V3; 3],
    /// Semi-axis lengths (mm) along `axes`.
    pub radii: [f64; 3],
    pub peak_hu: f64,
}

impl Calc {
    /// Normalised squared radius of `p` (≤ 1 inside).
    pub fn q2(&self, p: V3) -> f64 {
        let d = sub(p, self.center);
        let mut q = 0.0;
        for k in 0..3 {
            let c = dot(d, self.axes[k]) / self.radii[k];
            q += c * c;
        }
        q
    }

    /// Density at normalised squared radius `q2` (inside only).
    pub fn density(&self, q2: f64) -> f64 {
        self.peak_hu * (1.0 - 0.3 * q2)
    }

    /// Axis-aligned half extents (mm) of the bounding box.
    pub fn half_extent(&self) -> V3 {
        let mut e = [0.0; 3];
        for (i, ei) in e.iter_mut().enumerate() {
            *ei = (0..3)
                .map(|k| (self.axes[k][i] * self.radii[k]).powi(2))
                .sum::<f64>()
                .sqrt();
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_preserves_length_and_turns_quarter() {
        let v = rotate(
            [1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0],
            std::f64::consts::FRAC_PI_2,
        );
        assert!((v[0]).abs() < 1e-12 && (v[1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn segment_distance_and_path_sampling() {
        let s = Seg {
            a: [0.0; 3],
            b: [10.0, 0.0, 0.0],
            ra: 1.0,
            rb: 3.0,
            class: TubeClass::Coronary,
            label: 2,
        };
        assert!((s.signed_distance([5.0, 4.0, 0.0]) - 2.0).abs() < 1e-12);
        let p = Path::new(
            vec![[0.0; 3], [3.0, 4.0, 0.0], [3.0, 4.0, 5.0]],
            vec![2.0, 1.0, 1.0],
        );
        assert!((p.length() - 10.0).abs() < 1e-12);
        let (q, t, r) = p.at(7.5);
        assert!(
            (q[2] - 2.5).abs() < 1e-12 && (t[2] - 1.0).abs() < 1e-12 && (r - 1.0).abs() < 1e-12
        );
    }

    #[test]
    fn calc_extent_of_rotated_ellipsoid() {
        let c = Calc {
            center: [0.0; 3],
            axes: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            radii: [4.0, 1.0, 2.0],
            peak_hu: 500.0,
        };
        assert_eq!(c.half_extent(), [4.0, 1.0, 2.0]);
        assert!(c.q2([3.9, 0.0, 0.0]) < 1.0 && c.q2([0.0, 1.1, 0.0]) > 1.0);
    }
}
