//! The key-image summary: a Secondary Capture (1.2.840.10008.5.1.4.1.1.7), RGB 1024×768,
//! that a radiologist reads in two seconds — up to four key axial slices (highest lesion
//! scores, soft-tissue window) with lesion outlines in one colour per vessel, the score table
//! (also the colour legend), risk category, CAC-DRS, the model, quality warnings and the
//! configurable banner.
//!
//! Drawn here with `image` buffers and `ab_glyph` glyph coverage (the lines, rectangles and
//! outlines are a few loops written by hand rather than another dependency). No patient
//! identification is burned in: the viewer shows it from the header.

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use image::RgbImage;

use super::{
    codes, common_modules, object_of, put_empty, put_seq, put_str, put_strs, put_us,
    source_is_multiframe, vessel_colour, Context, EncodeError, EncodeInput, SeriesSpec,
    SUMMARY_SERIES_NUMBER,
};
use crate::score::{Scores, Vessel};

pub const WIDTH: u32 = 1024;
pub const HEIGHT: u32 = 768;
/// At most this many key slices.
pub const MAX_KEY_SLICES: usize = 4;
/// Soft-tissue window (HU).
const WINDOW_CENTER: f64 = 40.0;
const WINDOW_WIDTH: f64 = 400.0;

static FONT_REGULAR: &[u8] = include_bytes!("font/DejaVuSans.ttf");
static FONT_BOLD: &[u8] = include_bytes!("font/DejaVuSans-Bold.ttf");

const TITLE: &str = "Coronary artery calcium — Agatston score";
const BACKGROUND: [u8; 3] = [16, 18, 22];
const TEXT: [u8; 3] = [226, 228, 232];
const DIM: [u8; 3] = [150, 156, 166];
const RULE: [u8; 3] = [60, 64, 72];
const BANNER_BG: [u8; 3] = [176, 96, 0];
const WARN: [u8; 3] = [255, 176, 64];

