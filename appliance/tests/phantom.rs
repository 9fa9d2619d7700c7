//! Phantom generator: determinism, burden calibration, distractors, DICOM round trip per
//! transfer syntax and pixel representation, and dciodvfy on a written file.

use cacd::phantom::{self, Burden, PhantomSpec, TransferSyntaxChoice};
use cacd::score;
use dicom_dictionary_std::tags;
use dicom_pixeldata::PixelDecoder;
use ndarray::Array3;
use std::path::Path;

fn small(seed: u64, burden: Burden) -> PhantomSpec {
    let mut s = PhantomSpec::new(seed, burden);
    s.slices = Some(20);
    s
}

#[test]
fn same_seed_same_phantom() {
    let a = phantom::generate(&small(11, Burden::Moderate));
    let b = phantom::generate(&small(11, Burden::Moderate));
    assert_eq!(a.volume.hu, b.volume.hu);
    assert_eq!(a.lesion_labels, b.lesion_labels);
    assert_eq!(a.heart_mask, b.heart_mask);
    assert_eq!(a.distractor_mask, b.distractor_mask);
    assert_eq!(a.truth, b.truth);
    assert_eq!(a.info, b.info);
    let c = phantom::generate(&small(12, Burden::Moderate));
    assert_ne!(a.volume.hu, c.volume.hu);
}

/// The distractor mask (a training target for a non-coronary class) marks every distractor
/// calcification the phantom reports, bright voxels, and nothing the truth counts.
#[test]
fn distractor_mask_marks_the_distractors() {
    let mut checked = 0;
    for seed in [31u64, 32, 33, 34, 35, 36] {
        let mut spec = PhantomSpec::new(seed, Burden::High);
        spec.thickness_mm = Some(1.5);
        let p = phantom::generate(&spec);
        let marked = p.distractor_mask.iter().filter(|&&m| m == 1).count();
        assert!(p.distractor_mask.iter().all(|&m| m <= 1));
        if p.info.distractors.is_empty() {
            assert_eq!(marked, 0, "seed {seed}: no distractors, nothing marked");
            continue;
        }
        assert!(
            marked > 0,
            "seed {seed}: {} distractors, none marked",
            p.info.distractors.len()
        );
        let (nz, ny, nx) = p.volume.dims();
        for d in &p.info.distractors {
            let c = p.volume.geometry.patient_to_index(d.center_mm);
            let [z, y, x] = c.map(|v| v.round() as i64);
            if z < 1
                || y < 1
                || x < 1
                || z + 1 >= nz as i64
                || y + 1 >= ny as i64
                || x + 1 >= nx as i64
            {
                continue; // outside the scanned range
            }
            // The centre voxel or a neighbour (a thin wall plaque's centre can fall between
            // voxels) is marked.
            let near = (-1..=1).any(|dz| {
                (-1..=1).any(|dy| {
                    (-1..=1).any(|dx| {
                        let i = [(z + dz) as usize, (y + dy) as usize, (x + dx) as usize];
                        p.distractor_mask[i] == 1
                    })
                })
            });
            assert!(near, "seed {seed}: {:?} at {c:?} not marked", d.kind);
            checked += 1;
        }
        // Mostly calcium-bright (edges are partial volume).
        let mut hu: Vec<i16> = p
            .volume
            .hu
            .iter()
            .zip(p.distractor_mask.iter())
            .filter(|(_, &m)| m == 1)
            .map(|(&v, _)| v)
            .collect();
        hu.sort_unstable();
        assert!(
            hu[hu.len() / 2] >= 130,
            "seed {seed}: median HU {}",
            hu[hu.len() / 2]
        );
        // The truth is the lesion mask's score alone, as before.
        let rescored = score::score(
            p.volume.hu.view(),
            p.lesion_labels.view(),
            p.volume.geometry.spacing,
        );
        assert_eq!(rescored.agatston_total, p.truth.agatston_total);
    }
    assert!(
        checked >= 4,
        "only {checked} distractors inside the scanned range"
    );
}

