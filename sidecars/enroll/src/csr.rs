//! The CSR policy: what a device may send.
//!
//! - the CSR parses (PEM `CERTIFICATE REQUEST`, or DER) and its signature verifies with its
//!   own public key (proof of possession of the private key);
//! - the key is strong: RSA of at least 2048 bits, EC on P-256 or P-384, or Ed25519;
//!   anything else (small RSA, other curves, DSA, GOST, unknown) is refused;
//! - it asks for no identity: edgeguard assigns the identity (the device id, the SPIFFE URI),
//!   so a CSR with an extension request (subjectAltName or any other extension), or whose
//!   subject CN looks like a SPIFFE id or a URI, is refused;
//! - the CN, when there is one, is only a label (at most [`MAX_LABEL_CHARS`] printable
//!   characters); the rest of the subject is ignored.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS9_EXTENSION_REQUEST, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The longest CN label kept.
pub const MAX_LABEL_CHARS: usize = 64;

/// The largest CSR read (a 16384-bit RSA CSR is about 5 KiB of PEM).
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// The smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a CSR is refused (all 400s): a stable `error` code and a message for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {message}")]
pub struct CsrRefusal {
    pub error: &'static str,
    pub message: String,
}

fn refuse(error: &'static str, message: impl Into<String>) -> CsrRefusal {
    CsrRefusal {
        error,
        message: message.into(),
    }
}

/// The key of an accepted CSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa(usize),
    P256,
    P384,
    Ed25519,
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::Rsa(bits) => write!(f, "RSA-{bits}"),
            KeyKind::P256 => f.write_str("EC P-256"),
            KeyKind::P384 => f.write_str("EC P-384"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// An accepted CSR: the public key to certify and the label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedCsr {
    /// The DER SubjectPublicKeyInfo, as the device sent it.
    pub spki_der: Vec<u8>,
    pub key: KeyKind,
    /// The subject CN (empty without one).
    pub label: String,
}

/// The DER of a PEM `CERTIFICATE REQUEST` (or `NEW CERTIFICATE REQUEST`), or the bytes as
/// they are when they do not look like PEM.
fn der_of(body: &[u8]) -> Result<Vec<u8>, CsrRefusal> {
    let trimmed = body.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(body.to_vec());
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(trimmed).map_err(|e| {
        refuse(
            "csr_unparsable",
            format!("the body is not a PEM certificate request ({e})"),
        )
    })?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(refuse(
            "csr_unparsable",
            format!(
                "the PEM block is a '{}', not a 'CERTIFICATE REQUEST' (send the CSR, e.g. from `openssl req -new`)",
                pem.label
            ),
        ));
    }
    Ok(pem.contents)
}

fn check_key(csr: &X509CertificationRequest<'_>) -> Result<KeyKind, CsrRefusal> {
    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        return Ok(KeyKind::Ed25519);
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => {
                return Err(refuse(
                    "csr_unparsable",
                    "the RSA public key does not parse",
                ))
            }
        };
        if bits < MIN_RSA_BITS {
            return Err(refuse(
                "weak_key",
                format!("RSA keys must have at least {MIN_RSA_BITS} bits, this one has {bits} (or use EC P-256)"),
            ));
        }
        return Ok(KeyKind::Rsa(bits));
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyKind::P256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyKind::P384),
            Some(c) => Err(refuse(
                "weak_key",
                format!("EC keys must be on P-256 or P-384, not on curve {c}"),
            )),
            None => Err(refuse(
                "weak_key",
                "EC keys must name their curve (P-256 or P-384); explicit curve parameters are refused",
            )),
        };
    }
    Err(refuse(
        "weak_key",
        format!("key type {alg} is not accepted: use EC P-256 or P-384, Ed25519, or RSA of at least {MIN_RSA_BITS} bits"),
    ))
}

