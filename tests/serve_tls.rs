//! `cacd serve` with TLS on (rustls): DCMTK's echoscu and storescu over TLS with a client
//! certificate from the configured CA get through; plain TCP and a certificate from another
//! CA are refused, and the daemon keeps serving. Certificates are made by `openssl` in the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cacd_e2e::*;

const ECHOSCU: &str = "/usr/bin/echoscu";
const STORESCU: &str = "/usr/bin/storescu";

fn openssl(dir: &Path, args: &[&str]) {
    let o = run(Command::new("openssl").current_dir(dir).args(args));
    assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
}

/// A CA and a certificate it signs for `cn` (with localhost/127.0.0.1 as subject alt names).
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.crt"),
            "-subj",
            &format!("/CN={name} test CA"),
        ],
    );
}

fn leaf(dir: &Path, ca_name: &str, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca_name}-ca.crt"),
            "-CAkey",
            &format!("{ca_name}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

fn tls_args(dir: &Path, client: &str) -> Vec<String> {
    vec![
        "+tls".into(),
        dir.join(format!("{client}.key")).display().to_string(),
        dir.join(format!("{client}.crt")).display().to_string(),
        "+cf".into(),
        dir.join("site-ca.crt").display().to_string(),
    ]
}

fn echo(port: u16, extra: &[String]) -> std::process::Output {
    run(Command::new(ECHOSCU)
        .args(extra)
        .args([
            "-to",
            "10",
            "-ta",
            "10",
            "-aet",
            "CT01",
            "-aec",
            "CACD",
            "127.0.0.1",
        ])
        .arg(port.to_string()))
}

#[test]
fn tls_with_client_certificates_admits_the_site_and_refuses_plain_tcp_and_strangers() {
    if !Path::new(ECHOSCU).exists() || Command::new("openssl").arg("version").output().is_err() {
        println!("SKIP: DCMTK or openssl not installed (scripts/install-test-deps)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, "site");
    leaf(dir, "site", "server");
    leaf(dir, "site", "scanner");
    ca(dir, "rogue");
    leaf(dir, "rogue", "intruder");

    let port = free_port();
    let data = dir.join("data");
    let config: PathBuf = dir.join("cacd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
ae_title = "CACD"
listen = "127.0.0.1:{port}"
status = "127.0.0.1:{status}"
data_dir = "{data}"
quiet_period_s = 600.0
[tls]
enabled = true
cert = "{d}/server.crt"
key = "{d}/server.key"
client_ca = "{d}/site-ca.crt"
handshake_timeout_s = 5.0
[[peer]]
ae = "CT01"
host = "127.0.0.1"
{TEST_RECEIVE}
"#,
            status = free_port(),
            data = data.display(),
            d = dir.display()
        ),
    )
    .unwrap();
    let check = run(Command::new(cacd_bin()).arg("check-config").arg(&config));
    assert!(check.status.success(), "check-config: {}", text(&check));
    let serve = Serve::start(&config, port, &data);

    // The site's scanner, over TLS with its certificate: C-ECHO succeeds.
    let ok = echo(port, &tls_args(dir, "scanner"));
    assert!(ok.status.success(), "TLS echo refused: {}", text(&ok));

    // Plain TCP to a TLS-only port: no association.
    let plain = echo(port, &[]);
    assert!(
        !plain.status.success(),
        "plain TCP got through: {}",
        text(&plain)
    );

    // A certificate from another CA: the handshake fails.
    // It trusts the server's CA (tls_args adds it), so the failure is the server refusing
    // the client, not the reverse.
    let rogue = tls_args(dir, "intruder");
    let bad = echo(port, &rogue);
    assert!(
        !bad.status.success(),
        "a stranger's certificate got through: {}",
        text(&bad)
    );

    // Still serving after both refusals: a study over TLS is stored.
    let study = phantom(&dir.join("study"), 4242, 8);
    let files = dicom_files(&study);
    let st = run(Command::new(STORESCU)
        .args(tls_args(dir, "scanner"))
        .args(["-aet", "CT01", "-aec", "CACD", "127.0.0.1"])
        .arg(port.to_string())
        .args(&files));
    assert!(st.status.success(), "TLS storescu: {}", text(&st));
    let stored = wait_until(Duration::from_secs(10), || {
        dicom_files_below(&data.join("studies")).len() == files.len()
    });
    assert!(
        stored,
        "{} instances sent, stored {:?}",
        files.len(),
        dicom_files_below(&data.join("studies")).len()
    );
    serve.terminate();
}