#[test]
fn burden_none_scores_zero_but_fools_a_threshold() {
    for seed in [1u64, 2, 3] {
        let mut spec = PhantomSpec::new(seed, Burden::None);
        spec.thickness_mm = Some(3.0);
        let p = phantom::generate(&spec);
        assert_eq!(p.truth.agatston_total, 0.0, "seed {seed}");
        assert!(p.lesion_labels.iter().all(|&l| l == 0));
        // A threshold-only method (mask of all ones) finds calcium: bone, distractors, noise.
        let ones = Array3::from_elem(p.volume.hu.dim(), 1u8);
        let naive = score::score(p.volume.hu.view(), ones.view(), p.volume.geometry.spacing);
        assert!(naive.agatston_total > 0.0);
        // Within the heart, too (distractors and noise near the coronaries).
        let in_heart = score::score(
            p.volume.hu.view(),
            p.heart_mask.view(),
            p.volume.geometry.spacing,
        );
        let n_heart = p.heart_mask.iter().filter(|&&m| m == 1).count();
        assert!(n_heart > 10_000, "heart mask too small: {n_heart}");
        let _ = in_heart;
    }
}

#[test]
fn every_burden_lands_in_its_category() {
    for burden in [Burden::Low, Burden::Moderate, Burden::High] {
        for seed in [21u64, 22, 23] {
            let mut spec = PhantomSpec::new(seed, burden);
            spec.thickness_mm = Some([3.0, 2.5, 1.5][(seed % 3) as usize]);
            let p = phantom::generate(&spec);
            let t = p.truth.agatston_total;
            assert!(burden.contains(t), "{burden:?} seed {seed}: total {t}");
            assert!(!p.info.plaques.is_empty());
            // Truth labels only where plaques are, and those are inside the heart mask.
            let labelled: Vec<_> = p
                .lesion_labels
                .indexed_iter()
                .filter(|(_, &l)| l > 0)
                .collect();
            assert!(!labelled.is_empty());
            let inside = labelled
                .iter()
                .filter(|(i, _)| p.heart_mask[*i] == 1)
                .count();
            assert!(
                inside * 100 >= labelled.len() * 95,
                "{inside}/{}",
                labelled.len()
            );
            // Truth is the reference score on the mask, by construction.
            let again = score::score(
                p.volume.hu.view(),
                p.lesion_labels.view(),
                p.volume.geometry.spacing,
            );
            assert_eq!(again, p.truth);
        }
    }
}

/// Reads every image file of a written study back into an HU volume sorted by z.
fn read_back(dir: &Path, series_uid: &str) -> (Vec<(f64, Vec<i16>)>, usize) {
    let mut slices = Vec::new();
    let mut localizers = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|s| s.to_str()) != Some("dcm") {
            continue;
        }
        let obj = dicom_object::open_file(&path).unwrap();
        let itype = obj
            .element(tags::IMAGE_TYPE)
            .unwrap()
            .to_multi_str()
            .unwrap()
            .to_vec();
        let series = obj
            .element(tags::SERIES_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string();
        if itype.iter().any(|s| s == "LOCALIZER") {
            assert_ne!(series, series_uid);
            localizers += 1;
            continue;
        }
        assert_eq!(series, series_uid);
        let pr: u16 = obj
            .element(tags::PIXEL_REPRESENTATION)
            .unwrap()
            .to_int()
            .unwrap();
        let intercept: f64 = obj
            .element(tags::RESCALE_INTERCEPT)
            .unwrap()
            .to_float64()
            .unwrap();
        let slope: f64 = obj
            .element(tags::RESCALE_SLOPE)
            .unwrap()
            .to_float64()
            .unwrap();
        let z = obj
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap()[2];
        let dec = obj.decode_pixel_data().unwrap();
        let raw = dec.data();
        let hu: Vec<i16> = raw
            .chunks_exact(2)
            .map(|b| {
                let v = if pr == 1 {
                    i16::from_le_bytes([b[0], b[1]]) as f64
                } else {
                    u16::from_le_bytes([b[0], b[1]]) as f64
                };
                (v * slope + intercept).round() as i16
            })
            .collect();
        slices.push((z, hu));
    }
    slices.sort_by(|a, b| a.0.total_cmp(&b.0));
    (slices, localizers)
}

