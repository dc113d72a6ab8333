//! Device identity: a request made over mutual TLS with a client certificate that
//! `edgeguard enroll` issued is made *by a device*, and the store maps the certificate to it.
//!
//! The key is the certificate's SHA-256 fingerprint (of its DER), which the proxy terminating
//! TLS computes (Envoy: the connection's `sha256_peer_certificate_digest`, or `Hash=` in its
//! `x-forwarded-client-cert`). A fingerprint is looked up, never parsed: a certificate the
//! registry does not hold (another CA's, a revoked one, one a re-key replaced) is no device.
//!
//! A device belongs to one account; it may call the apps of that account whose
//! [`ClientAuth`] accepts certificates. Its certificate's `not_after` is checked against the
//! clock at every request, so an expired certificate is refused even where TLS was configured
//! to accept it (`allow_expired_certificate`, or a CA bundle checked elsewhere).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// SHA-256 of a certificate's DER.
pub type Fingerprint = [u8; 32];

/// Header stamped with the device id on a request a device made (with `Portal-Application-ID`
/// and `Portal-Account-ID`).
pub const HEADER_DEVICE_ID: &str = "Portal-Device-ID";

/// An enrolled, not revoked device, as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: Arc<str>,
    pub account_id: Arc<str>,
    /// The certificate's `notAfter`, in Unix seconds: from then on the device is refused.
    pub not_after: i64,
}

/// How an app authenticates its callers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// The app's API key, as PEAS (and a public app is public). The default.
    #[default]
    Key,
    /// A client certificate of a device of the app's account; a key does not do.
    Certificate,
    /// Either of the two.
    Either,
}

impl ClientAuth {
    pub const ALL: [ClientAuth; 3] = [ClientAuth::Key, ClientAuth::Certificate, ClientAuth::Either];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Key => "key",
            ClientAuth::Certificate => "certificate",
            ClientAuth::Either => "either",
        }
    }

    /// `key`, `certificate` or `either` (exactly; `None` for anything else).
    pub fn parse(s: &str) -> Option<ClientAuth> {
        ClientAuth::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether a valid device certificate authenticates a caller.
    pub fn accepts_certificate(self) -> bool {
        matches!(self, ClientAuth::Certificate | ClientAuth::Either)
    }

    /// Whether the app's key (or its being public) authenticates a caller.
    pub fn accepts_key(self) -> bool {
        matches!(self, ClientAuth::Key | ClientAuth::Either)
    }
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The client certificate a request came with, and the time to judge it at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub fingerprint: Fingerprint,
    /// Unix seconds.
    pub now: i64,
}

/// Why a certificate does not make a request a device's (for logs; the answer is a 401 either
/// way, as for a wrong key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRefusal {
    /// The app accepts certificates, the request came without one.
    NoCertificate,
    /// The registry does not hold this certificate (never enrolled, revoked, replaced).
    UnknownCertificate,
    /// The device's certificate expired.
    Expired,
    /// The device belongs to another account than the app.
    OtherAccount,
}

impl DeviceRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRefusal::NoCertificate => "no client certificate",
            DeviceRefusal::UnknownCertificate => {
                "client certificate of no enrolled device (unknown, revoked or replaced)"
            }
            DeviceRefusal::Expired => "device certificate expired",
            DeviceRefusal::OtherAccount => "device belongs to another account",
        }
    }
}

/// The device `peer` authenticates for an app of `account_id`.
pub fn authenticate<'d>(
    peer: Option<&Peer>,
    lookup: impl FnOnce(&Fingerprint) -> Option<&'d Device>,
    account_id: &str,
) -> Result<&'d Device, DeviceRefusal> {
    let peer = peer.ok_or(DeviceRefusal::NoCertificate)?;
    let device = lookup(&peer.fingerprint).ok_or(DeviceRefusal::UnknownCertificate)?;
    // a clock that could not be read (0, or before the epoch) cannot show a certificate valid
    if peer.now <= 0 || peer.now >= device.not_after {
        return Err(DeviceRefusal::Expired);
    }
    if &*device.account_id != account_id {
        return Err(DeviceRefusal::OtherAccount);
    }
    Ok(device)
}