/// Builds the Secondary Capture data set.
pub(crate) fn build(input: &EncodeInput, ctx: &Context) -> Result<InMemDicomObject, EncodeError> {
    let img = render(input)?;
    let volume = input.volume;
    let mut o = common_modules(
        input,
        ctx,
        &SeriesSpec {
            sop_class_uid: uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
            sop_instance_uid: &ctx.summary_uid,
            series_instance_uid: &ctx.summary_series_uid,
            series_number: SUMMARY_SERIES_NUMBER,
            modality: "OT",
            series_description: &format!("CAC summary ({})", input.model.name),
        },
    );
    // SC Equipment
    put_str(&mut o, tags::CONVERSION_TYPE, VR::CS, "WSD");
    put_str(
        &mut o,
        tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER,
        VR::LO,
        "cacd",
    );
    put_str(
        &mut o,
        tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER_MODEL_NAME,
        VR::LO,
        "cacd",
    );
    put_strs(
        &mut o,
        tags::SECONDARY_CAPTURE_DEVICE_SOFTWARE_VERSIONS,
        VR::LO,
        &super::software_versions(input.model),
    );
    // General Image
    put_strs(&mut o, tags::IMAGE_TYPE, VR::CS, &["DERIVED", "SECONDARY"]);
    put_empty(&mut o, tags::PATIENT_ORIENTATION, VR::CS);
    // The key images show the heart, an unpaired part: with BodyPartExamined saying so,
    // Laterality (type 2C) is rightly absent.
    put_str(&mut o, tags::BODY_PART_EXAMINED, VR::CS, "HEART");
    put_str(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put_str(&mut o, tags::RECOGNIZABLE_VISUAL_FEATURES, VR::CS, "NO");
    put_str(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(
        &mut o,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        "Key slices of the source series with coronary calcium outlines and Agatston scores",
    );
    let multiframe = source_is_multiframe(volume);
    let sources = key_slices(input.scores, volume.dims().0)
        .into_iter()
        .map(|z| {
            let mut r = object_of(&[
                (
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    volume.meta.sop_class_uid.as_str(),
                ),
                (
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    volume.sop_instance_uids[z].as_str(),
                ),
            ]);
            if multiframe {
                put_str(
                    &mut r,
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    &volume.source_frames[z].to_string(),
                );
            }
            put_seq(
                &mut r,
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                vec![codes::SOURCE_IMAGE_PURPOSE.item()],
            );
            r
        })
        .collect();
    put_seq(&mut o, tags::SOURCE_IMAGE_SEQUENCE, sources);
    // Image Pixel: 8-bit RGB, colour-by-pixel.
    put_us(&mut o, tags::SAMPLES_PER_PIXEL, 3);
    put_str(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put_us(&mut o, tags::PLANAR_CONFIGURATION, 0);
    put_us(&mut o, tags::ROWS, img.height() as u16);
    put_us(&mut o, tags::COLUMNS, img.width() as u16);
    put_us(&mut o, tags::BITS_ALLOCATED, 8);
    put_us(&mut o, tags::BITS_STORED, 8);
    put_us(&mut o, tags::HIGH_BIT, 7);
    put_us(&mut o, tags::PIXEL_REPRESENTATION, 0);
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(img.into_raw()),
    ));
    Ok(o)
}

/// The key slices: those with the highest summed lesion score, best first (at most
/// [`MAX_KEY_SLICES`]); with no calcium, the middle slice.
pub fn key_slices(scores: &Scores, slices: usize) -> Vec<usize> {
    let mut per_slice: Vec<(usize, f64)> = Vec::new();
    for l in &scores.lesions {
        match per_slice.iter_mut().find(|(z, _)| *z == l.slice) {
            Some((_, s)) => *s += l.agatston,
            None => per_slice.push((l.slice, l.agatston)),
        }
    }
    if per_slice.is_empty() {
        return vec![slices / 2];
    }
    per_slice.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    per_slice
        .into_iter()
        .take(MAX_KEY_SLICES)
        .map(|(z, _)| z)
        .collect()
}

/// Renders the summary image.
pub fn render(input: &EncodeInput) -> Result<RgbImage, EncodeError> {
    let fonts = Fonts::load()?;
    let mut c = Canvas {
        img: RgbImage::from_pixel(WIDTH, HEIGHT, image::Rgb(BACKGROUND)),
        fonts,
    };
    let s = input.scores;

    // Banner across the top.
    c.fill_rect(0, 0, WIDTH as i32, 36, BANNER_BG);
    let banner = &input.options.banner;
    let bw = c.text_width(true, 18.0, banner);
    c.text(
        Pen::new(true, 18.0, [255, 255, 255]),
        (WIDTH as f32 - bw) / 2.0,
        25.0,
        banner,
    );

    // Title row.
    c.text(Pen::new(true, 22.0, TEXT), 16.0, 70.0, TITLE);
    let right = format!(
        "result v{} · {}",
        input.result_version,
        iso_date(&input.volume.meta.study_date)
    );
    let rw = c.text_width(false, 14.0, &right);
    c.text(
        Pen::new(false, 14.0, DIM),
        WIDTH as f32 - 12.0 - rw,
        70.0,
        &right,
    );
    c.fill_rect(12, 84, WIDTH as i32 - 24, 1, RULE);

    draw_panels(&mut c, input);
    draw_scores(&mut c, input, s);

    // Footer.
    c.fill_rect(0, HEIGHT as i32 - 24, WIDTH as i32, 24, [28, 30, 36]);
    let footer = format!(
        "{banner}  ·  cacd {}  ·  outlines: lesions scored (HU ≥ 130)  ·  window W{} L{}",
        env!("CARGO_PKG_VERSION"),
        WINDOW_WIDTH,
        WINDOW_CENTER
    );
    let fw = c.text_width(false, 12.0, &footer);
    c.text(
        Pen::new(false, 12.0, DIM),
        (WIDTH as f32 - fw) / 2.0,
        HEIGHT as f32 - 8.0,
        &footer,
    );
    Ok(c.img)
}

/// One decimal, never "-0.0" (an empty sum of scores can be negative zero).
fn one_decimal(x: f64) -> String {
    let s = format!("{x:.1}");
    if s == "-0.0" {
        "0.0".to_string()
    } else {
        s
    }
}

fn iso_date(da: &Option<String>) -> String {
    match da.as_deref() {
        Some(d) if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) => {
            format!("study {}-{}-{}", &d[..4], &d[4..6], &d[6..])
        }
        _ => "study date unknown".to_string(),
    }
}