#[test]
fn written_study_reads_back_exactly_for_every_syntax_and_sign() {
    for (n, ts) in TransferSyntaxChoice::ALL.into_iter().enumerate() {
        for signed in [true, false] {
            let mut spec = PhantomSpec::new(40 + n as u64, Burden::Low);
            spec.slices = Some(4);
            spec.transfer_syntax = Some(ts);
            spec.signed = Some(signed);
            let p = phantom::generate(&spec);
            let dir = tempfile::tempdir().unwrap();
            let files = phantom::write_study(&p, dir.path()).unwrap();
            assert_eq!(files.len(), 4 + 2, "4 slices + localizer + truth.json");
            let (slices, localizers) = read_back(dir.path(), &p.volume.meta.series_instance_uid);
            assert_eq!(localizers, 1);
            assert_eq!(slices.len(), 4);
            for (k, (z, hu)) in slices.iter().enumerate() {
                let want = p.volume.geometry.index_to_patient(k as f64, 0.0, 0.0)[2];
                assert!((z - want).abs() < 1e-3);
                let ours = p.volume.hu.index_axis(ndarray::Axis(0), k);
                assert!(
                    ours.iter().zip(hu).all(|(a, b)| a == b),
                    "{ts:?} signed={signed} slice {k} differs"
                );
            }
            let truth: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.path().join("truth.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(
                truth["series_instance_uid"],
                p.volume.meta.series_instance_uid.as_str()
            );
            assert!(
                (truth["agatston_total"].as_f64().unwrap() - p.truth.agatston_total).abs() < 1e-9
            );
            assert_eq!(truth["phantom"]["seed"], 40 + n as u64);
        }
    }
}

#[test]
fn dciodvfy_finds_no_errors() {
    let tool = Path::new("/usr/bin/dciodvfy");
    if !tool.exists() {
        eprintln!("skipped: /usr/bin/dciodvfy is not installed");
        return;
    }
    for ts in [
        TransferSyntaxChoice::Explicit,
        TransferSyntaxChoice::Rle,
        TransferSyntaxChoice::JpegLs,
    ] {
        let mut spec = PhantomSpec::new(5, Burden::Moderate);
        spec.slices = Some(2);
        spec.transfer_syntax = Some(ts);
        let p = phantom::generate(&spec);
        let dir = tempfile::tempdir().unwrap();
        let files = phantom::write_study(&p, dir.path()).unwrap();
        for f in files
            .iter()
            .filter(|f| f.extension().and_then(|s| s.to_str()) == Some("dcm"))
        {
            let out = std::process::Command::new(tool).arg(f).output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
            assert!(errors.is_empty(), "{ts:?} {}:\n{text}", f.display());
        }
    }
}

fn img_put(img: &mut image::RgbImage, x: u32, y: u32, px: [u8; 3]) {
    img.put_pixel(x, y, image::Rgb(px));
}

