//! RS256 / PS256 verification benchmark: edgeguard's verify-only RSA against the `rsa` crate.
//!
//! ```text
//! cargo run --release --example rsa_bench -p edgeguard-verdict [-- ITERATIONS [ROUNDS]]
//! cargo build --release --example rsa_bench --target wasm32-wasip1 -p edgeguard-verdict
//! node --no-warnings run.mjs target/wasm32-wasip1/release/examples/rsa_bench.wasm [ITERATIONS [ROUNDS]]
//! ```
//!
//! where `run.mjs` is a few lines of Node's WASI (Node 20: V8, like Envoy's wasm runtime):
//!
//! ```text
//! import { readFile } from 'node:fs/promises';
//! import { WASI } from 'node:wasi';
//! const [file, ...args] = process.argv.slice(2);
//! const wasi = new WASI({ version: 'preview1', args: [file, ...args] });
//! const module = await WebAssembly.compile(await readFile(file));
//! process.exitCode = wasi.start(await WebAssembly.instantiate(module, wasi.getImportObject()));
//! ```
//!
//! Every case runs `ITERATIONS` times (default 2000) in `ROUNDS` interleaved rounds (default 5)
//! after a warm-up; the best and the median round are printed. The key and signatures are a
//! fixed 2048-bit test vector (no key generation in wasm), produced natively by
//! `cargo run --release --example rsa_bench -p edgeguard-verdict -- --gen`.

use std::error::Error;
use std::hint::black_box;
use std::time::Instant;

use edgeguard_verdict::rsa::{HashAlg, RsaPublicKey};
use sha2::{Digest, Sha256};

const DEFAULT_ITERATIONS: u32 = 2000;

/// Signed message (a JWS signing input: base64url header "." base64url payload).
const MESSAGE: &[u8] =
    b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoIn0.eyJzdWIiOiJiZW5jaCIsImV4cCI6NDEwMjQ0NDgwMH0";
/// Public exponent, big-endian hex.
const E_HEX: &str = "010001";
/// Modulus, big-endian hex.
const N_HEX: &str = "b1687936b66825a938f62b023ea56cfd216475030eb5f87bcb34613ae684d1f3a2572811dd231e3a7052af71a90be2d1c4cbdb8ad0cb0aa96f9402d3bf083424f11f21798e979b48276b80540ec58769c1370cff1a572f9c7d3470c137cbcc55f6b0cc77bdb3529c1872a6cb447d70c02820ae831a4a2f0018988a45daf5384e4b6e72214a39f7ec3a6eb8d37a220b4507732d154610b30775624e799934cb1952027a608d067c2d53c855a0c40143670b51d9cd17634d36303e0ad215724397685db1be23848c68279f2e8fd606475ce90c0fe2af20136acefdb8b7b4ea014e9d089518302efdbcfab3ecfea32a8bffba64682b17fc36a4e18863dcab01537f";
/// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signature of `MESSAGE`.
const RS256_SIG_HEX: &str = "61a50f778db11d78556443f1422e7207b29c2c89e8c589c1e786a1b34eeff68dc2102281f3af78876c0042438585bb4005bc9562464c3580e595c1bf4cf63a70c670f7ad9944afbc7cbebb9f4e8e056fea1826a0568ddfc6bbbb52808a797b887559e3bf9dd1d2b93212d54619a3f2f9f61b9df3484113b34322b812f666ac6301c746bc98ba7eb780871f5635484bb9dfd8abc8f03a900586df1fd470041d63ca40aa833d70da4ad70e45fa8608c2b0f27d4dcf7f296c937b91282f185f52ca5ce121d2fd00bfc04c70c9b45c4bec12f4d351fa4bd047d88f3beb5e3fe9a460bc38493f98c2d9c7f25444da2e6596e58327fac2df9248a33d68a7912f1f2b6d";
/// PS256 (RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt) signature of `MESSAGE`.
const PS256_SIG_HEX: &str = "9f327c3b4e49dda421a2113979657d603d0cfa902552c3f7c94dd6a4db2fcc71a6aeee7096c2a85593c8dbfaddd1d9605214f8b462e536e01c5236b823025325c44b27175d7c06c214ce21fae33a6c42616cc03b9d1b9e5beca6ac7b2e6181ce181f511f4e6e7de01c92cb114ea3ace6eef35c8a7bd86fa8af9732225afe81440ea64fdd5e34aab5116c4828199850c61fc05d266526b9ffea339142b04d95674af1b00e303cd92db042d4b3b6b9c1103a3c55c048dd709e7e16154eb9f0e7524fd98fe79932d105ce8d55c286ed170cc2f411dd6641415162308f7727409f13d878ed31de974c10e286d37ab0d6ba32bb8ea10e568eb1eb61f494de5618a891";