/// Key slices on the left: a 2×2 grid, or one large panel when there is only one.
fn draw_panels(c: &mut Canvas, input: &EncodeInput) {
    let keys = key_slices(input.scores, input.volume.dims().0);
    let fov = field_of_view(input);
    let (x0, y0, area) = (12, 96, 640);
    if keys.len() == 1 {
        draw_slice(c, input, keys[0], fov, (x0, y0), area);
    } else {
        let size = (area - 8) / 2;
        for (i, z) in keys.iter().enumerate() {
            let (col, row) = ((i % 2) as i32, (i / 2) as i32);
            draw_slice(
                c,
                input,
                *z,
                fov,
                (x0 + col * (size + 8), y0 + row * (size + 8)),
                size,
            );
        }
    }
}

/// Square field of view `(centre y mm, centre x mm, side mm)` in index-scaled millimetres:
/// around all lesions with a margin, at least 130 mm, else the whole slice.
fn field_of_view(input: &EncodeInput) -> (f64, f64, f64) {
    let (_, rows, cols) = input.volume.dims();
    let sp = input.volume.geometry.spacing;
    let (h, w) = (rows as f64 * sp[1], cols as f64 * sp[2]);
    let whole = (h / 2.0, w / 2.0, h.max(w));
    let mut bbox: Option<[f64; 4]> = None;
    for l in &input.scores.lesions {
        for &(y, x) in &l.pixels {
            let (ym, xm) = ((y as f64 + 0.5) * sp[1], (x as f64 + 0.5) * sp[2]);
            let b = bbox.get_or_insert([ym, xm, ym, xm]);
            *b = [b[0].min(ym), b[1].min(xm), b[2].max(ym), b[3].max(xm)];
        }
    }
    match bbox {
        None => whole,
        Some([y0, x0, y1, x1]) => {
            let side = ((y1 - y0).max(x1 - x0) + 40.0).max(130.0).min(h.max(w));
            ((y0 + y1) / 2.0, (x0 + x1) / 2.0, side)
        }
    }
}

