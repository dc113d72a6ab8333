//! Mutual TLS with real tools: certificates made by the `openssl` CLI (a CA, a server
//! certificate for 127.0.0.1/localhost, client certificates), the RFC 8705 thumbprint of a
//! certificate, and the real `curl` as the client presenting one. Envoy's side is
//! [`crate::envoy::EnvoyConfig::with_mtls`].

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub use crate::enroll::TestCa;
use crate::enroll::{run, TestDevice};
use crate::keys::b64;

/// A certificate and its private key (PEM files).
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertKey {
    /// The certificate's DER (`openssl x509 -outform der`).
    pub fn der(&self) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(["x509", "-outform", "der", "-in"])
            .arg(&self.cert)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl x509: {e}"));
        assert!(
            out.status.success(),
            "openssl x509 -outform der: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The RFC 8705 `cnf.x5t#S256` of the certificate: base64url (unpadded) of the SHA-256 of
    /// its DER.
    pub fn x5t_s256(&self) -> String {
        b64(&Sha256::digest(self.der()))
    }
}

/// Signs `csr` with `ca` (`openssl x509 -req`), adding the extensions in `ext` (config lines).
fn sign(ca: &TestCa, csr: &Path, cert: &Path, ext: &str) {
    let ext_file = cert.with_extension("ext");
    std::fs::write(&ext_file, ext).expect("write extensions");
    run(
        "openssl x509 -req (sign)",
        Command::new("openssl")
            .args(["x509", "-req", "-days", "30", "-sha256", "-in"])
            .arg(csr)
            .arg("-CA")
            .arg(&ca.cert)
            .arg("-CAkey")
            .arg(&ca.key)
            .args(["-set_serial"])
            .arg(format!("0x{:016x}", rand::random::<u64>() >> 1))
            .arg("-extfile")
            .arg(&ext_file)
            .arg("-out")
            .arg(cert),
    );
}

/// A server certificate for `127.0.0.1` and `localhost` signed by `ca` (EC P-256).
pub fn server_cert(dir: &Path, ca: &TestCa, name: &str) -> CertKey {
    let d = TestDevice::new(dir, name, "localhost");
    sign(
        ca,
        &d.csr,
        &d.cert,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    CertKey {
        cert: d.cert,
        key: d.key,
    }
}

/// A client certificate signed by `ca` (EC P-256, `CN=<cn>`, extendedKeyUsage clientAuth,
/// `uri` as a URI SAN when given, e.g. `spiffe://edge.example/device/d1`).
pub fn client_cert(dir: &Path, ca: &TestCa, name: &str, cn: &str, uri: Option<&str>) -> CertKey {
    let d = TestDevice::new(dir, name, cn);
    let mut ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n".to_string();
    if let Some(uri) = uri {
        ext.push_str(&format!("subjectAltName=URI:{uri}\n"));
    }
    sign(ca, &d.csr, &d.cert, &ext);
    CertKey {
        cert: d.cert,
        key: d.key,
    }
}

/// A client certificate signed by `ca` that expired long ago (valid 2020-01-01 to
/// 2020-01-02), made with `openssl ca` (`openssl x509` cannot back-date).
pub fn expired_client_cert(dir: &Path, ca: &TestCa, name: &str) -> CertKey {
    let d = TestDevice::new(dir, name, name);
    let db = dir.join(format!("{name}-ca-db"));
    std::fs::create_dir_all(&db).expect("openssl ca folder");
    std::fs::write(db.join("index.txt"), "").expect("openssl ca index");
    let config = format!(
        "[ca]\ndefault_ca = own\n[own]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}\n\
         certificate = {cert}\nprivate_key = {key}\ndefault_md = sha256\npolicy = any\n\
         unique_subject = no\nrand_serial = yes\n[any]\ncommonName = supplied\n\
         [ext]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = clientAuth\n",
        db = db.display(),
        cert = ca.cert.display(),
        key = ca.key.display(),
    );
    let cnf = db.join("ca.cnf");
    std::fs::write(&cnf, config).expect("openssl ca config");
    run(
        "openssl ca (expired certificate)",
        Command::new("openssl")
            .args(["ca", "-batch", "-notext", "-config"])
            .arg(&cnf)
            .args([
                "-extensions",
                "ext",
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200102000000Z",
                "-in",
            ])
            .arg(&d.csr)
            .arg("-out")
            .arg(&d.cert),
    );
    CertKey {
        cert: d.cert,
        key: d.key,
    }
}

/// A fleet for the tests: the CA, the server certificate Envoy presents, and a second,
/// untrusted CA, all in `dir`.
pub struct Pki {
    pub ca: TestCa,
    pub server: CertKey,
    pub other_ca: TestCa,
}

impl Pki {
    pub fn make(dir: &Path) -> Pki {
        let ca = TestCa::make(dir, "fleet-ca");
        let server = server_cert(dir, &ca, "server");
        let other_ca = TestCa::make(dir, "other-ca");
        Pki {
            ca,
            server,
            other_ca,
        }
    }

    /// A client certificate from the fleet CA.
    pub fn client(&self, dir: &Path, name: &str) -> CertKey {
        client_cert(dir, &self.ca, name, name, None)
    }
}

/// What `curl` got: the HTTP status and body, or curl's failure (exit code and message, e.g.
/// a TLS handshake the server refused).
#[derive(Debug)]
pub enum CurlResult {
    Http { status: u16, body: String },
    Failed { code: i32, stderr: String },
}

impl CurlResult {
    pub fn status(&self) -> Option<u16> {
        match self {
            CurlResult::Http { status, .. } => Some(*status),
            CurlResult::Failed { .. } => None,
        }
    }

    pub fn body(&self) -> &str {
        match self {
            CurlResult::Http { body, .. } => body,
            CurlResult::Failed { stderr, .. } => stderr,
        }
    }
}

/// `curl --cacert <ca> [--cert <client.pem> --key <client.key>] https://127.0.0.1:<port><path>`
/// with `headers`.
pub fn curl(
    port: u16,
    ca: &Path,
    client: Option<&CertKey>,
    path: &str,
    headers: &[(&str, &str)],
) -> CurlResult {
    curl_method(port, ca, client, "GET", path, headers)
}

/// [`curl`] with another method (`curl -X <method>`, no body).
pub fn curl_method(
    port: u16,
    ca: &Path,
    client: Option<&CertKey>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> CurlResult {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-X", method, "--cacert"])
        .arg(ca);
    if let Some(c) = client {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.args(["-w", "\n%{http_code}"])
        .arg(format!("https://127.0.0.1:{port}{path}"));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    if !out.status.success() {
        return CurlResult::Failed {
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    CurlResult::Http {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}
