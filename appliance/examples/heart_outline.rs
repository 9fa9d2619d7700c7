//! Outlines the heart of one study and writes the outline as NIfTI (a development aid).
//!
//!     cargo run --release --example heart_outline -- STUDY_DIR OUT.nii

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: heart_outline STUDY_DIR OUT.nii");
    let vol = cacd::assemble::assemble_paths(&[args[1].clone().into()])?;
    let t = std::time::Instant::now();
    let heart = cacd::heart::outline(&vol)?;
    println!(
        "heart {:.0} ml, blood pool {:.0} HU, centre {:?}, extent {:?}, coverage {:?}, {} ms",
        heart.volume_ml,
        heart.blood_pool_hu,
        heart.centre_mm.map(|v| v.round()),
        heart.extent_mm.map(|v| v.round()),
        heart.coverage,
        t.elapsed().as_millis()
    );
    std::fs::write(&args[2], heart.to_nifti())?;
    Ok(())
}