/// One key slice, soft-tissue window, lesion outlines, caption.
fn draw_slice(
    c: &mut Canvas,
    input: &EncodeInput,
    z: usize,
    fov: (f64, f64, f64),
    at: (i32, i32),
    size: i32,
) {
    let v = input.volume;
    let (slices, rows, cols) = v.dims();
    let sp = v.geometry.spacing;
    let (cy, cx, side) = fov;
    let hu = v.hu.index_axis(ndarray::Axis(0), z);

    // Lesion labels on this slice (0 = none).
    let mut labels = vec![0u8; rows * cols];
    for l in input.scores.lesions.iter().filter(|l| l.slice == z) {
        for &(y, x) in &l.pixels {
            labels[y as usize * cols + x as usize] = l.vessel.label();
        }
    }

    let n = size as usize;
    let mut out_labels = vec![0u8; n * n];
    let mut grey = vec![0u8; n * n];
    for py in 0..n {
        for px in 0..n {
            // Voxel index (fractional) of this output pixel's centre; voxel centres at i + 0.5 mm-scaled.
            let ym = cy + ((py as f64 + 0.5) / n as f64 - 0.5) * side;
            let xm = cx + ((px as f64 + 0.5) / n as f64 - 0.5) * side;
            let (yi, xi) = (ym / sp[1] - 0.5, xm / sp[2] - 0.5);
            let value = bilinear(&hu, yi, xi);
            grey[py * n + px] = window(value);
            let (ny, nx) = (yi.round(), xi.round());
            if ny >= 0.0 && nx >= 0.0 && (ny as usize) < rows && (nx as usize) < cols {
                out_labels[py * n + px] = labels[ny as usize * cols + nx as usize];
            }
        }
    }
    for py in 0..n {
        for px in 0..n {
            let g = grey[py * n + px];
            let mut colour = [g, g, g];
            if out_labels[py * n + px] == 0 {
                // A 2-pixel ring just outside each lesion, in its vessel's colour.
                if let Some(label) = ring_label(&out_labels, n, py, px) {
                    if let Some(vessel) = Vessel::from_label(label) {
                        colour = vessel_colour(vessel);
                    }
                }
            }
            c.put(at.0 + px as i32, at.1 + py as i32, colour);
        }
    }

    // Caption bar.
    c.blend_rect(at.0, at.1, size, 24, [0, 0, 0], 0.6);
    let on_slice: f64 = input
        .scores
        .lesions
        .iter()
        .filter(|l| l.slice == z)
        .map(|l| l.agatston)
        .sum();
    let pos = v.geometry.index_to_patient(z as f64, 0.0, 0.0);
    let caption = format!("slice {}/{}   z {:.1} mm", z + 1, slices, pos[2]);
    c.text(
        Pen::new(false, 13.0, TEXT),
        at.0 as f32 + 6.0,
        at.1 as f32 + 17.0,
        &caption,
    );
    let right = if input.refusal.is_some() {
        "not scored".to_string()
    } else if input.scores.lesions.is_empty() {
        "no calcium".to_string()
    } else {
        format!("{} on slice", one_decimal(on_slice))
    };
    let rw = c.text_width(true, 13.0, &right);
    c.text(
        Pen::new(true, 13.0, TEXT),
        (at.0 + size) as f32 - 6.0 - rw,
        at.1 as f32 + 17.0,
        &right,
    );
    // Patient-right marker for the usual axial display (rows → +x = patient left).
    if v.geometry.row_dir[0] > 0.9 {
        c.text(
            Pen::new(true, 14.0, [255, 255, 255]),
            at.0 as f32 + 6.0,
            (at.1 + size / 2) as f32,
            "R",
        );
    }
    // Vessels outlined on this slice, coloured, on a dark strip for contrast.
    c.blend_rect(at.0, at.1 + size - 24, size, 24, [0, 0, 0], 0.6);
    if input.refusal.is_some() {
        c.text(
            Pen::new(true, 14.0, WARN),
            at.0 as f32 + 6.0,
            (at.1 + size) as f32 - 7.0,
            "Not scored (see the reason on the right)",
        );
    } else if input.scores.lesions.is_empty() {
        c.text(
            Pen::new(true, 14.0, risk_colour("0")),
            at.0 as f32 + 6.0,
            (at.1 + size) as f32 - 7.0,
            super::sr::NO_CALCIUM_TEXT,
        );
    }
    let mut x = at.0 as f32 + 6.0;
    for vessel in Vessel::ALL {
        if input
            .scores
            .lesions
            .iter()
            .any(|l| l.slice == z && l.vessel == vessel)
        {
            x += c.text(
                Pen::new(true, 13.0, vessel_colour(vessel)),
                x,
                (at.1 + size) as f32 - 8.0,
                vessel.name(),
            ) + 8.0;
        }
    }
}

/// The label of the nearest lesion within two pixels (Chebyshev), if any.
fn ring_label(labels: &[u8], n: usize, py: usize, px: usize) -> Option<u8> {
    let mut best: Option<(usize, u8)> = None;
    for dy in -2i64..=2 {
        for dx in -2i64..=2 {
            let (y, x) = (py as i64 + dy, px as i64 + dx);
            if y < 0 || x < 0 || y >= n as i64 || x >= n as i64 {
                continue;
            }
            let l = labels[y as usize * n + x as usize];
            let d = dy.unsigned_abs().max(dx.unsigned_abs()) as usize;
            if l != 0 && best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, l));
            }
        }
    }
    best.map(|(_, l)| l)
}

fn bilinear(hu: &ndarray::ArrayView2<i16>, y: f64, x: f64) -> f64 {
    let (rows, cols) = hu.dim();
    let at = |yy: i64, xx: i64| -> f64 {
        if yy < 0 || xx < 0 || yy >= rows as i64 || xx >= cols as i64 {
            -1000.0
        } else {
            f64::from(hu[[yy as usize, xx as usize]])
        }
    };
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as i64, x0 as i64);
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
    let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

fn window(hu: f64) -> u8 {
    let lo = WINDOW_CENTER - WINDOW_WIDTH / 2.0;
    (((hu - lo) / WINDOW_WIDTH).clamp(0.0, 1.0) * 255.0).round() as u8
}

