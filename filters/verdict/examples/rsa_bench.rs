//! RS256 / PS256 verification benchmark: edgeguard's verify-only RSA against the `rsa` crate.
//!
//! ```text
//! cargo run --release --example rsa_bench -p edgeguard-verdict [-- ITERATIONS]
//! cargo build --release --example rsa_bench --target wasm32-wasip1 -p edgeguard-verdict
//! node --no-warnings run.mjs target/wasm32-wasip1/release/examples/rsa_bench.wasm [ITERATIONS]
//! ```
//!
//! The key and signatures are a fixed 2048-bit test vector (no key generation in wasm). It was
//! produced natively by `cargo run --release --example rsa_bench -p edgeguard-verdict -- --gen`.

use std::error::Error;
use std::hint::black_box;
use std::time::Instant;

use edgeguard_verdict::rsa::{HashAlg, RsaPublicKey};
use sha2::{Digest, Sha256};

const DEFAULT_ITERATIONS: u32 = 2000;

/// Signed message (a JWS signing input: base64url header "." base64url payload).
const MESSAGE: &[u8] = b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoIn0.eyJzdWIiOiJiZW5jaCIsImV4cCI6NDEwMjQ0NDgwMH0";
/// Public exponent, big-endian hex.
const E_HEX: &str = "010001";
/// Modulus, big-endian hex.
const N_HEX: &str = "b1687936b66825a938f62b023ea56cfd216475030eb5f87bcb34613ae684d1f3a2572811dd231e3a7052af71a90be2d1c4cbdb8ad0cb0aa96f9402d3bf083424f11f21798e979b48276b80540ec58769c1370cff1a572f9c7d3470c137cbcc55f6b0cc77bdb3529c1872a6cb447d70c02820ae831a4a2f0018988a45daf5384e4b6e72214a39f7ec3a6eb8d37a220b4507732d154610b30775624e799934cb1952027a608d067c2d53c855a0c40143670b51d9cd17634d36303e0ad215724397685db1be23848c68279f2e8fd606475ce90c0fe2af20136acefdb8b7b4ea014e9d089518302efdbcfab3ecfea32a8bffba64682b17fc36a4e18863dcab01537f";
/// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signature of `MESSAGE`.
const RS256_SIG_HEX: &str = "61a50f778db11d78556443f1422e7207b29c2c89e8c589c1e786a1b34eeff68dc2102281f3af78876c0042438585bb4005bc9562464c3580e595c1bf4cf63a70c670f7ad9944afbc7cbebb9f4e8e056fea1826a0568ddfc6bbbb52808a797b887559e3bf9dd1d2b93212d54619a3f2f9f61b9df3484113b34322b812f666ac6301c746bc98ba7eb780871f5635484bb9dfd8abc8f03a900586df1fd470041d63ca40aa833d70da4ad70e45fa8608c2b0f27d4dcf7f296c937b91282f185f52ca5ce121d2fd00bfc04c70c9b45c4bec12f4d351fa4bd047d88f3beb5e3fe9a460bc38493f98c2d9c7f25444da2e6596e58327fac2df9248a33d68a7912f1f2b6d";
/// PS256 (RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt) signature of `MESSAGE`.
const PS256_SIG_HEX: &str = "9f327c3b4e49dda421a2113979657d603d0cfa902552c3f7c94dd6a4db2fcc71a6aeee7096c2a85593c8dbfaddd1d9605214f8b462e536e01c5236b823025325c44b27175d7c06c214ce21fae33a6c42616cc03b9d1b9e5beca6ac7b2e6181ce181f511f4e6e7de01c92cb114ea3ace6eef35c8a7bd86fa8af9732225afe81440ea64fdd5e34aab5116c4828199850c61fc05d266526b9ffea339142b04d95674af1b00e303cd92db042d4b3b6b9c1103a3c55c048dd709e7e16154eb9f0e7524fd98fe79932d105ce8d55c286ed170cc2f411dd6641415162308f7727409f13d878ed31de974c10e286d37ab0d6ba32bb8ea10e568eb1eb61f494de5618a891";

