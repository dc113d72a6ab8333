//! `edgeguard enroll` as a process on a free port, a fleet CA made by the real `openssl` CLI,
//! and a device played by the real `openssl req` (its key and CSR) and the real `curl`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::envoy::metric_value;
use crate::http::{self, Resp};
use crate::process::{free_port, Proc};
use crate::tools;

/// The admin token the tests run with (the service needs at least 32 bytes).
pub const ADMIN_TOKEN: &str = "enroll-test-admin-token-0123456789abcdef";
pub const TRUST_DOMAIN: &str = "edge.example";

/// Runs a command, panicking with its output when it fails; its standard output.
pub fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fleet CA made with `openssl req -x509` (EC P-256, basicConstraints CA:TRUE, keyUsage
/// keyCertSign): `ca.pem` and `ca.key` (PKCS#8) in `dir`.
pub struct TestCa {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn make(dir: &Path, name: &str) -> TestCa {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        run(
            "openssl req -x509 (CA)",
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-days", "30", "-subj"])
                .arg(format!("/CN={name} fleet CA"))
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        TestCa { cert, key }
    }
}

/// A device: its key and CSR from `openssl req -new` (EC P-256 unless told otherwise).
pub struct TestDevice {
    pub key: PathBuf,
    pub csr: PathBuf,
    pub cert: PathBuf,
}

impl TestDevice {
    /// `openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=<cn>`.
    pub fn new(dir: &Path, name: &str, cn: &str) -> TestDevice {
        TestDevice::with_key(
            dir,
            name,
            cn,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            &[],
        )
    }

    /// `openssl req -new <key_args> -nodes -subj /CN=<cn> <extra>`.
    pub fn with_key(
        dir: &Path,
        name: &str,
        cn: &str,
        key_args: &[&str],
        extra: &[&str],
    ) -> TestDevice {
        let d = TestDevice {
            key: dir.join(format!("{name}.key")),
            csr: dir.join(format!("{name}.csr")),
            cert: dir.join(format!("{name}.pem")),
        };
        run(
            "openssl req -new (device CSR)",
            Command::new("openssl")
                .args(["req", "-new"])
                .args(key_args)
                .args(["-nodes", "-subj"])
                .arg(format!("/CN={cn}"))
                .args(extra)
                .arg("-keyout")
                .arg(&d.key)
                .arg("-out")
                .arg(&d.csr),
        );
        d
    }

    /// The certificate's SHA-256 fingerprint as the registry writes it (lowercase hex of the
    /// DER), computed by `openssl x509 -fingerprint -sha256`.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.cert)
    }
}

/// `openssl x509 -noout -fingerprint -sha256` of the first certificate of a PEM file, as
/// lowercase hex without colons.
pub fn fingerprint_of(pem: &Path) -> String {
    let out = run(
        "openssl x509 -fingerprint",
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(pem),
    );
    out.trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_ascii_lowercase()
}

/// `curl` posting the device's CSR with the token, the answer saved to `out`; the HTTP
/// status and the body. A request curl could not complete (connection refused or cut) is
/// status 0 with curl's error as the body.
pub fn curl_enroll(port: u16, token: &str, csr: &Path, out: &Path) -> (u16, String) {
    let _ = std::fs::remove_file(out);
    let result = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(out)
        .args(["-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
        .arg(format!("@{}", csr.display()))
        .arg(format!("http://127.0.0.1:{port}/enroll/v1"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    if !result.status.success() {
        return (0, String::from_utf8_lossy(&result.stderr).into_owned());
    }
    let status = String::from_utf8_lossy(&result.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (status, std::fs::read_to_string(out).unwrap_or_default())
}

/// A running `edgeguard enroll`.
pub struct Enroll {
    pub port: u16,
    pub proc: Proc,
}

impl Enroll {
    /// Command line of `edgeguard enroll --listen 127.0.0.1:<port>` with the CA, the trust
    /// domain and the admin token (environment), plus `args`.
    pub fn command(port: u16, ca: &TestCa, args: &[&str]) -> Command {
        let mut cmd = Command::new(tools::edgeguard());
        cmd.arg("enroll")
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "text",
            ])
            .env("EDGEGUARD_ENROLL_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("EDGEGUARD_CA_CERT", &ca.cert)
            .env("EDGEGUARD_CA_KEY", &ca.key)
            .env("EDGEGUARD_TRUST_DOMAIN", TRUST_DOMAIN)
            .env_remove("POSTGRES_CONNECTION_STRING")
            .env_remove("EDGEGUARD_DEVICES_FILE")
            .args(args);
        cmd
    }

    /// Starts it and waits until `/readyz` answers 200 (panics with the log otherwise).
    pub fn start(ca: &TestCa, args: &[&str], log: &Path) -> Enroll {
        Enroll::start_on(free_port(), ca, args, log)
    }

    pub fn start_on(port: u16, ca: &TestCa, args: &[&str], log: &Path) -> Enroll {
        let mut proc = Proc::spawn("edgeguard enroll", Enroll::command(port, ca, args), log);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !proc.running() {
                panic!("edgeguard enroll exited:\n{}", proc.log_text());
            }
            if http::get(port, "/readyz", &[]).is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "edgeguard enroll not ready after 20 s:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Enroll { port, proc }
    }

    /// An admin request with the admin token.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> Resp {
        self.admin_as(Some(ADMIN_TOKEN), method, path, body)
    }

    /// An admin request with another (or no) bearer token.
    pub fn admin_as(&self, token: Option<&str>, method: &str, path: &str, body: &str) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut h: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            h.push(("authorization", a));
        }
        if !body.is_empty() {
            h.push(("content-type", "application/json"));
        }
        http::request(self.port, method, path, &h, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A new enrollment token (`POST /admin/v1/enrollment-tokens`, must answer 201): the
    /// whole answer.
    pub fn token(&self, account_id: &str, ttl_seconds: u64, uses: u32) -> Value {
        let r = self.admin(
            "POST",
            "/admin/v1/enrollment-tokens",
            &json!({"account_id": account_id, "ttl_seconds": ttl_seconds, "uses": uses})
                .to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()
    }

    /// `GET /admin/v1/devices[?account_id=]`: the list.
    pub fn devices(&self, account_id: Option<&str>) -> Vec<Value> {
        let path = match account_id {
            Some(a) => format!("/admin/v1/devices?account_id={a}"),
            None => "/admin/v1/devices".to_string(),
        };
        let r = self.admin("GET", &path, "");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["devices"].as_array().cloned().unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Resp {
        http::get(self.port, path, &[]).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// A metric of `/metrics` (sum over its label sets).
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.get("/metrics").body, name)
    }

    /// One series of `/metrics`, e.g. `edgeguard_enroll_devices{state="active"}` (0 if absent).
    pub fn series(&self, series: &str) -> f64 {
        self.get("/metrics")
            .body
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// `openssl verify -CAfile <ca> <cert>` succeeds.
pub fn openssl_verifies(ca: &Path, cert: &Path) -> Result<String, String> {
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .arg(cert)
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// `openssl x509 -noout -ext subjectAltName,extendedKeyUsage,basicConstraints -subject -serial -in <cert>`.
pub fn openssl_describe(cert: &Path) -> String {
    run(
        "openssl x509 -ext",
        Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-subject",
                "-serial",
                "-ext",
                "subjectAltName,extendedKeyUsage,basicConstraints",
                "-in",
            ])
            .arg(cert),
    )
}