fn risk_colour(category: &str) -> [u8; 3] {
    match category {
        "0" => [70, 170, 90],
        "1-10" => [150, 180, 60],
        "11-100" => [220, 180, 40],
        "101-400" => [235, 120, 30],
        _ => [215, 50, 50],
    }
}

/// The right-hand column: total, risk, table (the legend) — or, for a study the quality gate
/// refused, "not scored" and why — then model, source and warnings.
fn draw_scores(c: &mut Canvas, input: &EncodeInput, s: &Scores) {
    let x0 = 672.0;
    let x1 = WIDTH as f32 - 14.0;
    let y = match input.refusal {
        Some(reason) => draw_refusal(c, reason, x0, x1),
        None => draw_score_table(c, s, x0, x1),
    };
    draw_model_and_warnings(c, input, x0, x1, y);
}

/// "NOT SCORED" and the reason, wrapped; returns the baseline below it.
fn draw_refusal(c: &mut Canvas, reason: &str, x0: f32, x1: f32) -> f32 {
    c.text(Pen::new(true, 13.0, DIM), x0, 112.0, "CORONARY CALCIUM");
    c.text(Pen::new(true, 40.0, WARN), x0, 160.0, "NOT SCORED");
    let mut y = 196.0;
    for line in c.wrap(true, 16.0, reason, x1 - x0).into_iter().take(10) {
        c.text(Pen::new(true, 16.0, TEXT), x0, y, &line);
        y += 22.0;
    }
    y += 8.0;
    for line in c.wrap(
        false,
        13.0,
        "No calcium score was computed for this series; no score is sent.",
        x1 - x0,
    ) {
        c.text(Pen::new(false, 13.0, DIM), x0, y, &line);
        y += 17.0;
    }
    y
}

/// Total, risk, CAC-DRS and the per-artery table; returns the baseline below it.
fn draw_score_table(c: &mut Canvas, s: &Scores, x0: f32, x1: f32) -> f32 {
    c.text(Pen::new(true, 13.0, DIM), x0, 112.0, "TOTAL AGATSTON SCORE");
    let total_w = c.text(
        Pen::new(true, 46.0, [255, 255, 255]),
        x0,
        162.0,
        &one_decimal(s.agatston_total),
    );
    c.text(
        Pen::new(false, 16.0, DIM),
        x0 + total_w + 10.0,
        162.0,
        &format!("{} mm³", one_decimal(s.volume_mm3)),
    );

    // Risk category pill and CAC-DRS.
    let risk = format!("Risk {}", s.risk_category.replace('-', "–"));
    let rw = c.text_width(true, 16.0, &risk);
    c.fill_rect(
        x0 as i32,
        178,
        rw as i32 + 20,
        28,
        risk_colour(&s.risk_category),
    );
    c.text(
        Pen::new(true, 16.0, [255, 255, 255]),
        x0 + 10.0,
        198.0,
        &risk,
    );
    let drs_x = x0 + rw + 34.0;
    let drs_w = c.text(Pen::new(false, 16.0, DIM), drs_x, 198.0, "CAC-DRS ");
    c.text(Pen::new(true, 16.0, TEXT), drs_x + drs_w, 198.0, &s.cac_drs);

    // Table; its colour swatches are the outline legend.
    let cols = [x0 + 136.0, x0 + 240.0, x1];
    let mut y = 240.0;
    c.text(Pen::new(false, 13.0, DIM), x0, y, "Artery");
    for (label, cx) in ["Agatston", "Volume mm³", "Lesions"].iter().zip(cols) {
        c.text_right(Pen::new(false, 13.0, DIM), cx, y, label);
    }
    c.fill_rect(x0 as i32, y as i32 + 8, (x1 - x0) as i32, 1, RULE);
    y += 32.0;
    for vessel in Vessel::ALL {
        let lesions = s.lesions.iter().filter(|l| l.vessel == vessel).count();
        c.fill_rect(x0 as i32, y as i32 - 13, 14, 14, vessel_colour(vessel));
        c.text(Pen::new(true, 16.0, TEXT), x0 + 22.0, y, vessel.name());
        c.text_right(
            Pen::new(false, 16.0, TEXT),
            cols[0],
            y,
            &one_decimal(s.per_vessel.get(vessel)),
        );
        c.text_right(
            Pen::new(false, 16.0, TEXT),
            cols[1],
            y,
            &one_decimal(s.per_vessel_volume_mm3.get(vessel)),
        );
        c.text_right(
            Pen::new(false, 16.0, TEXT),
            cols[2],
            y,
            &lesions.to_string(),
        );
        y += 28.0;
    }
    c.fill_rect(x0 as i32, y as i32 - 18, (x1 - x0) as i32, 1, RULE);
    y += 4.0;
    c.text(Pen::new(true, 16.0, [255, 255, 255]), x0 + 22.0, y, "Total");
    c.text_right(
        Pen::new(true, 16.0, [255, 255, 255]),
        cols[0],
        y,
        &one_decimal(s.agatston_total),
    );
    c.text_right(
        Pen::new(true, 16.0, [255, 255, 255]),
        cols[1],
        y,
        &one_decimal(s.volume_mm3),
    );
    c.text_right(
        Pen::new(true, 16.0, [255, 255, 255]),
        cols[2],
        y,
        &s.lesions.len().to_string(),
    );
    y
}

