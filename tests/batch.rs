//! `cacd batch` end to end with the real binary: shards of any N are disjoint and cover every
//! study, a batch killed with SIGKILL resumes without redoing finished studies, shards write
//! into one output folder whose dashboard covers them all, and the dashboard renders and
//! filters in headless Chromium.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use cacd_e2e::{cacd_bin, phantom, run};

/// `cacd batch ROOT --list --shard I/N`: the study folder names of that shard.
fn list(root: &Path, i: u64, n: u64) -> Vec<String> {
    let out = run(Command::new(cacd_bin())
        .arg("batch")
        .arg(root)
        .args(["--out", "/nonexistent-not-written", "--list"])
        .args(["--shard", &format!("{i}/{n}")]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn shards_of_any_n_are_disjoint_and_cover_every_study() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("archive");
    // Seven small studies, two of them one level deeper (an archive is not flat).
    for seed in 1..=7u64 {
        let parent = if seed % 3 == 0 {
            root.join("site-b").join("2025")
        } else {
            root.join("site-a")
        };
        std::fs::create_dir_all(&parent).unwrap();
        phantom(&parent, seed, 6);
    }
    let all: BTreeSet<String> = list(&root, 0, 1).into_iter().collect();
    assert_eq!(all.len(), 7, "every phantom is one study: {all:?}");
    for n in 2..=5u64 {
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..n {
            for study in list(&root, i, n) {
                if let Some(prev) = seen.insert(study.clone(), i) {
                    panic!("{study} is in shard {prev}/{n} and {i}/{n}");
                }
            }
        }
        let covered: BTreeSet<String> = seen.into_keys().collect();
        assert_eq!(covered, all, "shards of N={n} cover every study");
    }
    // And the same N gives the same split every time (a restarted Job pod scores the same).
    assert_eq!(list(&root, 1, 3), list(&root, 1, 3));
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn batch(root: &Path, out: &Path, shard: &str) -> Command {
    let mut c = Command::new(cacd_bin());
    c.arg("batch")
        .arg(root)
        .arg("--out")
        .arg(out)
        .args(["--shard", shard, "--threads", "2"]);
    c
}

fn csv_rows(p: &Path) -> usize {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(text.starts_with("study,status,agatston_total"), "{text}");
    text.lines().skip(1).filter(|l| !l.is_empty()).count()
}

/// Headless Chromium: the DOM after scripts ran.
fn dump_dom(url: &str, profile: &Path) -> String {
    let out = run(Command::new("/usr/bin/chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom", url]));
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `attr="…"` on the first `<body` tag.
fn body_attr(dom: &str, attr: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let key = format!("{attr}=\"");
    let rest = &body[body.find(&key)? + key.len()..];
    Some(rest[..rest.find('"')?].to_string())
}

#[test]
fn killed_batch_resumes_and_the_dashboard_covers_every_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("archive");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&root).unwrap();
    for (seed, burden) in [(11u64, "none"), (12, "low"), (13, "high")] {
        let st = Command::new(cacd_bin())
            .args(["phantom", "--out"])
            .arg(root.join(format!("s{seed}")))
            .args([
                "--seed",
                &seed.to_string(),
                "--burden",
                burden,
                "--thickness",
                "3",
            ])
            .status()
            .unwrap();
        assert!(st.success());
    }
    // Two shards; the bigger one (≥ 2 of the 3 studies) is the one killed mid-run.
    let shards = [list(&root, 0, 2), list(&root, 1, 2)];
    assert_eq!(shards[0].len() + shards[1].len(), 3);
    let (big, small) = if shards[0].len() >= 2 { (0, 1) } else { (1, 0) };

    if !shards[small].is_empty() {
        let o = run(&mut batch(&root, &out, &format!("{small}/2")));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    // Kill the big shard (SIGKILL: no clean-up of any kind) once its first study is done.
    let mut child = batch(&root, &out, &format!("{big}/2"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let result_of = |s: &String| out.join(s).join("result.json");
    let t0 = Instant::now();
    loop {
        if shards[big].iter().any(|s| result_of(s).is_file()) {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("batch ended ({st}) before it could be killed");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no study finished in 300 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished: Vec<&String> = shards[big]
        .iter()
        .filter(|s| result_of(s).is_file())
        .collect();
    assert!(
        finished.len() < shards[big].len(),
        "every study finished before the kill; the test shows nothing"
    );
    let before: Vec<(PathBuf, SystemTime)> = finished
        .iter()
        .flat_map(|s| ["result.json", "summary.dcm", "sr.dcm"].map(|f| out.join(s).join(f)))
        .map(|p| (p.clone(), mtime(&p)))
        .collect();

    std::thread::sleep(Duration::from_millis(1100)); // coarse mtime file systems
    let o = run(&mut batch(&root, &out, &format!("{big}/2")));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let expect = format!(
        "{} scored, 0 rejected, {} already done",
        shards[big].len() - finished.len(),
        finished.len()
    );
    assert!(stdout.contains(&expect), "want {expect:?} in {stdout}");
    for (p, t) in &before {
        assert_eq!(
            mtime(p),
            *t,
            "{} was rewritten by the resumed run",
            p.display()
        );
    }
    for s in shards.iter().flatten() {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(result_of(s)).unwrap()).unwrap();
        assert_eq!(r["status"], "scored", "{s}: {r}");
        assert!(
            out.join(s).join("thumb.png").is_file(),
            "{s} has a thumbnail"
        );
    }

    // The last shard's dashboard and merged CSV cover both shards.
    assert_eq!(
        csv_rows(&out.join("summary-0-of-2.csv")) + csv_rows(&out.join("summary-1-of-2.csv")),
        3
    );
    assert_eq!(csv_rows(&out.join("summary.csv")), 3);
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(html.matches("<article class=\"card\"").count(), 3);

    // --index-only rebuilds the same page from the results alone.
    std::fs::remove_file(out.join("index.html")).unwrap();
    std::fs::remove_file(out.join("summary.csv")).unwrap();
    let o = run(Command::new(cacd_bin())
        .args(["batch", "--index-only", "--out"])
        .arg(&out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(csv_rows(&out.join("summary.csv")), 3);

    // In a browser: three cards with their thumbnails, the filter script ran, and a category
    // filter from the URL hides the others.
    let profile = tmp.path().join("chromium-profile");
    let url = format!("file://{}", out.join("index.html").display());
    let dom = dump_dom(&url, &profile);
    assert_eq!(dom.matches("<article class=\"card\"").count(), 3, "{dom}");
    assert_eq!(dom.matches("thumb.png\" loading=\"lazy\"").count(), 3);
    assert_eq!(
        body_attr(&dom, "data-ready").as_deref(),
        Some("1"),
        "script ran"
    );
    assert_eq!(body_attr(&dom, "data-shown").as_deref(), Some("3"));
    assert!(dom.contains("id=\"chart-category\"") && dom.contains("id=\"chart-agatston\""));

    let categories: Vec<String> = dom
        .match_indices("<article class=\"card\" data-cat=\"")
        .map(|(i, m)| {
            let rest = &dom[i + m.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect();
    let pick = &categories[0];
    let want = categories.iter().filter(|c| *c == pick).count();
    let dom = dump_dom(&format!("{url}#cat={pick}"), &profile);
    assert_eq!(body_attr(&dom, "data-shown"), Some(want.to_string()));
    assert_eq!(dom.matches("hidden=\"\"").count(), 3 - want, "{dom}");

    // A screenshot to look at (kept under target/ for a person to open).
    let shot_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&shot_dir).unwrap();
    let shot = shot_dir.join("batch-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let o = run(Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--window-size=1280,1100", "--virtual-time-budget=5000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 50_000,
        "screenshot {} bytes",
        png.len()
    );
}
