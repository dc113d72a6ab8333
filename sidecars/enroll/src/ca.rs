//! The fleet CA (certificate + private key from PEM files, e.g. a mounted Kubernetes
//! Secret) and the device certificates it signs, with rcgen.
//!
//! A device certificate: subject CN = the device id; one URI SAN
//! `spiffe://<trust domain>/device/<device id>`; extended key usage clientAuth; key usage
//! digitalSignature; basicConstraints CA:FALSE; authority key identifier; a random positive
//! serial of 126 bits; valid from 5 minutes ago (clock skew) for the configured lifetime,
//! never past the CA's own expiry.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use sha2::{Digest, Sha256};
use x509_parser::pem::Pem;

use crate::csr::AcceptedCsr;
use crate::hex;

/// How far back a certificate's validity starts (devices with a slow clock).
pub const BACKDATE_SECONDS: i64 = 300;

/// Why the CA could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read the CA {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the CA certificate {path}: {message}")]
    Cert { path: String, message: String },
    #[error("the CA key {path}: {message}")]
    Key { path: String, message: String },
}

/// A certificate signed for a device.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The device certificate then the CA file's certificates, PEM.
    pub chain_pem: String,
    /// Hex SHA-256 of the device certificate's DER.
    pub fingerprint_sha256: String,
    /// Hex of the serial.
    pub serial: String,
    pub spiffe_id: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// Why a certificate could not be signed (should not happen for an accepted CSR).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the device certificate: {0}")]
pub struct IssueError(String);

/// The loaded CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The certificates of the CA file, PEM, in file order.
    chain_pem: String,
    not_after: i64,
    subject: String,
    trust_domain: String,
    ttl_seconds: i64,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// PEM text of one DER certificate.