/// The CN label; refuses one that claims an identity.
fn label_of(csr: &X509CertificationRequest<'_>) -> Result<String, CsrRefusal> {
    let subject = &csr.certification_request_info.subject;
    let mut label = String::new();
    for (i, cn) in subject.iter_common_name().enumerate() {
        if i > 0 {
            return Err(refuse(
                "identity_requested",
                "edgeguard assigns the identity: the subject may hold at most one CN (a label)",
            ));
        }
        label = cn
            .as_str()
            .map_err(|_| refuse("bad_label", "the subject CN is not a readable string"))?
            .to_string();
    }
    let lower = label.to_ascii_lowercase();
    if lower.contains("spiffe:") || lower.contains("://") {
        return Err(refuse(
            "identity_requested",
            "edgeguard assigns the identity: the subject CN is a label and must not look like a SPIFFE id or a URI",
        ));
    }
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(refuse(
            "bad_label",
            format!("the subject CN (a label) may have at most {MAX_LABEL_CHARS} characters"),
        ));
    }
    if label.chars().any(char::is_control) {
        return Err(refuse(
            "bad_label",
            "the subject CN (a label) must not contain control characters",
        ));
    }
    Ok(label)
}

/// Applies the policy to a request body (PEM or DER CSR).
pub fn check(body: &[u8]) -> Result<AcceptedCsr, CsrRefusal> {
    if body.len() > MAX_CSR_BYTES {
        return Err(refuse(
            "csr_unparsable",
            format!("the CSR is larger than {MAX_CSR_BYTES} bytes"),
        ));
    }
    if body.trim_ascii().is_empty() {
        return Err(refuse(
            "csr_unparsable",
            "the body is empty: send a PEM certificate request (openssl req -new ...)",
        ));
    }
    let der = der_of(body)?;
    let (rest, csr) = X509CertificationRequest::from_der(&der).map_err(|e| {
        refuse(
            "csr_unparsable",
            format!("the body is not a PKCS#10 certificate request ({e})"),
        )
    })?;
    if !rest.is_empty() {
        return Err(refuse(
            "csr_unparsable",
            "trailing bytes after the certificate request",
        ));
    }
    let key = check_key(&csr)?;
    csr.verify_signature().map_err(|e| {
        refuse(
            "csr_bad_signature",
            format!("the CSR's signature does not verify with its public key, so it proves no possession of the private key ({e})"),
        )
    })?;
    if csr
        .certification_request_info
        .iter_attributes()
        .any(|a| a.oid == OID_PKCS9_EXTENSION_REQUEST)
    {
        return Err(refuse(
            "identity_requested",
            "edgeguard assigns the identity: the CSR must request no extensions (no subjectAltName, key usage or other extension request)",
        ));
    }
    let label = label_of(&csr)?;
    Ok(AcceptedCsr {
        spki_der: csr.certification_request_info.subject_pki.raw.to_vec(),
        key,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SanType,
        PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256,
    };

    fn params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if !cn.is_empty() {
            dn.push(DnType::CommonName, cn);
        }
        p.distinguished_name = dn;
        p
    }

    fn csr_pem(p: &CertificateParams, key: &KeyPair) -> String {
        p.serialize_request(key).unwrap().pem().unwrap()
    }

    /// An RSA key of `bits`, made by the `openssl` CLI (ring, under rcgen, cannot generate
    /// RSA keys, but signs with them).
    fn rsa_key(bits: u32) -> Option<KeyPair> {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .arg(format!("rsa_keygen_bits:{bits}"))
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let pem = String::from_utf8(out.stdout).ok()?;
        KeyPair::from_pem_and_sign_algo(&pem, &PKCS_RSA_SHA256).ok()
    }

    #[test]
    fn accepts_p256_p384_ed25519_and_keeps_the_cn_as_label() {
        for (alg, kind) in [
            (&PKCS_ECDSA_P256_SHA256, KeyKind::P256),
            (&PKCS_ECDSA_P384_SHA384, KeyKind::P384),
            (&PKCS_ED25519, KeyKind::Ed25519),
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let ok = check(csr_pem(&params("my-kiosk"), &key).as_bytes()).unwrap();
            assert_eq!(ok.key, kind);
            assert_eq!(ok.label, "my-kiosk");
            assert_eq!(ok.spki_der, key.subject_public_key_info());
        }
        // no CN at all: an empty label; DER works as well as PEM
        let key = KeyPair::generate().unwrap();
        let der = params("").serialize_request(&key).unwrap();
        let ok = check(der.der()).unwrap();
        assert_eq!(ok.label, "");
    }

    #[test]
    fn refuses_weak_rsa_and_accepts_rsa_2048() {
        let Some(weak) = rsa_key(1024) else {
            eprintln!("SKIP: openssl cannot make an RSA key here");
            return;
        };
        let e = check(csr_pem(&params("x"), &weak).as_bytes()).unwrap_err();
        assert_eq!(e.error, "weak_key");
        assert!(
            e.message.contains("1024") && e.message.contains("2048"),
            "{e}"
        );
        let strong = rsa_key(2048).unwrap();
        let ok = check(csr_pem(&params("x"), &strong).as_bytes()).unwrap();
        assert_eq!(ok.key, KeyKind::Rsa(2048));
    }

    #[test]
    fn refuses_other_curves() {
        // P-521 (and secp256k1): openssl makes the CSR, rcgen/ring cannot sign on them
        for curve in ["secp521r1", "secp256k1"] {
            let dir = tempfile::tempdir().unwrap();
            let out = std::process::Command::new("openssl")
                .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
                .arg(format!("ec_paramgen_curve:{curve}"))
                .args(["-nodes", "-subj", "/CN=odd", "-keyout"])
                .arg(dir.path().join("k.pem"))
                .output();
            let Some(out) = out.ok().filter(|o| o.status.success()) else {
                eprintln!("SKIP: openssl cannot make a {curve} CSR here");
                continue;
            };
            let e = check(&out.stdout).unwrap_err();
            assert_eq!(e.error, "weak_key", "{curve}: {e}");
            assert!(e.message.contains("P-256"), "{e}");
        }
    }

    #[test]
    fn refuses_a_csr_that_asks_for_its_identity() {
        let key = KeyPair::generate().unwrap();
        let mut p = params("my-kiosk");
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://edge.example/device/dev_chosen"
                .try_into()
                .unwrap(),
        )];
        let e = check(csr_pem(&p, &key).as_bytes()).unwrap_err();
        assert_eq!(e.error, "identity_requested");
        assert!(e.message.contains("edgeguard assigns the identity"), "{e}");
        // a DNS SAN too: any extension request
        let mut p = params("my-kiosk");
        p.subject_alt_names = vec![SanType::DnsName("kiosk.example".try_into().unwrap())];
        assert_eq!(
            check(csr_pem(&p, &key).as_bytes()).unwrap_err().error,
            "identity_requested"
        );
        // a CN that looks like a SPIFFE id
        for cn in [
            "spiffe://edge.example/device/x",
            "SPIFFE://EDGE/x",
            "https://x.example",
        ] {
            let e = check(csr_pem(&params(cn), &key).as_bytes()).unwrap_err();
            assert_eq!(e.error, "identity_requested", "{cn}");
            assert!(e.message.contains("edgeguard assigns the identity"));
        }
    }

    #[test]
    fn refuses_a_bad_signature_and_garbage() {
        let key = KeyPair::generate().unwrap();
        let der = params("my-kiosk")
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        // the signature is the last bytes: flip one
        let mut bad = der.clone();
        let n = bad.len();
        bad[n - 3] ^= 0x01;
        let e = check(&bad).unwrap_err();
        assert_eq!(e.error, "csr_bad_signature", "{e}");
        // a changed CN under the original signature: the signed info no longer matches
        let pos = der.windows(8).position(|w| w == b"my-kiosk").unwrap();
        let mut forged = der.clone();
        forged[pos] = b'M';
        assert_eq!(check(&forged).unwrap_err().error, "csr_bad_signature");
        for garbage in [
            &b""[..],
            b"hello",
            b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert_eq!(check(garbage).unwrap_err().error, "csr_unparsable");
        }
        // a certificate is not a CSR
        let cert = params("x").self_signed(&key).unwrap().pem();
        let e = check(cert.as_bytes()).unwrap_err();
        assert_eq!(e.error, "csr_unparsable");
        assert!(e.message.contains("CERTIFICATE"), "{e}");
    }

    #[test]
    fn labels_are_bounded() {
        let key = KeyPair::generate().unwrap();
        let long = "k".repeat(MAX_LABEL_CHARS + 1);
        assert_eq!(
            check(csr_pem(&params(&long), &key).as_bytes())
                .unwrap_err()
                .error,
            "bad_label"
        );
        let fine = "k".repeat(MAX_LABEL_CHARS);
        assert!(check(csr_pem(&params(&fine), &key).as_bytes()).is_ok());
    }
}
