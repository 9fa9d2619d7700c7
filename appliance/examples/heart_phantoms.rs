//! The heart stage on phantoms: Dice of the outline against each phantom's pericardial mask,
//! its coverage flags and the gate's refusals (a development aid).
//!
//!     cargo run --release --example heart_phantoms -- FIRST_SEED COUNT

use cacd::phantom::{self, Burden, PhantomSpec};

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or(0))
        .collect();
    let (first, count) = (
        args.first().copied().unwrap_or(1),
        args.get(1).copied().unwrap_or(20),
    );
    let burdens = [Burden::None, Burden::Low, Burden::Moderate, Burden::High];
    let mut dices = Vec::new();
    for seed in first..first + count {
        let spec = PhantomSpec::new(seed, burdens[(seed % 4) as usize]);
        let ph = phantom::generate(&spec);
        let vol = &ph.volume;
        let g = &vol.geometry;
        let res = cacd::heart::outline(vol);
        let verdict = cacd::gate::check(vol, &res);
        let Ok(h) = res else {
            println!("{seed}: no heart ({:?}) {:?}", res.err(), verdict.refusal);
            dices.push(0.0);
            continue;
        };
        let (mut inter, mut a, mut b, mut truth_in_gate, mut truth) =
            (0usize, 0usize, 0usize, 0usize, 0usize);
        for ((z, y, x), &m) in ph.heart_mask.indexed_iter() {
            let p = g.index_to_patient(z as f64, y as f64, x as f64);
            let ours = h.contains(p);
            a += ours as usize;
            b += (m != 0) as usize;
            inter += (ours && m != 0) as usize;
        }
        for ((z, y, x), &l) in ph.lesion_labels.indexed_iter() {
            if l != 0 {
                truth += 1;
                truth_in_gate +=
                    h.in_gate(g.index_to_patient(z as f64, y as f64, x as f64)) as usize;
            }
        }
        let dice = 2.0 * inter as f64 / (a + b).max(1) as f64;
        dices.push(dice);
        println!(
            "{seed}: dice {dice:.2} ours {:.0} ml, lesion voxels in gate {truth_in_gate}/{truth}, coverage {:?}, refusal {:?}",
            h.volume_ml, h.coverage, verdict.refusal.map(|r| r.0)
        );
    }
    dices.sort_by(f64::total_cmp);
    println!(
        "median dice {:.3}, min {:.3}",
        dices[dices.len() / 2],
        dices[0]
    );
    Ok(())
}