fn hex(s: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    if !s.len().is_multiple_of(2) {
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

/// One measured operation; returns whether it succeeded (a verification that fails means the
/// benchmark is broken).
struct Case<'a> {
    name: &'static str,
    op: Box<dyn FnMut() -> bool + 'a>,
    /// Calls per round relative to the verification count (key parsing is timed less often).
    weight: f64,
    samples: Vec<f64>,
}

/// Times every case in `rounds` interleaved rounds after a warm-up (so that V8 has tiered the
/// code up and a noisy neighbour affects all cases alike); prints µs per call, best and median
/// round.
fn run(cases: &mut [Case<'_>], iterations: u32, rounds: u32) -> Result<(), Box<dyn Error>> {
    for case in cases.iter_mut() {
        let calls = ((f64::from(iterations) * case.weight / 10.0) as u32).max(1);
        for _ in 0..calls {
            if !black_box((case.op)()) {
                return Err(format!("{} failed", case.name).into());
            }
        }
    }
    for _ in 0..rounds {
        for case in cases.iter_mut() {
            let calls = ((f64::from(iterations) * case.weight / f64::from(rounds)) as u32).max(1);
            let start = Instant::now();
            let mut ok = true;
            for _ in 0..calls {
                ok &= black_box((case.op)());
            }
            let elapsed = start.elapsed();
            if !ok {
                return Err(format!("{} failed", case.name).into());
            }
            case.samples
                .push(elapsed.as_secs_f64() * 1e6 / f64::from(calls));
        }
    }
    println!("{:<40} {:>10} {:>10}", "µs per call", "best", "median");
    for case in cases.iter_mut() {
        case.samples.sort_by(f64::total_cmp);
        let best = case.samples.first().copied().unwrap_or(f64::NAN);
        let median = case
            .samples
            .get(case.samples.len() / 2)
            .copied()
            .unwrap_or(f64::NAN);
        println!("{:<40} {best:>10.1} {median:>10.1}", case.name);
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    #[cfg(not(target_arch = "wasm32"))]
    if first.as_deref() == Some("--gen") {
        return generate();
    }
    let iterations = match first {
        Some(a) => a.parse::<u32>()?,
        None => DEFAULT_ITERATIONS,
    };
    let rounds = match args.next() {
        Some(a) => a.parse::<u32>()?.max(1),
        None => 5,
    };

    let n = hex(N_HEX)?;
    let e = hex(E_HEX)?;
    let rs256 = hex(RS256_SIG_HEX)?;
    let ps256 = hex(PS256_SIG_HEX)?;
    let digest = Sha256::digest(MESSAGE);
    let key = RsaPublicKey::from_be_bytes(&n, &e)?;
    let theirs = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
    )?;

    let target = if cfg!(target_arch = "wasm32") {
        "wasm32"
    } else {
        "native"
    };
    println!(
        "{target}: 2048-bit key, e = 65537, {iterations} verifications per case in {rounds} rounds"
    );
    let mut cases = vec![
        Case {
            name: "edgeguard verify_pkcs1v15 (RS256)",
            op: Box::new(|| {
                key.verify_pkcs1v15(HashAlg::Sha256, black_box(&digest), black_box(&rs256))
            }),
            weight: 1.0,
            samples: Vec::new(),
        },
        Case {
            name: "edgeguard verify_pss (PS256)",
            op: Box::new(|| key.verify_pss(HashAlg::Sha256, black_box(&digest), black_box(&ps256))),
            weight: 1.0,
            samples: Vec::new(),
        },
        Case {
            name: "edgeguard from_be_bytes (per JWK)",
            op: Box::new(|| RsaPublicKey::from_be_bytes(black_box(&n), black_box(&e)).is_ok()),
            weight: 0.1,
            samples: Vec::new(),
        },
        Case {
            name: "rsa 0.9 verify Pkcs1v15Sign (RS256)",
            op: Box::new(|| {
                theirs
                    .verify(
                        rsa::Pkcs1v15Sign::new::<Sha256>(),
                        black_box(&digest),
                        black_box(&rs256),
                    )
                    .is_ok()
            }),
            weight: 1.0,
            samples: Vec::new(),
        },
        Case {
            name: "rsa 0.9 verify Pss (PS256)",
            op: Box::new(|| {
                theirs
                    .verify(
                        rsa::Pss::new::<Sha256>(),
                        black_box(&digest),
                        black_box(&ps256),
                    )
                    .is_ok()
            }),
            weight: 1.0,
            samples: Vec::new(),
        },
    ];
    run(&mut cases, iterations, rounds)
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
    println!(
        "const N_HEX: &str = \"{}\";",
        to_hex(&private.n().to_bytes_be())
    );
    println!("/// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signature of `MESSAGE`.");
    println!("const RS256_SIG_HEX: &str = \"{}\";", to_hex(&rs256));
    println!("/// PS256 (RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt) signature of `MESSAGE`.");
    println!("const PS256_SIG_HEX: &str = \"{}\";", to_hex(&ps256));
    Ok(())
}