/// Model, source series and quality warnings, from baseline `y` down.
fn draw_model_and_warnings(c: &mut Canvas, input: &EncodeInput, x0: f32, x1: f32, mut y: f32) {
    // Model and source.
    let m = input.model;
    let meta = &input.volume.meta;
    let sp = input.volume.geometry.spacing;
    y += 46.0;
    c.text(Pen::new(true, 13.0, DIM), x0, y, "MODEL");
    y += 22.0;
    c.text_clipped(
        Pen::new(true, 15.0, TEXT),
        x0,
        y,
        x1,
        &format!("{} {}", m.name, m.version),
    );
    y += 20.0;
    c.text_clipped(
        Pen::new(false, 13.0, DIM),
        x0,
        y,
        x1,
        &format!("{} · {}", m.precision, m.engine),
    );
    y += 18.0;
    let sha: String = m.sha256.chars().take(16).collect();
    c.text_clipped(
        Pen::new(false, 13.0, DIM),
        x0,
        y,
        x1,
        &format!("sha256 {sha}…"),
    );
    y += 30.0;
    c.text(Pen::new(true, 13.0, DIM), x0, y, "SOURCE SERIES");
    y += 20.0;
    let desc = match (meta.series_number, &meta.series_description) {
        (Some(n), Some(d)) => format!("#{n} {d}"),
        (Some(n), None) => format!("#{n}"),
        (None, Some(d)) => d.clone(),
        (None, None) => "unnamed series".to_string(),
    };
    c.text_clipped(Pen::new(false, 13.0, TEXT), x0, y, x1, &desc);
    y += 18.0;
    let mut acq = format!("{} slices, spacing {:.2} mm", input.volume.dims().0, sp[0]);
    if let Some(t) = meta.slice_thickness_mm {
        acq.push_str(&format!(", thickness {t:.2} mm"));
    }
    if let Some(kvp) = meta.kvp {
        acq.push_str(&format!(", {kvp:.0} kVp"));
    }
    c.text_clipped(Pen::new(false, 13.0, TEXT), x0, y, x1, &acq);

    // Quality warnings, wrapped; whatever does not fit is counted.
    y += 30.0;
    if input.warnings.is_empty() {
        c.text(Pen::new(true, 13.0, DIM), x0, y, "NO QUALITY WARNINGS");
        return;
    }
    c.text(Pen::new(true, 13.0, WARN), x0, y, "QUALITY WARNINGS");
    let bottom = HEIGHT as f32 - 36.0;
    let mut lines = Vec::new();
    for w in input.warnings {
        let wrapped = c.wrap(false, 13.0, &format!("• {w}"), x1 - x0);
        lines.extend(wrapped);
    }
    let room = ((bottom - y) / 17.0).floor().max(0.0) as usize;
    let shown = if lines.len() > room {
        room.saturating_sub(1)
    } else {
        lines.len()
    };
    for line in &lines[..shown] {
        y += 17.0;
        c.text(Pen::new(false, 13.0, WARN), x0, y, line);
    }
    if shown < lines.len() {
        y += 17.0;
        c.text(
            Pen::new(false, 13.0, WARN),
            x0,
            y,
            "… more in the SR report",
        );
    }
}

