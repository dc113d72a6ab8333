//! `edgeguard gatekeeper rotate`: writes a new key into the key directory (published at once,
//! signing after the publish delay), says when each key signs and retires, and removes the
//! files of keys retired long enough ago.

use std::time::{Duration, UNIX_EPOCH};

use crate::config::RotateArgs;
use crate::keyring::{self, Lifecycle, Ring};
use crate::server::{ensure_dir, GatekeeperError};
use crate::signer::PRUNE_GRACE_S;

fn at(t: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

fn after(t: u64, now: u64) -> String {
    humantime::format_duration(Duration::from_secs(t.saturating_sub(now))).to_string()
}

/// Runs the command; the report goes to stdout.
pub fn run(args: RotateArgs) -> Result<(), GatekeeperError> {
    let dir = args.keys.key_dir.clone().ok_or_else(|| {
        GatekeeperError::Config("--key-dir (EDGEGUARD_GATEKEEPER_KEY_DIR) is required".into())
    })?;
    let alg = args.keys.signing_alg;
    if !alg.asymmetric() {
        return Err(GatekeeperError::Config(
            "rotate writes ES256 or EdDSA keys; an HS256 secret is rotated by changing it where it is configured".into(),
        ));
    }
    ensure_dir(&dir)?;
    let now = keyring::unix_now()?;
    let kid = args.kid.clone().unwrap_or_else(|| keyring::new_kid(now));
    if !keyring::valid_kid(&kid) {
        return Err(GatekeeperError::Config(format!(
            "--kid '{kid}': a kid is 1-64 of A-Z a-z 0-9 - _ . (not starting with '.')"
        )));
    }
    let lifecycle = Lifecycle {
        token_ttl: args.keys.token_ttl.as_secs(),
        clock_skew: args.keys.clock_skew.as_secs(),
    };
    let meta = keyring::add_key(&dir, alg, &kid, now, args.keys.publish_delay.as_secs())?
        .ok_or_else(|| GatekeeperError::Config(format!("a key named '{kid}' already exists")))?;
    println!("new key: {} ({})", meta.kid, meta.alg);
    println!("published: now ({})", at(meta.created_at));
    if meta.sign_from <= now {
        println!("signs from: now (the directory had no key)");
    } else {
        println!(
            "signs from: {} (in {})",
            at(meta.sign_from),
            after(meta.sign_from, now)
        );
    }
    let ring = Ring::from_scan(keyring::scan(&dir)?, lifecycle);
    for k in &ring.keys {
        if k.times.kid == meta.kid {
            continue;
        }
        let state = ring
            .states(now)
            .into_iter()
            .find(|(kid, _)| *kid == k.times.kid)
            .map(|(_, s)| s.as_str())
            .unwrap_or("?");
        match k.times.retire_at {
            Some(r) if r > now => println!(
                "{} ({state}): published until {} (in {}: its last token expires then)",
                k.times.kid,
                at(r),
                after(r, now)
            ),
            Some(r) => println!("{} ({state}): retired at {}", k.times.kid, at(r)),
            None => println!("{} ({state})", k.times.kid),
        }
    }
    if !args.no_prune {
        let removed = keyring::prune(&dir, lifecycle, now, PRUNE_GRACE_S)?;
        if !removed.is_empty() {
            println!("removed (retired): {}", removed.join(", "));
        }
    }
    Ok(())
}