pub fn pem_certificate(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The SPIFFE id of a device.
pub fn spiffe_id(trust_domain: &str, device_id: &str) -> String {
    format!("spiffe://{trust_domain}/device/{device_id}")
}

impl Ca {
    /// Loads and checks the CA: the first certificate of `cert_path` must be a CA
    /// (basicConstraints CA:TRUE; keyCertSign when it has a key usage), valid now, and
    /// `key_path` its private key (PKCS#8 PEM).
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        trust_domain: &str,
        ttl_seconds: i64,
        now: i64,
    ) -> Result<Ca, CaError> {
        let cpath = cert_path.display().to_string();
        let kpath = key_path.display().to_string();
        let cert_err = |message: String| CaError::Cert {
            path: cpath.clone(),
            message,
        };
        let cert_bytes = std::fs::read(cert_path).map_err(|source| CaError::Read {
            what: "certificate",
            path: cpath.clone(),
            source,
        })?;
        let mut ders = Vec::new();
        for pem in Pem::iter_from_buffer(&cert_bytes) {
            let pem = pem.map_err(|e| cert_err(format!("not PEM ({e})")))?;
            if pem.label == "CERTIFICATE" {
                ders.push(pem.contents);
            }
        }
        let Some(first) = ders.first() else {
            return Err(cert_err(
                "holds no PEM 'CERTIFICATE' block (EDGEGUARD_CA_CERT must be the CA certificate, e.g. a Secret's tls.crt)".into(),
            ));
        };
        let (_, x509) = x509_parser::parse_x509_certificate(first)
            .map_err(|e| cert_err(format!("does not parse as X.509 ({e})")))?;
        let subject = x509.subject().to_string();
        let is_ca = x509
            .basic_constraints()
            .map_err(|e| cert_err(format!("bad basicConstraints ({e})")))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(cert_err(format!(
                "'{subject}' is not a CA certificate (it needs basicConstraints CA:TRUE)"
            )));
        }
        if let Some(ku) = x509
            .key_usage()
            .map_err(|e| cert_err(format!("bad keyUsage ({e})")))?
        {
            if !ku.value.key_cert_sign() {
                return Err(cert_err(format!(
                    "'{subject}' may not sign certificates (its keyUsage lacks keyCertSign)"
                )));
            }
        }
        let validity = x509.validity();
        let not_after = validity.not_after.timestamp();
        if not_after <= now {
            return Err(cert_err(format!(
                "'{subject}' has expired ({})",
                validity.not_after
            )));
        }
        if validity.not_before.timestamp() > now {
            return Err(cert_err(format!(
                "'{subject}' is not valid yet ({})",
                validity.not_before
            )));
        }
        let key_err = |message: String| CaError::Key {
            path: kpath.clone(),
            message,
        };
        let key_text = std::fs::read_to_string(key_path).map_err(|source| CaError::Read {
            what: "key",
            path: kpath.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_text).map_err(|e| {
            key_err(format!(
                "is not a PKCS#8 PEM private key of a supported type (P-256, P-384, Ed25519, RSA): {e}; convert an 'EC PRIVATE KEY' or 'RSA PRIVATE KEY' with `openssl pkcs8 -topk8 -nocrypt`"
            ))
        })?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(key_err(format!(
                "is not the private key of the CA certificate '{subject}'"
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&first.clone().into(), key)
            .map_err(|e| cert_err(format!("cannot be used as an issuer ({e})")))?;
        let chain_pem = ders.iter().map(|d| pem_certificate(d)).collect();
        Ok(Ca {
            issuer,
            chain_pem,
            not_after,
            subject,
            trust_domain: trust_domain.to_string(),
            ttl_seconds,
        })
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA file's certificates, PEM.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// Signs a certificate for `device_id` over the CSR's key.
    pub fn issue(
        &self,
        csr: &AcceptedCsr,
        device_id: &str,
        now: i64,
    ) -> Result<Issued, IssueError> {
        let err = |e: &dyn std::fmt::Display| IssueError(e.to_string());
        let public_key = SubjectPublicKeyInfo::from_der(&csr.spki_der).map_err(|e| err(&e))?;
        let spiffe = spiffe_id(&self.trust_domain, device_id);
        let not_before = now.saturating_sub(BACKDATE_SECONDS);
        let not_after = now.saturating_add(self.ttl_seconds).min(self.not_after);
        let mut serial = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut serial);
        // positive, and of a fixed length: top bit clear, next bit set
        serial[0] = (serial[0] & 0x7f) | 0x40;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            spiffe.clone().try_into().map_err(|e| err(&e))?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(not_before).map_err(|e| err(&e))?;
        params.not_after =
            time::OffsetDateTime::from_unix_timestamp(not_after).map_err(|e| err(&e))?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| err(&e))?;
        let der = cert.der();
        let mut chain_pem = pem_certificate(der);
        chain_pem.push_str(&self.chain_pem);
        Ok(Issued {
            chain_pem,
            fingerprint_sha256: hex(&Sha256::digest(der)),
            serial: hex(&serial),
            spiffe_id: spiffe,
            not_before,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, KeyPair, PublicKeyData};
    use x509_parser::extensions::GeneralName;

    const NOW: i64 = 1_800_000_000;

    fn write_ca(
        dir: &Path,
        is_ca: bool,
        key_cert_sign: bool,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "test fleet CA");
        if is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        if key_cert_sign {
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        } else {
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        let cert = p.self_signed(&key).unwrap();
        let c = dir.join("ca.pem");
        let k = dir.join("ca.key");
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn issues_a_device_certificate_with_the_assigned_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_ca(dir.path(), true, true);
        let ca = Ca::load(&c, &k, "edge.example", 30 * 86400, NOW).unwrap();
        let device_key = KeyPair::generate().unwrap();
        let csr = AcceptedCsr {
            spki_der: device_key.subject_public_key_info(),
            key: crate::csr::KeyKind::P256,
            label: "kiosk".into(),
        };
        let issued = ca.issue(&csr, "dev_0123456789abcdef0123", NOW).unwrap();
        assert_eq!(
            issued.spiffe_id,
            "spiffe://edge.example/device/dev_0123456789abcdef0123"
        );
        assert_eq!(issued.not_before, NOW - 300);
        assert_eq!(issued.not_after, NOW + 30 * 86400);
        assert_eq!(issued.serial.len(), 32);
        assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        let first = Pem::iter_from_buffer(issued.chain_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(
            issued.fingerprint_sha256,
            hex(&Sha256::digest(&first.contents))
        );
        let x = first.parse_x509().unwrap();
        assert_eq!(
            x.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "dev_0123456789abcdef0123"
        );
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::URI(
                "spiffe://edge.example/device/dev_0123456789abcdef0123"
            )]
        );
        let eku = x.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.client_auth && !eku.value.server_auth);
        assert!(!x.is_ca());
        assert_eq!(
            x.public_key().raw,
            device_key.subject_public_key_info().as_slice()
        );
        assert_eq!(
            x.raw_serial(),
            crate::unhex(&issued.serial).unwrap().as_slice()
        );
    }

    #[test]
    fn the_validity_stops_at_the_ca_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_ca(dir.path(), true, true);
        // rcgen's default validity ends in 4096: a TTL beyond it is capped
        let ca = Ca::load(&c, &k, "edge.example", i64::MAX / 2, NOW).unwrap();
        let device_key = KeyPair::generate().unwrap();
        let csr = AcceptedCsr {
            spki_der: device_key.subject_public_key_info(),
            key: crate::csr::KeyKind::P256,
            label: String::new(),
        };
        let issued = ca.issue(&csr, "dev_x", NOW).unwrap();
        assert_eq!(issued.not_after, ca.not_after());
    }

    #[test]
    fn refuses_what_is_not_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_ca(dir.path(), false, true);
        let e = Ca::load(&c, &k, "edge.example", 86400, NOW)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a CA certificate"), "{e}");
        let (c, k) = write_ca(dir.path(), true, false);
        let e = Ca::load(&c, &k, "edge.example", 86400, NOW)
            .unwrap_err()
            .to_string();
        assert!(e.contains("keyCertSign"), "{e}");
        // a key that is not the CA's
        let (c, _) = write_ca(dir.path(), true, true);
        let other = dir.path().join("other.key");
        std::fs::write(&other, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let e = Ca::load(&c, &other, "edge.example", 86400, NOW)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the private key"), "{e}");
        // unreadable files
        let e = Ca::load(
            &dir.path().join("nope.pem"),
            &other,
            "edge.example",
            86400,
            NOW,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot read the CA certificate"), "{e}");
        let e = Ca::load(&c, &dir.path().join("nope.key"), "edge.example", 86400, NOW)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the CA key"), "{e}");
        // a key file that holds a certificate
        let e = Ca::load(&c, &c, "edge.example", 86400, NOW)
            .unwrap_err()
            .to_string();
        assert!(e.contains("PKCS#8"), "{e}");
    }
}