// ---------------------------------------------------------------------------------------
// Drawing

struct Fonts {
    regular: FontRef<'static>,
    bold: FontRef<'static>,
}

impl Fonts {
    fn load() -> Result<Self, EncodeError> {
        let load = |bytes: &'static [u8]| {
            FontRef::try_from_slice(bytes).map_err(|e| EncodeError::Font(e.to_string()))
        };
        Ok(Fonts {
            regular: load(FONT_REGULAR)?,
            bold: load(FONT_BOLD)?,
        })
    }
}

/// Weight, size (px) and colour of a run of text.
#[derive(Clone, Copy)]
struct Pen {
    bold: bool,
    size: f32,
    colour: [u8; 3],
}

impl Pen {
    fn new(bold: bool, size: f32, colour: [u8; 3]) -> Self {
        Pen { bold, size, colour }
    }
}

struct Canvas {
    img: RgbImage,
    fonts: Fonts,
}

impl Canvas {
    fn put(&mut self, x: i32, y: i32, colour: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, image::Rgb(colour));
        }
    }

    fn blend(&mut self, x: i32, y: i32, colour: [u8; 3], alpha: f32) {
        if x < 0 || y < 0 || x as u32 >= self.img.width() || y as u32 >= self.img.height() {
            return;
        }
        let a = alpha.clamp(0.0, 1.0);
        let p = self.img.get_pixel_mut(x as u32, y as u32);
        for (dst, src) in p.0.iter_mut().zip(colour) {
            *dst = (f32::from(*dst) * (1.0 - a) + f32::from(src) * a).round() as u8;
        }
    }

    fn fill_rect(&mut self, x: i32, y: i32, w: i32, h: i32, colour: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, colour);
            }
        }
    }

    fn blend_rect(&mut self, x: i32, y: i32, w: i32, h: i32, colour: [u8; 3], alpha: f32) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.blend(xx, yy, colour, alpha);
            }
        }
    }

    fn font(&self, bold: bool) -> &FontRef<'static> {
        if bold {
            &self.fonts.bold
        } else {
            &self.fonts.regular
        }
    }

    fn text_width(&self, bold: bool, size: f32, text: &str) -> f32 {
        let font = self.font(bold).as_scaled(PxScale::from(size));
        let mut w = 0.0;
        let mut prev = None;
        for ch in text.chars() {
            let id = font.glyph_id(ch);
            if let Some(p) = prev {
                w += font.kern(p, id);
            }
            w += font.h_advance(id);
            prev = Some(id);
        }
        w
    }

    /// Draws `text` with its baseline at `y`; returns the advance width.
    fn text(&mut self, pen: Pen, x: f32, y: f32, text: &str) -> f32 {
        let font = self.font(pen.bold).clone();
        let scale = PxScale::from(pen.size);
        let scaled = font.as_scaled(scale);
        let mut caret = x;
        let mut prev = None;
        for ch in text.chars() {
            let id = scaled.glyph_id(ch);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, point(caret, y));
            caret += scaled.h_advance(id);
            prev = Some(id);
            if let Some(outlined) = font.outline_glyph(glyph) {
                let b = outlined.px_bounds();
                outlined.draw(|gx, gy, coverage| {
                    self.blend(
                        b.min.x as i32 + gx as i32,
                        b.min.y as i32 + gy as i32,
                        pen.colour,
                        coverage,
                    );
                });
            }
        }
        caret - x
    }

    fn text_right(&mut self, pen: Pen, right: f32, y: f32, text: &str) {
        let w = self.text_width(pen.bold, pen.size, text);
        self.text(pen, right - w, y, text);
    }

    /// Draws `text`, cut with an ellipsis so it ends before `right`.
    fn text_clipped(&mut self, pen: Pen, x: f32, y: f32, right: f32, text: &str) {
        let mut t = text.to_string();
        if self.text_width(pen.bold, pen.size, &t) > right - x {
            while !t.is_empty() && self.text_width(pen.bold, pen.size, &format!("{t}…")) > right - x
            {
                t.pop();
            }
            t.push('…');
        }
        self.text(pen, x, y, &t);
    }

    /// Greedy word wrap to `width` pixels; over-long words are cut.
    fn wrap(&self, bold: bool, size: f32, text: &str, width: f32) -> Vec<String> {
        let mut lines = Vec::new();
        let mut line = String::new();
        for word in text.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_string()
            } else {
                format!("{line} {word}")
            };
            if self.text_width(bold, size, &candidate) <= width {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let mut w = word.to_string();
            while self.text_width(bold, size, &w) > width && w.chars().count() > 1 {
                let mut head = String::new();
                for ch in w.chars() {
                    if self.text_width(bold, size, &format!("{head}{ch}")) > width {
                        break;
                    }
                    head.push(ch);
                }
                if head.is_empty() {
                    break;
                }
                w = w[head.len()..].to_string();
                lines.push(head);
            }
            line = w;
        }
        if !line.is_empty() {
            lines.push(line);
        }
        lines
    }
}