fn hex(s: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    if s.len() % 2 != 0 {
        return Err("odd hex length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .ok_or_else(|| "bad hex".into())
                .and_then(|pair| u8::from_str_radix(pair, 16).map_err(Into::into))
        })
        .collect()
}

/// Runs `f` `iterations` times after a short warm-up; returns µs per call.
fn time_per_op(iterations: u32, mut f: impl FnMut() -> bool) -> Result<f64, Box<dyn Error>> {
    for _ in 0..iterations.div_ceil(10).max(1) {
        if !black_box(f()) {
            return Err("verification failed".into());
        }
    }
    let start = Instant::now();
    let mut ok = true;
    for _ in 0..iterations {
        ok &= black_box(f());
    }
    let elapsed = start.elapsed();
    if !ok {
        return Err("verification failed".into());
    }
    Ok(elapsed.as_secs_f64() * 1e6 / f64::from(iterations.max(1)))
}

fn main() -> Result<(), Box<dyn Error>> {
    let arg = std::env::args().nth(1);
    #[cfg(not(target_arch = "wasm32"))]
    if arg.as_deref() == Some("--gen") {
        return generate();
    }
    let iterations = match arg {
        Some(a) => a.parse::<u32>()?,
        None => DEFAULT_ITERATIONS,
    };

    let n = hex(N_HEX)?;
    let e = hex(E_HEX)?;
    let rs256 = hex(RS256_SIG_HEX)?;
    let ps256 = hex(PS256_SIG_HEX)?;
    let digest = Sha256::digest(MESSAGE);

    let target = if cfg!(target_arch = "wasm32") { "wasm32" } else { "native" };
    println!("2048-bit key, e = 65537, {iterations} iterations, {target}");

    let parse_start = Instant::now();
    let key = RsaPublicKey::from_be_bytes(&n, &e)?;
    println!("edgeguard from_be_bytes          {:9.1} µs (once)", parse_start.elapsed().as_secs_f64() * 1e6);
    let us = time_per_op(iterations, || {
        key.verify_pkcs1v15(HashAlg::Sha256, black_box(&digest), black_box(&rs256))
    })?;
    println!("edgeguard verify_pkcs1v15 RS256  {us:9.1} µs/op");
    let us = time_per_op(iterations, || {
        key.verify_pss(HashAlg::Sha256, black_box(&digest), black_box(&ps256))
    })?;
    println!("edgeguard verify_pss      PS256  {us:9.1} µs/op");

    let theirs = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(&n), rsa::BigUint::from_bytes_be(&e))?;
    let us = time_per_op(iterations, || {
        theirs
            .verify(rsa::Pkcs1v15Sign::new::<Sha256>(), black_box(&digest), black_box(&rs256))
            .is_ok()
    })?;
    println!("rsa 0.9   verify Pkcs1v15    RS256  {us:9.1} µs/op");
    let us = time_per_op(iterations, || {
        theirs
            .verify(rsa::Pss::new::<Sha256>(), black_box(&digest), black_box(&ps256))
            .is_ok()
    })?;
    println!("rsa 0.9   verify Pss         PS256  {us:9.1} µs/op");
    Ok(())
}

/// Prints a fresh test vector (seeded, so reproducible) as Rust constants.
#[cfg(not(target_arch = "wasm32"))]
fn generate() -> Result<(), Box<dyn Error>> {
    use rand::SeedableRng;
    use rsa::traits::PublicKeyParts;

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x2048_ed6e);
    let private = rsa::RsaPrivateKey::new(&mut rng, 2048)?;
    let digest = Sha256::digest(MESSAGE);
    let rs256 = private.sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest)?;
    let ps256 = private.sign_with_rng(&mut rng, rsa::Pss::new::<Sha256>(), &digest)?;
    let to_hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    println!("/// Modulus, big-endian hex.");
    println!("const N_HEX: &str = \"{}\";", to_hex(&private.n().to_bytes_be()));
    println!("/// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signature of `MESSAGE`.");
    println!("const RS256_SIG_HEX: &str = \"{}\";", to_hex(&rs256));
    println!("/// PS256 (RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt) signature of `MESSAGE`.");
    println!("const PS256_SIG_HEX: &str = \"{}\";", to_hex(&ps256));
    Ok(())
}