/// The fingerprint of the first certificate of a PEM text, URL-encoded or not (Envoy's
/// ext_authz `attributes.source.certificate`, and its `%DOWNSTREAM_PEER_CERT%`, are the
/// URL-encoded PEM of the peer certificate). `None` when there is no complete, decodable
/// `CERTIFICATE` block.
pub fn pem_fingerprint(pem: &str) -> Option<Fingerprint> {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let decoded = percent_encoding::percent_decode_str(pem)
        .decode_utf8()
        .ok()?;
    let start = decoded.find(BEGIN)? + BEGIN.len();
    let len = decoded.get(start..)?.find(END)?;
    let body: String = decoded
        .get(start..start + len)?
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    if der.is_empty() {
        return None;
    }
    Some(Sha256::digest(&der).into())
}

/// 64 hex digits (either case) as a fingerprint; `None` for anything else.
pub fn parse_fingerprint(hex: &str) -> Option<Fingerprint> {
    crate::xfcc::hex32(hex)
}

/// A fingerprint as 64 lower-case hex digits.
pub fn fingerprint_hex(f: &Fingerprint) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in f {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn device(id: &str, account: &str, not_after: i64) -> Device {
        Device {
            id: id.into(),
            account_id: account.into(),
            not_after,
        }
    }

    #[test]
    fn modes_parse_and_accept() {
        for m in ClientAuth::ALL {
            assert_eq!(ClientAuth::parse(m.as_str()), Some(m));
        }
        assert_eq!(ClientAuth::parse("Certificate"), None);
        assert_eq!(ClientAuth::parse(""), None);
        assert!(ClientAuth::Key.accepts_key() && !ClientAuth::Key.accepts_certificate());
        assert!(!ClientAuth::Certificate.accepts_key());
        assert!(ClientAuth::Certificate.accepts_certificate());
        assert!(ClientAuth::Either.accepts_key() && ClientAuth::Either.accepts_certificate());
        assert_eq!(ClientAuth::default(), ClientAuth::Key);
    }

    #[test]
    fn authentication() {
        let mut reg: HashMap<Fingerprint, Device> = HashMap::new();
        reg.insert([1; 32], device("d1", "acc1", 1_000));
        let look = |f: &Fingerprint| reg.get(f);
        let peer = |f: u8, now: i64| Peer {
            fingerprint: [f; 32],
            now,
        };
        assert_eq!(
            authenticate(Some(&peer(1, 999)), look, "acc1").map(|d| &*d.id),
            Ok("d1")
        );
        assert_eq!(
            authenticate(None, look, "acc1"),
            Err(DeviceRefusal::NoCertificate)
        );
        assert_eq!(
            authenticate(Some(&peer(2, 999)), look, "acc1"),
            Err(DeviceRefusal::UnknownCertificate)
        );
        assert_eq!(
            authenticate(Some(&peer(1, 1_000)), look, "acc1"),
            Err(DeviceRefusal::Expired)
        );
        assert_eq!(
            authenticate(Some(&peer(1, 999)), look, "acc2"),
            Err(DeviceRefusal::OtherAccount)
        );
        // a host whose clock failed (now = 0) proves nothing valid
        for now in [0, -5] {
            assert_eq!(
                authenticate(Some(&peer(1, now)), look, "acc1"),
                Err(DeviceRefusal::Expired)
            );
        }
    }

    #[test]
    fn pem_fingerprints() {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let der = b"not really DER, but bytes all the same".to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n{}\n-----END CERTIFICATE-----\n",
            &b64[..20],
            &b64[20..]
        );
        let want: Fingerprint = Sha256::digest(&der).into();
        assert_eq!(pem_fingerprint(&pem), Some(want));
        // as Envoy sends it: URL-encoded
        let encoded: String =
            percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        assert_eq!(pem_fingerprint(&encoded), Some(want));
        for bad in [
            "",
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----",
            "-----BEGIN CERTIFICATE-----\nAAAA",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----",
            "%ff%fe",
        ] {
            assert_eq!(pem_fingerprint(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_round_trip() {
        let f: Fingerprint = core::array::from_fn(|i| (i * 9) as u8);
        let hex = fingerprint_hex(&f);
        assert_eq!(hex.len(), 64);
        assert_eq!(parse_fingerprint(&hex), Some(f));
        assert_eq!(parse_fingerprint(&hex.to_uppercase()), Some(f));
        assert_eq!(parse_fingerprint(&hex[..62]), None);
        assert_eq!(parse_fingerprint(&format!("{}zz", &hex[..62])), None);
    }

    proptest::proptest! {
        #[test]
        fn hostile_pem_never_panics(s in "\\PC{0,300}") {
            let _ = pem_fingerprint(&s);
            let wrapped = format!("-----BEGIN CERTIFICATE-----{s}-----END CERTIFICATE-----");
            let _ = pem_fingerprint(&wrapped);
            let _ = parse_fingerprint(&s);
        }
    }
}