/// Writes PNGs of a few slices to /tmp/phantom_png (window −200..400) for looking at.
/// `cargo test --release -p cacd --test phantom -- --ignored dump_pngs --nocapture`
#[test]
#[ignore]
fn dump_pngs() {
    let out = Path::new("/tmp/phantom_png");
    std::fs::create_dir_all(out).unwrap();
    let seeds: Vec<u64> = std::env::var("PHANTOM_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    for seed in seeds {
        let mut spec = PhantomSpec::new(seed, Burden::High);
        spec.thickness_mm = Some(1.5);
        let t0 = std::time::Instant::now();
        let p = phantom::generate(&spec);
        println!(
            "seed {seed}: {:?} in {:?}; truth {:.1}; info {:?}",
            p.volume.dims(),
            t0.elapsed(),
            p.truth.agatston_total,
            p.info.plaques.len()
        );
        let (nz, ny, nx) = p.volume.dims();
        // Slices: heart centre, and the slice with most truth voxels.
        let hz = p.volume.geometry.patient_to_index(p.info.heart_center_mm)[0].round() as usize;
        let best = (0..nz)
            .max_by_key(|&k| {
                p.lesion_labels
                    .index_axis(ndarray::Axis(0), k)
                    .iter()
                    .filter(|&&l| l > 0)
                    .count()
            })
            .unwrap();
        for (name, k) in [
            ("heart", hz.min(nz - 1)),
            ("plaque", best),
            ("top", nz * 9 / 10),
            ("low", nz / 8),
        ] {
            let mut img = image::RgbImage::new(nx as u32, ny as u32);
            for y in 0..ny {
                for x in 0..nx {
                    let v = p.volume.hu[[k, y, x]] as f32;
                    let g = (((v + 200.0) / 600.0).clamp(0.0, 1.0) * 255.0) as u8;
                    let px = if p.lesion_labels[[k, y, x]] > 0 && x % 2 == 0 {
                        [255, 0, 0]
                    } else {
                        [g, g, g]
                    };
                    img.put_pixel(x as u32, y as u32, image::Rgb(px));
                }
            }
            img.save(out.join(format!("s{seed}_{name}.png"))).unwrap();
        }
        // Contact sheet: 12 crops (200×200 px) round the heart, top to bottom.
        let hc = p.volume.geometry.patient_to_index(p.info.heart_center_mm);
        let (cy, cx) = (hc[1].round() as i64, hc[2].round() as i64);
        let mut sheet = image::RgbImage::new(800, 600);
        let lo = (0..nz)
            .find(|&k| {
                p.heart_mask
                    .index_axis(ndarray::Axis(0), k)
                    .iter()
                    .any(|&m| m > 0)
            })
            .unwrap_or(0);
        let hi = (0..nz)
            .rev()
            .find(|&k| {
                p.heart_mask
                    .index_axis(ndarray::Axis(0), k)
                    .iter()
                    .any(|&m| m > 0)
            })
            .unwrap_or(nz - 1);
        for t in 0..12usize {
            let k = hi - (hi - lo) * t / 11;
            for yy in 0..200i64 {
                for xx in 0..200i64 {
                    let (y, x) = (cy - 100 + yy, cx - 100 + xx);
                    if y < 0 || x < 0 || y >= ny as i64 || x >= nx as i64 {
                        continue;
                    }
                    let (y, x) = (y as usize, x as usize);
                    let v = p.volume.hu[[k, y, x]] as f32;
                    let g = (((v + 200.0) / 600.0).clamp(0.0, 1.0) * 255.0) as u8;
                    let px = match p.lesion_labels[[k, y, x]] {
                        0 => [g, g, g],
                        1 => [255, 255, 0],
                        2 => [255, 0, 0],
                        3 => [0, 255, 0],
                        _ => [0, 128, 255],
                    };
                    img_put(
                        &mut sheet,
                        (t % 4) as u32 * 200 + xx as u32,
                        (t / 4) as u32 * 200 + yy as u32,
                        px,
                    );
                }
            }
        }
        sheet.save(out.join(format!("s{seed}_sheet.png"))).unwrap();
        // Coronal through the heart centre.
        let hy = p.volume.geometry.patient_to_index(p.info.heart_center_mm)[1].round() as usize;
        let mut img = image::GrayImage::new(nx as u32, nz as u32);
        for z in 0..nz {
            for x in 0..nx {
                let v = p.volume.hu[[nz - 1 - z, hy.min(ny - 1), x]] as f32;
                img.put_pixel(
                    x as u32,
                    z as u32,
                    image::Luma([(((v + 200.0) / 600.0).clamp(0.0, 1.0) * 255.0) as u8]),
                );
            }
        }
        img.save(out.join(format!("s{seed}_coronal.png"))).unwrap();
    }
}

#[test]
fn cli_writes_a_study_and_truth() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    phantom::run(phantom::PhantomArgs {
        out: out.clone(),
        seed: 9,
        burden: Burden::Low,
        thickness: Some(3.0),
        slices: Some(5),
        transfer_syntax: Some(TransferSyntaxChoice::Deflate),
        signed: false,
        unsigned: true,
        no_localizer: true,
    })
    .unwrap();
    let dcm = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("IM_")
        })
        .count();
    assert_eq!(dcm, 5);
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("truth.json")).unwrap()).unwrap();
    assert_eq!(truth["phantom"]["transfer_syntax"], "deflate");
    assert_eq!(truth["phantom"]["signed"], false);
    assert!(truth["risk_category"].is_string() && truth["cac_drs"].is_string());
    // Bad input is refused with a reason, not a panic.
    let err = phantom::run(phantom::PhantomArgs {
        out,
        seed: 1,
        burden: Burden::None,
        thickness: Some(0.0),
        slices: None,
        transfer_syntax: None,
        signed: false,
        unsigned: false,
        no_localizer: false,
    });
    assert!(err.is_err());
}

/// `cargo test --release -p cacd --test phantom -- --ignored timing --nocapture`
#[test]
#[ignore]
fn timing_512x512x200() {
    let mut spec = PhantomSpec::new(3, Burden::Moderate);
    spec.thickness_mm = Some(1.0);
    spec.slices = Some(200);
    let t0 = std::time::Instant::now();
    let p = phantom::generate(&spec);
    println!(
        "512x512x{}: {:?} (calibration iterations {})",
        p.volume.dims().0,
        t0.elapsed(),
        p.info.calibration_iterations
    );
}
