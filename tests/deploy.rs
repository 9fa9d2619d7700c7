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

/// A YAML file (one document or several) as JSON values, through PyYAML.
fn yaml_docs(path: &Path) -> Vec<serde_json::Value> {
    let out = run(Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The study folder names `cacd batch` prints with `--list`.
fn listed(out: &std::process::Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn small_archive(dir: &Path, studies: u64) -> PathBuf {
    let root = dir.join("archive");
    std::fs::create_dir_all(&root).unwrap();
    for seed in 1..=studies {
        cacd_e2e::phantom(&root, 100 + seed, 6);
    }
    root
}

/// Shard lists must be disjoint and together equal `all`.
fn assert_partition(shards: &[Vec<String>], all: &[String], what: &str) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in shards.iter().enumerate() {
        for study in s {
            assert!(
                seen.insert(study.clone()),
                "{what}: {study} twice (shard {i})"
            );
        }
    }
    let all: std::collections::BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(seen, all, "{what}: shards do not cover every study");
}

/// The Kubernetes Indexed Job's own command line, with each completion index substituted the
/// way the Job controller does, run against the real binary (with `--list`): every study in
/// exactly one pod's shard.
#[test]
fn k8s_indexed_job_shards_every_study_once() {
    let job = &yaml_docs(&repo().join("deploy/k8s/batch-job.yaml"))[0];
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().expect("completions");
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    let env = |name: &str| {
        c["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("env {name}"))
    };
    assert_eq!(env("SHARDS")["value"], completions.to_string());
    assert_eq!(
        env("JOB_COMPLETION_INDEX")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    );
    let input = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/input")
        .expect("/input mount");
    assert_eq!(input["readOnly"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    let tmp = tempfile::tempdir().unwrap();
    let root = small_archive(tmp.path(), 5);
    let out_dir = tmp.path().join("out");
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let all = listed(&run(Command::new(cacd_bin())
        .arg("batch")
        .arg(&root)
        .args(["--out", "/unused", "--list"])));
    assert_eq!(all.len(), 5);
    let shards: Vec<Vec<String>> = (0..completions)
        .map(|i| {
            let argv: Vec<String> = args
                .iter()
                .map(|a| {
                    a.replace("$(JOB_COMPLETION_INDEX)", &i.to_string())
                        .replace("$(SHARDS)", &completions.to_string())
                        .replace("/input", &root.display().to_string())
                        .replace("/output", &out_dir.display().to_string())
                })
                .collect();
            listed(&run(Command::new(cacd_bin()).args(&argv).arg("--list")))
        })
        .collect();
    assert_partition(&shards, &all, "Indexed Job");

    // The index Job's command line works on a results folder (here an empty one).
    let index = &yaml_docs(&repo().join("deploy/k8s/index-job.yaml"))[0];
    let argv: Vec<String> = index["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/output", &out_dir.display().to_string())
        })
        .collect();
    std::fs::create_dir_all(&out_dir).unwrap();
    let o = run(Command::new(cacd_bin()).args(&argv));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out_dir.join("index.html").is_file() && out_dir.join("summary.csv").is_file());
}

/// The Slurm array script run as Slurm would run each task (its environment), with the real
/// binary and `--list` added: every study in exactly one task's shard, also for an array that
/// starts at 1.
#[test]
fn slurm_array_shards_every_study_once() {
    let script = repo().join("deploy/slurm/cacd-batch.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    let array = text
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --array="))
        .expect("#SBATCH --array=");
    let (lo, hi) = array.split_once('-').expect("A-B");
    let (lo, hi): (u64, u64) = (lo.parse().unwrap(), hi.parse().unwrap());

    let tmp = tempfile::tempdir().unwrap();
    let root = small_archive(tmp.path(), 5);
    let all = listed(&run(Command::new(cacd_bin())
        .arg("batch")
        .arg(&root)
        .args(["--out", "/unused", "--list"])));
    for (lo, hi) in [(lo, hi), (1, 3)] {
        let shards: Vec<Vec<String>> = (lo..=hi)
            .map(|id| {
                listed(&run(Command::new("bash")
                    .arg(&script)
                    .env("CACD_ROOT", &root)
                    .env("CACD_OUT", tmp.path().join("out"))
                    .env("CACD_BIN", cacd_bin())
                    .env("CACD_BATCH_ARGS", "--list")
                    .env("SLURM_ARRAY_TASK_ID", id.to_string())
                    .env("SLURM_ARRAY_TASK_MIN", lo.to_string())
                    .env("SLURM_ARRAY_TASK_MAX", hi.to_string())
                    .env("SLURM_ARRAY_TASK_COUNT", (hi - lo + 1).to_string())
                    .env("SLURM_CPUS_PER_TASK", "1")))
            })
            .collect();
        assert_partition(&shards, &all, &format!("array {lo}-{hi}"));
    }
}

/// The shipped configurations pass `cacd check-config`: the Yocto image's (as installed, and
/// with the TensorRT engine line the Orin build switches on) and the two container images'.
#[test]
fn shipped_configs_pass_check_config() {
    let yocto = repo().join("yocto/meta-cacd/recipes-cacd/cacd/files/cacd.toml");
    let text = std::fs::read_to_string(&yocto).unwrap();
    assert!(
        text.contains("\n# engine = \"tensorrt\""),
        "the line the recipe switches on"
    );
    let tmp = tempfile::tempdir().unwrap();
    let orin = tmp.path().join("cacd-orin.toml");
    // What the recipe's do_install does with sed when PACKAGECONFIG has tensorrt.
    let switched = text
        .replace("\n# engine = \"tensorrt\"\n", "\nengine = \"tensorrt\"\n")
        .replace(
            "\n# ort_dylib = \"/usr/lib/libonnxruntime.so\"\n",
            "\nort_dylib = \"/usr/lib/libonnxruntime.so\"\n",
        );
    assert_eq!(
        switched.matches("\n# ").count() + 2,
        text.matches("\n# ").count(),
        "both lines the recipe switches on are in the file"
    );
    std::fs::write(&orin, switched).unwrap();
    for f in [
        yocto,
        orin,
        repo().join("deploy/container/cacd.toml"),
        repo().join("deploy/container/cacd-gpu.toml"),
    ] {
        let o = run(Command::new(cacd_bin()).arg("check-config").arg(&f));
        assert!(
            o.status.success(),
            "{}: {}{}",
            f.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// What the container images promise, read from the Dockerfiles (no Docker engine here to
/// build them): multi-stage, a numeric non-root user, the models and a config baked in, and a
/// health check on /healthz.
#[test]
fn dockerfiles_are_multi_stage_non_root_with_health_check() {
    for name in ["Dockerfile", "Dockerfile.gpu"] {
        let text = std::fs::read_to_string(repo().join("deploy/container").join(name)).unwrap();
        let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
        assert!(froms >= 2, "{name}: {froms} stages");
        let user = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{name}: no USER"));
        let uid: u32 = user
            .split(':')
            .next()
            .unwrap()
            .parse()
            .expect("numeric USER");
        assert!(uid >= 1000, "{name}: USER {user}");
        assert!(text.contains("COPY models/manifest.toml models/*.onnx /usr/share/cacd/models/"));
        assert!(text.contains("/etc/cacd/cacd.toml"));
        let hc = text
            .split("HEALTHCHECK")
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: no HEALTHCHECK"));
        assert!(hc.lines().take(2).any(|l| l.contains("/healthz")), "{name}");
    }
}

/// JPEG-LS is off in the default build (a fresh machine has no cmake) and on in every build
/// that ships: both container images and the Yocto recipe's PACKAGECONFIG, Orin included.
#[test]
fn every_shipped_build_decodes_jpeg_ls() {
    let cargo = std::fs::read_to_string(repo().join("appliance/Cargo.toml")).unwrap();
    let default = cargo
        .lines()
        .find(|l| l.starts_with("default = "))
        .expect("default features");
    assert!(!default.contains("jpegls"), "{default}");
    for name in ["Dockerfile", "Dockerfile.gpu"] {
        let text = std::fs::read_to_string(repo().join("deploy/container").join(name)).unwrap();
        let build = text
            .lines()
            .find(|l| l.contains("cargo build --release"))
            .unwrap_or_else(|| panic!("{name}: no cargo build"));
        let features = build
            .split("--features ")
            .nth(1)
            .and_then(|f| f.split_whitespace().next())
            .unwrap_or_else(|| panic!("{name}: no --features"));
        assert!(
            features.split(',').any(|f| f == "jpegls"),
            "{name}: {build}"
        );
    }
    let recipe =
        std::fs::read_to_string(repo().join("yocto/meta-cacd/recipes-cacd/cacd/cacd_0.1.0.bb"))
            .unwrap();
    let configs: Vec<&str> = recipe
        .lines()
        .filter(|l| l.starts_with("PACKAGECONFIG") && l.contains("??="))
        .collect();
    assert!(configs.len() >= 2, "{configs:?}");
    for line in configs {
        assert!(line.contains("jpegls"), "{line}");
    }
}