/// Marks an encoded summary as superseding result version `previous`: the title row's right
/// side is redrawn as "result vN · supersedes vM · study date" (amber), and ImageComments says
/// so. Applying it again gives the same pixels.
pub fn supersede(
    summary: &mut InMemDicomObject,
    version: u32,
    previous: u32,
) -> Result<(), EncodeError> {
    let bad = |what: &str| EncodeError::InvalidInput(format!("summary image: {what}"));
    let pixels = summary
        .element(tags::PIXEL_DATA)
        .map_err(|_| bad("no pixel data"))?
        .to_bytes()
        .map_err(|_| bad("unreadable pixel data"))?
        .into_owned();
    let img = RgbImage::from_raw(WIDTH, HEIGHT, pixels).ok_or_else(|| bad("not 1024×768 RGB"))?;
    let date = summary
        .element(tags::STUDY_DATE)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string());
    let mut c = Canvas {
        img,
        fonts: Fonts::load()?,
    };
    let title_end = 16.0 + c.text_width(true, 22.0, TITLE);
    let x0 = (title_end + 8.0).ceil() as i32;
    c.fill_rect(x0, 50, WIDTH as i32 - 12 - x0, 30, BACKGROUND);
    let right = format!(
        "result v{version} · supersedes v{previous} · {}",
        iso_date(&date)
    );
    c.text_right(
        Pen::new(true, 14.0, WARN),
        WIDTH as f32 - 12.0,
        70.0,
        &right,
    );
    put_str(
        summary,
        tags::IMAGE_COMMENTS,
        VR::LT,
        &format!("Result version {version}; supersedes result version {previous}"),
    );
    summary.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(c.img.into_raw()),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::Lesion;

    fn lesion(slice: usize, agatston: f64) -> Lesion {
        Lesion {
            vessel: Vessel::LAD,
            slice,
            area_mm2: 1.0,
            peak_hu: 300,
            agatston,
            confidence: None,
            contrast_hu: None,
            pixels: vec![(1, 1)],
        }
    }

    #[test]
    fn key_slices_rank_by_summed_score_and_cap_at_four() {
        let scores = Scores {
            agatston_total: 0.0,
            volume_mm3: 0.0,
            per_vessel: Default::default(),
            per_vessel_volume_mm3: Default::default(),
            lesions: vec![
                lesion(3, 5.0),
                lesion(7, 4.0),
                lesion(7, 4.0),
                lesion(1, 1.0),
                lesion(9, 2.0),
                lesion(2, 3.0),
            ],
            risk_category: "11-100".into(),
            cac_drs: "A1/N1".into(),
        };
        assert_eq!(key_slices(&scores, 10), vec![7, 3, 2, 9]);
        let none = Scores {
            lesions: vec![],
            ..scores
        };
        assert_eq!(key_slices(&none, 10), vec![5]);
    }

    #[test]
    fn window_maps_soft_tissue_range() {
        assert_eq!(window(-1000.0), 0);
        assert_eq!(window(-160.0), 0);
        assert_eq!(window(240.0), 255);
        assert_eq!(window(40.0), 128);
    }
}
