//! The systemd files in deploy/systemd as systemd itself reads them: `systemd-analyze verify`
//! of the real units (cacd.service, var-lib-cacd.mount; no error, no warning) in a root where
//! ExecStart is the built binary, the `systemd-analyze security` exposure as recorded in
//! deploy/README.md, and the sysusers.d snippet applied by `systemd-sysusers`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cacd_e2e::{cacd_bin, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit_file() -> PathBuf {
    repo().join("deploy/systemd/cacd.service")
}

/// A file system root for `systemd-analyze verify --root`: the host's unit directory (for
/// the targets the unit names), `unit` as /etc/systemd/system/cacd.service, and the built
/// binary as /usr/bin/cacd (the ExecStart path, which verify checks is executable). It lives
/// under target/ so the binary can be hard-linked rather than copied.
fn verify_root(unit: &str) -> tempfile::TempDir {
    let bin = cacd_bin();
    let scratch = bin
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("tmp"))
        .expect("target dir");
    std::fs::create_dir_all(&scratch).unwrap();
    let root = tempfile::Builder::new()
        .prefix("verify-")
        .tempdir_in(&scratch)
        .unwrap();
    let r = root.path();
    for d in ["usr/bin", "usr/lib/systemd", "etc/systemd/system"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    let st = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(st.success(), "copying the host's unit directory");
    let dest = r.join("usr/bin/cacd");
    if std::fs::hard_link(&bin, &dest).is_err() {
        std::fs::copy(&bin, &dest).unwrap();
    }
    std::fs::write(r.join("etc/systemd/system/cacd.service"), unit).unwrap();
    std::fs::copy(
        repo().join("deploy/systemd/var-lib-cacd.mount"),
        r.join("etc/systemd/system/var-lib-cacd.mount"),
    )
    .unwrap();
    root
}

/// (exit ok, everything verify printed).
fn verify(unit: &str) -> (bool, String) {
    let root = verify_root(unit);
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(["cacd.service", "var-lib-cacd.mount"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn unit_passes_systemd_analyze_verify_without_a_warning() {
    let unit = std::fs::read_to_string(unit_file()).unwrap();
    let (ok, text) = verify(&unit);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );

    // The check can fail: a misspelt key and a bad value are reported.
    let broken = unit
        .replace("ProtectHome=yes", "ProtectHome=yes\nProtecHome=yes")
        .replace("Restart=on-failure", "Restart=sometimes");
    let (_, text) = verify(&broken);
    assert!(text.contains("Unknown key 'ProtecHome'"), "{text}");
    assert!(text.contains("restart specifier"), "{text}");
}

#[test]
fn unit_has_the_required_settings() {
    let unit = std::fs::read_to_string(unit_file()).unwrap();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "User=cacd",
        "StateDirectory=cacd",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "DevicePolicy=closed",
    ] {
        assert!(has(line), "cacd.service lacks {line:?}");
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
    assert!(unit
        .lines()
        .any(|l| l.starts_with("DeviceAllow=/dev/nvmap")));
}

#[test]
fn exposure_score_is_the_one_in_the_readme() {
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit_file()));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for cacd.service:"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable: {line}"));
    assert!(score <= 2.5, "exposure {score} (was 1.8): {line}");
    let readme = std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
    assert!(
        readme.contains(&format!("exposure level **{score:.1}**")),
        "deploy/README.md must record the exposure level {score:.1}"
    );
}

#[test]
fn sysusers_snippet_creates_the_user() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let out = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(
            repo()
                .join("deploy/systemd/cacd.sysusers")
                .canonicalize()
                .unwrap(),
        ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("cacd:") && l.ends_with(":/var/lib/cacd:/usr/sbin/nologin")),
        "{passwd}"
    );
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("video:") && l.ends_with("cacd")),
        "{group}"
    );
}
