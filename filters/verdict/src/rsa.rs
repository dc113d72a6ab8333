//! Verify-only RSA (RSASSA-PKCS1-v1_5 and RSASSA-PSS, RFC 8017) tuned for wasm32.
//!
//! # Why a dedicated implementation
//!
//! Verification only ever raises the signature to the *public* exponent, so nothing here has
//! to be constant-time, and a general-purpose big-integer crate leaves a lot of speed on the
//! table inside a wasm runtime (see DESIGN.md, "Performance notes").
//!
//! # Representation
//!
//! Numbers are little-endian vectors of `u32` limbs: limb `i` has weight `2^(32 i)`. Every
//! limb product `u32 × u32` is computed in a `u64` (`i64.mul` is a native instruction in
//! wasm, while a 128-bit product is not), and every sum of the form
//! `t + a·b + c` with `t, a, b, c < 2^32` fits in a `u64` because
//! `(2^32 - 1) + (2^32 - 1)^2 + (2^32 - 1) = 2^64 - 1`.
//!
//! # Montgomery arithmetic
//!
//! For an odd modulus `n` of `s` limbs let `R = 2^(32 s)`. The Montgomery product of `a` and
//! `b` is `a·b·R^-1 mod n`; it needs no division, because dividing by `R` is a shift once a
//! multiple `M·n` has been added that clears the low `s` limbs. `M` is found one limb at a
//! time with `n0inv = -n^-1 mod 2^32`: `m_i = t_i · n0inv mod 2^32` makes limb `i` of
//! `t + m_i·n·2^(32 i)` zero. For `a, b < n` the result `(a·b + M·n) / R` is below `2n`, so
//! one conditional subtraction reduces it.
//!
//! A value `x` is carried in Montgomery form as `x·R mod n`: converting in costs one
//! Montgomery product with the precomputed `R^2 mod n`, and Montgomery products keep the
//! form. The last multiplication of the exponentiation uses the *plain* base, which drops the
//! extra factor `R` and converts the result back for free (the exponent is odd, so the last
//! step is always a multiplication). With the usual `e = 65537 = 2^16 + 1` a verification
//! is one conversion, 16 squarings and one multiplication; other exponents use left-to-right
//! square-and-multiply.
//!
//! Products are computed in full (`2 s` limbs) and then reduced ("separated operand
//! scanning"). Squarings compute each cross product `x_i·x_j` (`i < j`) once and double the
//! sum, so a squaring costs `1.5 s^2` limb products instead of `2 s^2`. All three passes
//! (product rows, cross-product rows, reduction rows) go through one kernel, `mac_rows`,
//! that adds `ROWS` = 4 rows per sweep with one carry chain per row.
//!
//! # Performance
//!
//! 2048-bit RS256 verification, Node 20 (V8) running the wasm32-wasip1 build of
//! `examples/rsa_bench.rs`: ≈ 100 µs, against ≈ 1.4 ms for the `rsa` 0.9 crate in the same
//! runtime (≈ 85 µs vs ≈ 230-430 µs natively, on a busy machine). Variants measured on the
//! way, as time relative to the final code under V8: one row at a time with the reduction
//! interleaved (CIOS) and squaring through the general multiplication ≈ 1.25×; CIOS with a
//! dedicated row-by-row squaring ≈ 1.35×; product scanning (column sums in split 32-bit
//! halves) ≈ 1.3×; 1 row per sweep ≈ 1.2×, 2 rows ≈ 1.07×, 6 rows ≈ 1.1×, 8 rows ≈ 1.35×;
//! everything inlined into the exponentiation ≈ 1.7×; 28-bit limbs with carry-free column
//! sums ≈ 0.95-1.3× (depending on rows per sweep; fastest natively, where LLVM vectorises
//! it, but no real gain in V8 without SIMD). Natively the 32-bit variants differ less.
//!
//! # Invariants
//!
//! * `RsaPublicKey::n` has between [`MIN_BITS`] and [`MAX_BITS`] bits, is odd, and has no
//!   leading zero limb; `s = n.len() <= MAX_LIMBS`. `rr` has exactly `s` limbs.
//! * Every Montgomery routine receives operands of exactly `s` limbs that are `< n`, and a
//!   scratch buffer of exactly `2 s` limbs; `Mont::finish` returns a fully reduced value
//!   `< n`. The routines walk their slices with zipped iterators and `get` (no indexing), so
//!   a violated invariant would give a wrong (rejected) result, never a panic.
//! * The signature is checked to be exactly `size()` bytes and `< n` before any arithmetic.

use core::fmt;

use sha2::{Digest, Sha256, Sha384, Sha512};

/// Smallest accepted modulus size in bits (RFC 7518 section 3.3 requires 2048 for RS*/PS*).
pub const MIN_BITS: usize = 2048;
/// Largest accepted modulus size in bits.
pub const MAX_BITS: usize = 8192;
/// Limbs in the largest accepted modulus; sizes the stack scratch buffers.
const MAX_LIMBS: usize = MAX_BITS / 32;
/// Bytes in the largest accepted modulus (and so in the largest signature).
const MAX_BYTES: usize = MAX_BITS / 8;

/// Hash used by the signature scheme (JWS RS256/384/512, PS256/384/512).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// DER encoding of the `DigestInfo` header that precedes the digest in a PKCS#1 v1.5
    /// signature (RFC 8017 section 9.2, note 1): `SEQUENCE { SEQUENCE { OID, NULL },
    /// OCTET STRING (hLen) }`.
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            HashAlg::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            HashAlg::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            HashAlg::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// Why a JWK's `n` / `e` cannot be used as an RSA verification key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RsaKeyError {
    /// The modulus has fewer than [`MIN_BITS`] significant bits.
    ModulusTooSmall { bits: usize },
    /// The modulus has more than [`MAX_BITS`] significant bits.
    ModulusTooLarge { bits: usize },
    /// The modulus is even (Montgomery arithmetic needs an odd modulus; an RSA modulus is odd).
    EvenModulus,
    /// The exponent is empty, even, smaller than 3 or larger than `2^32 - 1`.
    BadExponent,
}

impl fmt::Display for RsaKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RsaKeyError::ModulusTooSmall { bits } => {
                write!(
                    f,
                    "rsa modulus too small: {bits} bits, need at least {MIN_BITS}"
                )
            }
            RsaKeyError::ModulusTooLarge { bits } => {
                write!(f, "rsa modulus too large: {bits} bits, at most {MAX_BITS}")
            }
            RsaKeyError::EvenModulus => f.write_str("rsa modulus is even"),
            RsaKeyError::BadExponent => {
                f.write_str("rsa exponent must be odd, at least 3 and at most 2^32-1")
            }
        }
    }
}

impl std::error::Error for RsaKeyError {}

/// An RSA public key prepared once for Montgomery arithmetic (32-bit limbs, 64-bit products:
/// native on wasm32). Parse once per JWKS load, verify many times.
#[derive(Clone, Debug)]
pub struct RsaPublicKey {
    /// Modulus, little-endian `u32` limbs, no leading zero limb, odd, `s` limbs.
    n: Vec<u32>,
    /// `R^2 mod n` with `R = 2^(32 s)`, `s` limbs.
    rr: Vec<u32>,
    /// `-n^-1 mod 2^32`.
    n0inv: u32,
    /// Public exponent: odd, `3 <= e <= 2^32 - 1`.
    e: u64,
    /// Significant bits of `n`.
    bits: usize,
}

impl RsaPublicKey {
    /// `n` and `e` as unsigned big-endian bytes (the JWK "n" / "e" after base64url decoding;
    /// leading zero bytes allowed).
    ///
    /// Accepts moduli of 2048 to 8192 bits (RFC 7518 requires at least 2048) that are odd, and
    /// odd exponents `3 <= e <= 2^32 - 1` (e = 65537 is by far the most common and the
    /// fastest). The cap bounds the cost of one verification: a JWKS cannot make each check
    /// take 64 squarings per bit of a huge exponent (RFC 8017 allows any e, real keys use 65537).
    pub fn from_be_bytes(n: &[u8], e: &[u8]) -> Result<Self, RsaKeyError> {
        let n_bytes = strip_leading_zeros(n);
        let bits = match n_bytes.first() {
            Some(&top) => n_bytes.len() * 8 - top.leading_zeros() as usize,
            None => 0,
        };
        if bits < MIN_BITS {
            return Err(RsaKeyError::ModulusTooSmall { bits });
        }
        if bits > MAX_BITS {
            return Err(RsaKeyError::ModulusTooLarge { bits });
        }
        if n_bytes.last().is_none_or(|&b| b & 1 == 0) {
            return Err(RsaKeyError::EvenModulus);
        }

        let e_bytes = strip_leading_zeros(e);
        if e_bytes.is_empty() || e_bytes.len() > 4 {
            return Err(RsaKeyError::BadExponent);
        }
        let e = e_bytes
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        // n has at least 2048 bits, so e < 2^32 < n always holds.
        if e < 3 || e & 1 == 0 {
            return Err(RsaKeyError::BadExponent);
        }

        let s = bits.div_ceil(32);
        let mut n_limbs = vec![0u32; s];
        be_bytes_to_limbs(n_bytes, &mut n_limbs);
        let n0inv = neg_inv_u32(n_limbs.first().copied().unwrap_or(1));
        let rr = r_squared_mod(&n_limbs, n0inv, bits);
        Ok(RsaPublicKey {
            n: n_limbs,
            rr,
            n0inv,
            e,
            bits,
        })
    }

    /// Significant bits of the modulus.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Size of the modulus in bytes (a valid signature has exactly this length).
    pub fn size(&self) -> usize {
        self.bits.div_ceil(8)
    }

    /// The modulus as unsigned big-endian bytes (no leading zero byte).
    pub fn modulus_be(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size()];
        limbs_to_be_bytes(&self.n, &mut out);
        out
    }

    /// The public exponent.
    pub fn exponent(&self) -> u64 {
        self.e
    }

    /// RSAVP1 (RFC 8017 section 5.2.2): `signature^e mod n` as `size()` big-endian bytes.
    ///
    /// Returns `None` if the signature is not exactly `size()` bytes or is not `< n`. This is
    /// the raw operation with no padding check; use the `verify_*` methods to verify.
    pub fn rsavp1(&self, signature: &[u8]) -> Option<Vec<u8>> {
        let mut em = vec![0u8; self.size()];
        self.rsavp1_into(signature, &mut em).then_some(em)
    }

    /// RSASSA-PKCS1-v1_5 verify (RFC 8017 8.2.2) given the message DIGEST (already hashed
    /// with `hash`).
    ///
    /// The recovered encoded message must equal `00 01 FF..FF 00 || DigestInfo || digest`
    /// byte for byte (the padding string has at least 8 bytes, RFC 8017 9.2).
    pub fn verify_pkcs1v15(&self, hash: HashAlg, digest: &[u8], signature: &[u8]) -> bool {
        if digest.len() != hash.output_len() {
            return false;
        }
        let mut buf = [0u8; MAX_BYTES];
        let Some(em) = buf.get_mut(..self.size()) else {
            return false;
        };
        if !self.rsavp1_into(signature, em) {
            return false;
        }
        let prefix = hash.digest_info_prefix();
        let t_len = prefix.len() + digest.len();
        // 00 01 PS 00 T with |PS| >= 8.
        let Some(ps_len) = em.len().checked_sub(t_len + 3) else {
            return false;
        };
        if ps_len < 8 {
            return false;
        }
        let expected = [0x00, 0x01]
            .iter()
            .chain(core::iter::repeat_n(&0xff, ps_len))
            .chain(&[0x00])
            .chain(prefix)
            .chain(digest);
        em.iter().eq(expected)
    }

    /// RSASSA-PSS verify (RFC 8017 8.1.2, EMSA-PSS-VERIFY 9.1.2) with MGF1 using the same
    /// hash and salt length = hash length (as JWA RFC 7518 3.5 requires), given the message
    /// digest.
    pub fn verify_pss(&self, hash: HashAlg, digest: &[u8], signature: &[u8]) -> bool {
        if digest.len() != hash.output_len() {
            return false;
        }
        let mut buf = [0u8; MAX_BYTES];
        let Some(full) = buf.get_mut(..self.size()) else {
            return false;
        };
        if !self.rsavp1_into(signature, full) {
            return false;
        }
        // RFC 8017 8.1.2 step 2c: EM = I2OSP(m, emLen) with emBits = modBits - 1. When
        // modBits = 8 k' + 1 the encoded message is one byte shorter than the modulus and
        // the extra leading byte must be zero (I2OSP would fail otherwise).
        let em_bits = self.bits.saturating_sub(1);
        let em_len = em_bits.div_ceil(8);
        let Some((extra, em)) = full.split_at_mut_checked(full.len().saturating_sub(em_len)) else {
            return false;
        };
        if extra.iter().any(|&b| b != 0) {
            return false;
        }
        match hash {
            HashAlg::Sha256 => emsa_pss_verify::<Sha256>(digest, em, em_bits),
            HashAlg::Sha384 => emsa_pss_verify::<Sha384>(digest, em, em_bits),
            HashAlg::Sha512 => emsa_pss_verify::<Sha512>(digest, em, em_bits),
        }
    }

    /// RSAVP1 into `em` (exactly `size()` bytes). False if the signature has the wrong length
    /// or is not `< n`.
    fn rsavp1_into(&self, signature: &[u8], em: &mut [u8]) -> bool {
        let s = self.n.len();
        if signature.len() != self.size() || em.len() != self.size() {
            return false;
        }
        // Scratch on the stack, sized for the largest key (5 KiB): no allocation per call.
        let mut base_buf = [0u32; MAX_LIMBS];
        let mut acc_buf = [0u32; MAX_LIMBS];
        let mut wide_buf = [0u32; 2 * MAX_LIMBS];
        let (Some(base), Some(acc), Some(wide)) = (
            base_buf.get_mut(..s),
            acc_buf.get_mut(..s),
            wide_buf.get_mut(..2 * s),
        ) else {
            return false;
        };
        be_bytes_to_limbs(signature, base);
        if !less_than(base, &self.n) {
            return false;
        }
        self.modpow(base, acc, wide);
        limbs_to_be_bytes(acc, em);
        true
    }

    /// `out = base^e mod n` by left-to-right square-and-multiply in Montgomery form.
    ///
    /// `base < n`; `base` and `out` have `s` limbs, `wide` has `2 s` (scratch).
    fn modpow(&self, base: &[u32], out: &mut [u32], wide: &mut [u32]) {
        let mont = Mont {
            n: &self.n,
            n0inv: self.n0inv,
        };
        // bm = base·R mod n, the Montgomery form of the base.
        let mut bm_buf = [0u32; MAX_LIMBS];
        let Some(bm) = bm_buf.get_mut(..self.n.len()) else {
            return;
        };
        let carry = mont.mul(wide, base, &self.rr);
        mont.finish(wide, carry, bm);
        for (o, &b) in out.iter_mut().zip(bm.iter()) {
            *o = b;
        }
        if self.e == 65537 {
            // 65537 = 2^16 + 1: 16 squarings, then the final multiplication below.
            for _ in 0..16 {
                mont.sqr_assign(wide, out);
            }
        } else {
            // Bits below the top one, except bit 0 (always set, handled below).
            let top = self.e.checked_ilog2().unwrap_or(0);
            for bit in (1..top).rev() {
                mont.sqr_assign(wide, out);
                if (self.e >> bit) & 1 == 1 {
                    mont.mul_assign(wide, out, bm);
                }
            }
            mont.sqr_assign(wide, out);
        }
        // Last bit: multiply by the *plain* base, which also leaves Montgomery form:
        // (x·R)·base·R^-1 = x·base.
        mont.mul_assign(wide, out, base);
    }
}

/// EMSA-PSS-VERIFY (RFC 8017 9.1.2) with sLen = hLen, steps 3 to 14. `em` is the encoded
/// message (`emLen = ceil(emBits / 8)` bytes) and is used as scratch for DB.
fn emsa_pss_verify<D: Digest>(m_hash: &[u8], em: &mut [u8], em_bits: usize) -> bool {
    let h_len = <D as Digest>::output_size();
    let s_len = h_len;
    let em_len = em.len();
    // 3. emLen >= hLen + sLen + 2.
    let Some(ps_len) = em_len.checked_sub(h_len + s_len + 2) else {
        return false;
    };
    // 4. The rightmost octet is 0xbc.
    let Some((&mut last, rest)) = em.split_last_mut() else {
        return false;
    };
    if last != 0xbc {
        return false;
    }
    // 5. maskedDB || H.
    let Some((db, h)) = rest.split_at_mut_checked(em_len - h_len - 1) else {
        return false;
    };
    // 6. The leftmost 8 emLen - emBits bits of maskedDB must be zero.
    let unused_bits = 8 * em_len - em_bits;
    let keep_mask = 0xffu8.checked_shr(unused_bits as u32).unwrap_or(0);
    let Some(db0) = db.first() else {
        return false;
    };
    if db0 & !keep_mask != 0 {
        return false;
    }
    // 7-8. DB = maskedDB xor MGF1(H, emLen - hLen - 1).
    mgf1_xor::<D>(h, db);
    // 9. Clear the unused leftmost bits.
    if let Some(db0) = db.first_mut() {
        *db0 &= keep_mask;
    }
    // 10. DB = PS (zeros) || 0x01 || salt.
    let Some((ps, rest)) = db.split_at_checked(ps_len) else {
        return false;
    };
    let Some((&one, salt)) = rest.split_first() else {
        return false;
    };
    if ps.iter().any(|&b| b != 0) || one != 0x01 || salt.len() != s_len {
        return false;
    }
    // 12-14. H' = Hash(00 x 8 || mHash || salt) must equal H.
    let mut hasher = D::new();
    hasher.update([0u8; 8]);
    hasher.update(m_hash);
    hasher.update(salt);
    hasher.finalize()[..] == *h
}

/// `out ^= MGF1(seed, out.len())` (RFC 8017 B.2.1).
fn mgf1_xor<D: Digest>(seed: &[u8], out: &mut [u8]) {
    let h_len = <D as Digest>::output_size();
    for (counter, chunk) in (0u32..).zip(out.chunks_mut(h_len)) {
        let mut hasher = D::new();
        hasher.update(seed);
        hasher.update(counter.to_be_bytes());
        let mask = hasher.finalize();
        for (o, m) in chunk.iter_mut().zip(mask.iter()) {
            *o ^= m;
        }
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    bytes.get(zeros..).unwrap_or(&[])
}

/// Big-endian bytes into little-endian limbs. Limbs beyond the input are zeroed; input bytes
/// beyond `limbs` (most significant ones) are ignored — callers size `limbs` to fit.
fn be_bytes_to_limbs(bytes: &[u8], limbs: &mut [u32]) {
    limbs.fill(0);
    for (limb, chunk) in limbs.iter_mut().zip(bytes.rchunks(4)) {
        *limb = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    }
}

/// Little-endian limbs into exactly `out.len()` big-endian bytes (truncating or zero-padding
/// at the most significant end).
fn limbs_to_be_bytes(limbs: &[u32], out: &mut [u8]) {
    for (i, byte) in out.iter_mut().rev().enumerate() {
        let limb = limbs.get(i / 4).copied().unwrap_or(0);
        *byte = (limb >> (8 * (i % 4))) as u8;
    }
}

/// `a < b` for equal-length limb slices.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a -= b` modulo `2^(32 len)` (the borrow out of the top limb is dropped).
fn sub_assign(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0u64;
    for (x, &y) in a.iter_mut().zip(b) {
        let d = u64::from(*x)
            .wrapping_sub(u64::from(y))
            .wrapping_sub(borrow);
        *x = d as u32;
        borrow = d >> 63;
    }
}

/// `-n0^-1 mod 2^32` for odd `n0`, by Newton's iteration `x <- x (2 - n0 x)`, which doubles
/// the number of correct low bits each step; `x = n0` is correct to 3 bits (odd squares are
/// 1 mod 8), so four steps reach 48 >= 32 bits.
fn neg_inv_u32(n0: u32) -> u32 {
    let mut x = n0;
    for _ in 0..4 {
        x = x.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(x)));
    }
    x.wrapping_neg()
}

/// Rows handled per sweep by the multiply-accumulate kernel (see [`mac_rows`]). Measured under
/// Node 20's V8 for 2048-bit moduli: 1 row ≈ 1.2×, 2 rows ≈ 1.07×, 6 rows ≈ 1.1×, 8 rows
/// ≈ 1.35× the time of 4 rows (more chains than registers start to spill).
const ROWS: usize = 4;
const LOW32: u64 = 0xffff_ffff;

/// Montgomery arithmetic modulo one key's `n`.
///
/// Every routine leaves a value `< 2n` as `s` limbs in `t[s..2s]` of the double-width scratch
/// buffer `t` plus a carry bit, and [`Mont::finish`] reduces it below `n` with at most one
/// subtraction. Operands must be `< n` and `s` limbs long, `t` exactly `2 s` limbs.
struct Mont<'a> {
    n: &'a [u32],
    n0inv: u32,
}

impl Mont<'_> {
    /// `t = a·b` (separated operand scanning, [`ROWS`] limbs of `b` per pass), then
    /// [`Mont::reduce`]. Returns the carry bit above `t[2s-1]`.
    ///
    /// Not inlined (nor is [`Mont::sqr`]): with everything inlined into the exponentiation
    /// loop, verification was about 1.5 (native) to 1.7 (V8) times slower.
    #[inline(never)]
    fn mul(&self, t: &mut [u32], a: &[u32], b: &[u32]) -> u64 {
        let s = self.n.len();
        t.fill(0);
        let mut groups = b.chunks_exact(ROWS);
        let mut i = 0;
        for group in &mut groups {
            let mut m = [0u64; ROWS];
            for (mq, &bq) in m.iter_mut().zip(group) {
                *mq = u64::from(bq);
            }
            if let Some(window) = t.get_mut(i..i + s + ROWS - 1) {
                let c = mac_rows(window, a, &m);
                propagate(t, i + s + ROWS - 1, c);
            }
            i += ROWS;
        }
        for &bi in groups.remainder() {
            if let Some(window) = t.get_mut(i..i + s) {
                let c = mac_rows(window, a, &[u64::from(bi)]);
                propagate(t, i + s, c);
            }
            i += 1;
        }
        self.reduce(t)
    }

    /// `t = x^2`, each cross product `x_i x_j` (`i < j`) computed once, then
    /// [`Mont::reduce`]. Returns the carry bit above `t[2s-1]`.
    ///
    /// 1. Cross products, [`ROWS`] rows per group: the products inside the group
    ///    (`i <= a < b < i + ROWS`) one by one, then the rectangle of rows `x_i..x_{i+ROWS}`
    ///    times `x_{i+ROWS..s}` with the kernel, which starts at limb `2 i + ROWS`.
    /// 2. `t = 2 t + sum x_i^2 2^(64 i)` in one pass over limb pairs.
    #[inline(never)]
    fn sqr(&self, t: &mut [u32], x: &[u32]) -> u64 {
        let s = self.n.len();
        t.fill(0);
        let mut i = 0;
        while i + ROWS <= s {
            let (Some(group), Some(rest)) = (x.get(i..i + ROWS), x.get(i + ROWS..)) else {
                break;
            };
            for (a, &xa) in group.iter().enumerate() {
                for (b, &xb) in group.iter().enumerate().skip(a + 1) {
                    propagate(t, 2 * i + a + b, u64::from(xa) * u64::from(xb));
                }
            }
            let mut m = [0u64; ROWS];
            for (mq, &xq) in m.iter_mut().zip(group) {
                *mq = u64::from(xq);
            }
            let start = 2 * i + ROWS;
            let end = start + rest.len() + ROWS - 1;
            if let Some(window) = t.get_mut(start..end) {
                let c = mac_rows(window, rest, &m);
                propagate(t, end, c);
            }
            i += ROWS;
        }
        for (i, &xi) in x.iter().enumerate().skip(i) {
            let rest = x.get(i + 1..).unwrap_or(&[]);
            let start = 2 * i + 1;
            let end = start + rest.len();
            if let Some(window) = t.get_mut(start..end) {
                let c = mac_rows(window, rest, &[u64::from(xi)]);
                propagate(t, end, c);
            }
        }

        // 2. Double and add the squares: `shift_in` is the bit shifted out of the previous
        //    limb, `c` the carry of the addition. The total x^2 < 2^(64 s) cannot overflow.
        let mut shift_in = 0u32;
        let mut c = 0u64;
        let (pairs, _) = t.as_chunks_mut::<2>();
        for (pair, &xi) in pairs.iter_mut().zip(x) {
            let sq = u64::from(xi) * u64::from(xi);
            let [lo, hi] = *pair;
            let p = u64::from((lo << 1) | shift_in) + (sq & LOW32) + c;
            let q = u64::from((hi << 1) | (lo >> 31)) + (sq >> 32) + (p >> 32);
            shift_in = hi >> 31;
            *pair = [p as u32, q as u32];
            c = q >> 32;
        }
        self.reduce(t)
    }

    /// Montgomery reduction of the `2 s`-limb `t < n·R` in place: adds `M·n` with
    /// `M < R` chosen limb by limb so the low `s` limbs become zero; then
    /// `t / R = (t + M n) / R < 2n` sits in `t[s..2s]` plus the returned carry bit.
    ///
    /// [`ROWS`] multipliers `m_i..m_{i+ROWS}` per pass: they are found first on a copy of
    /// the window's low limbs ([`Mont::multipliers`]), then the kernel adds all rows at once.
    fn reduce(&self, t: &mut [u32]) -> u64 {
        let n = self.n;
        let s = n.len();
        let mut top = 0u64;
        let mut i = 0;
        while i + ROWS <= s {
            let Some(window) = t.get_mut(i..i + s + ROWS - 1) else {
                break;
            };
            let m = self.multipliers(window);
            let c = mac_rows(window, n, &m);
            top += propagate(t, i + s + ROWS - 1, c);
            i += ROWS;
        }
        while i < s {
            let Some(window) = t.get_mut(i..i + s) else {
                break;
            };
            let m = window
                .first()
                .map_or(0, |&w| u64::from(w.wrapping_mul(self.n0inv)));
            let c = mac_rows(window, n, &[m]);
            top += propagate(t, i + s, c);
            i += 1;
        }
        top
    }

    /// The next [`ROWS`] reduction multipliers for a window starting at limb `i`:
    /// `m_q = (limb q of t + sum_{r<q} m_r n 2^(32 r)) · n0inv mod 2^32`. Only the low
    /// [`ROWS`] limbs matter, so this works on a small copy (carries out of it are dropped).
    fn multipliers(&self, window: &[u32]) -> [u64; ROWS] {
        let mut low = [0u64; ROWS];
        for (l, &w) in low.iter_mut().zip(window) {
            *l = u64::from(w);
        }
        let mut m = [0u64; ROWS];
        for (q, mq) in m.iter_mut().enumerate() {
            let lq = low.get(q).copied().unwrap_or(0);
            *mq = u64::from((lq as u32).wrapping_mul(self.n0inv));
            let mut c = 0u64;
            for (l, &nj) in low.iter_mut().skip(q).zip(self.n) {
                let p = *l + *mq * u64::from(nj) + c;
                *l = p & LOW32;
                c = p >> 32;
            }
        }
        m
    }

    /// `out = t[s..2s] (+ carry·R) mod n` for a value `< 2n`: one conditional subtraction.
    fn finish(&self, t: &[u32], carry: u64, out: &mut [u32]) {
        let s = self.n.len();
        for (o, &v) in out.iter_mut().zip(t.iter().skip(s)) {
            *o = v;
        }
        if carry != 0 || !less_than(out, self.n) {
            sub_assign(out, self.n);
        }
    }

    /// `x = x·x·R^-1 mod n` in place.
    fn sqr_assign(&self, t: &mut [u32], x: &mut [u32]) {
        let carry = self.sqr(t, x);
        self.finish(t, carry, x);
    }

    /// `x = x·b·R^-1 mod n` in place.
    fn mul_assign(&self, t: &mut [u32], x: &mut [u32], b: &[u32]) {
        let carry = self.mul(t, x, b);
        self.finish(t, carry, x);
    }
}

/// The inner loop of every product: `w += sum_q m[q]·src·2^(32 q)`, i.e. `K` operand-scanning
/// rows at once, one carry chain per row. Returns the carry out of `w`'s last limb (less than
/// `K·2^32`), which the caller propagates.
///
/// `w` must have `src.len() + K - 1` limbs: the limb at position `j` receives
/// `m[q]·src[j - q]` for every row `q` with `0 <= j - q < src.len()`. The kernel slides a
/// window `nw` (`nw[q] = src[j - q]`, zero outside `src`) along `src`, so each limb of `w` is
/// loaded and stored once per `K` products instead of once per product, which is what makes
/// it faster than one row at a time in V8. Each chain step `v + m·x + c` with all terms below
/// `2^32` stays below `2^64`.
#[inline(always)]
fn mac_rows<const K: usize>(w: &mut [u32], src: &[u32], m: &[u64; K]) -> u64 {
    let mut carries = [0u64; K];
    let mut nw = [0u64; K];
    let (head, tail) = w.split_at_mut(src.len().min(w.len()));
    // Positions where a new limb of src enters the window, then the K - 1 positions where
    // the window drains.
    for (wj, &x) in head.iter_mut().zip(src) {
        mac_step(wj, u64::from(x), &mut nw, &mut carries, m);
    }
    for wj in tail.iter_mut().take(K.saturating_sub(1)) {
        mac_step(wj, 0, &mut nw, &mut carries, m);
    }
    carries.iter().sum()
}

/// One limb of [`mac_rows`]: slide `x` into the window and run every chain once.
#[inline(always)]
fn mac_step<const K: usize>(
    wj: &mut u32,
    x: u64,
    nw: &mut [u64; K],
    carries: &mut [u64; K],
    m: &[u64; K],
) {
    let previous = *nw;
    for (dst, &src) in nw.iter_mut().skip(1).zip(&previous) {
        *dst = src;
    }
    if let Some(first) = nw.first_mut() {
        *first = x;
    }
    let mut v = u64::from(*wj);
    for ((c, &mq), &xq) in carries.iter_mut().zip(m).zip(nw.iter()) {
        let p = v + mq * xq + *c;
        *c = p >> 32;
        v = p & LOW32;
    }
    *wj = v as u32;
}

/// Adds `c` at limb `pos` of `t` and ripples the carry up; returns what falls off the top.
fn propagate(t: &mut [u32], pos: usize, mut c: u64) -> u64 {
    for limb in t.iter_mut().skip(pos) {
        if c == 0 {
            break;
        }
        let v = u64::from(*limb) + (c & LOW32);
        *limb = v as u32;
        c = (c >> 32) + (v >> 32);
    }
    c
}

/// `R^2 mod n` with `R = 2^(32 s)`, computed once per key.
///
/// Write `32 s = a·2^k` with `a` odd. Start from `2^(bits-1) < n` and double modulo `n` up to
/// `2^(32 s + a) = 2^a·R mod n`, the Montgomery form of `2^a` (at most `32 + s` doublings).
/// Each Montgomery squaring doubles the exponent of that form, so `k` squarings give the form
/// of `2^(32 s)`, which is `2^(32 s)·R = R^2 mod n`.
fn r_squared_mod(n: &[u32], n0inv: u32, bits: usize) -> Vec<u32> {
    let s = n.len();
    let mut x = vec![0u32; s];
    let top_bit = bits.saturating_sub(1);
    if let Some(limb) = x.get_mut(top_bit / 32) {
        *limb = 1 << (top_bit % 32);
    }
    let k = (32 * s).trailing_zeros();
    let a = (32 * s) >> k;
    for _ in top_bit..32 * s + a {
        // x < n, so 2x < 2n: one conditional subtraction reduces it.
        let mut carry = 0u32;
        for limb in x.iter_mut() {
            let next = *limb >> 31;
            *limb = (*limb << 1) | carry;
            carry = next;
        }
        if carry != 0 || !less_than(&x, n) {
            sub_assign(&mut x, n);
        }
    }
    let mont = Mont { n, n0inv };
    let mut t = vec![0u32; 2 * s];
    for _ in 0..k {
        mont.sqr_assign(&mut t, &mut x);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};
    use rsa::traits::PublicKeyParts;
    use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPrivateKey};
    use std::sync::OnceLock;

    const HASHES: [HashAlg; 3] = [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512];

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Scheme {
        Pkcs1,
        Pss,
    }

    struct TestKey {
        private: RsaPrivateKey,
        theirs: rsa::RsaPublicKey,
        ours: RsaPublicKey,
    }

    /// Keys generated once (in parallel) from fixed seeds. Sizes cover the common ones and a
    /// modulus of 8k+1 bits, where the PSS encoded message is one byte shorter than n; one
    /// key has e = 3 (the others 65537).
    fn keys() -> &'static [TestKey] {
        static KEYS: OnceLock<Vec<TestKey>> = OnceLock::new();
        KEYS.get_or_init(|| {
            let specs: [(usize, u64, u32); 6] = [
                (2048, 1, 65537),
                (2048, 2, 65537),
                (2049, 3, 65537),
                (3072, 4, 65537),
                (4096, 5, 65537),
                (2048, 6, 3),
            ];
            std::thread::scope(|scope| {
                let handles: Vec<_> = specs
                    .iter()
                    .map(|&(bits, seed, e)| {
                        scope.spawn(move || {
                            let mut rng = StdRng::seed_from_u64(0xed6e_0000 + seed);
                            RsaPrivateKey::new_with_exp(&mut rng, bits, &BigUint::from(e)).unwrap()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        let private = h.join().unwrap();
                        let theirs = private.to_public_key();
                        let ours = RsaPublicKey::from_be_bytes(
                            &theirs.n().to_bytes_be(),
                            &theirs.e().to_bytes_be(),
                        )
                        .unwrap();
                        TestKey {
                            private,
                            theirs,
                            ours,
                        }
                    })
                    .collect()
            })
        })
    }

    fn digest(hash: HashAlg, msg: &[u8]) -> Vec<u8> {
        match hash {
            HashAlg::Sha256 => Sha256::digest(msg).to_vec(),
            HashAlg::Sha384 => Sha384::digest(msg).to_vec(),
            HashAlg::Sha512 => Sha512::digest(msg).to_vec(),
        }
    }

    fn pkcs1(hash: HashAlg) -> Pkcs1v15Sign {
        match hash {
            HashAlg::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
            HashAlg::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
            HashAlg::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
        }
    }

    fn pss(hash: HashAlg) -> Pss {
        match hash {
            HashAlg::Sha256 => Pss::new::<Sha256>(),
            HashAlg::Sha384 => Pss::new::<Sha384>(),
            HashAlg::Sha512 => Pss::new::<Sha512>(),
        }
    }

    fn sign(
        key: &TestKey,
        scheme: Scheme,
        hash: HashAlg,
        digest: &[u8],
        rng: &mut StdRng,
    ) -> Vec<u8> {
        match scheme {
            Scheme::Pkcs1 => key.private.sign(pkcs1(hash), digest).unwrap(),
            Scheme::Pss => key.private.sign_with_rng(rng, pss(hash), digest).unwrap(),
        }
    }

    fn ours(key: &RsaPublicKey, scheme: Scheme, hash: HashAlg, digest: &[u8], sig: &[u8]) -> bool {
        match scheme {
            Scheme::Pkcs1 => key.verify_pkcs1v15(hash, digest, sig),
            Scheme::Pss => key.verify_pss(hash, digest, sig),
        }
    }

    fn theirs(
        key: &rsa::RsaPublicKey,
        scheme: Scheme,
        hash: HashAlg,
        digest: &[u8],
        sig: &[u8],
    ) -> bool {
        match scheme {
            Scheme::Pkcs1 => key.verify(pkcs1(hash), digest, sig).is_ok(),
            Scheme::Pss => key.verify(pss(hash), digest, sig).is_ok(),
        }
    }

    /// Our verdict, asserted equal to the rsa crate's.
    fn verdict(key: &TestKey, scheme: Scheme, hash: HashAlg, digest: &[u8], sig: &[u8]) -> bool {
        let a = ours(&key.ours, scheme, hash, digest, sig);
        let b = theirs(&key.theirs, scheme, hash, digest, sig);
        assert_eq!(
            a,
            b,
            "{scheme:?} {hash:?} {}-bit key disagrees with the rsa crate",
            key.ours.bits()
        );
        a
    }

    fn random_odd_modulus(rng: &mut StdRng, bits: usize) -> Vec<u8> {
        let mut n = vec![0u8; bits.div_ceil(8)];
        rng.fill_bytes(&mut n);
        let top_bits = bits - 8 * (n.len() - 1);
        n[0] &= 0xff >> (8 - top_bits);
        n[0] |= 1 << (top_bits - 1);
        *n.last_mut().unwrap() |= 1;
        n
    }

    fn reference_modpow(n: &[u8], e: u64, base: &[u8]) -> Vec<u8> {
        let n = BigUint::from_bytes_be(n);
        let r = BigUint::from_bytes_be(base).modpow(&BigUint::from(e), &n);
        let bytes = r.to_bytes_be();
        let mut out = vec![0u8; n.bits().div_ceil(8) - bytes.len()];
        out.extend_from_slice(&bytes);
        out
    }

    #[test]
    fn valid_signatures_verify() {
        let mut rng = StdRng::seed_from_u64(11);
        for key in keys() {
            for scheme in [Scheme::Pkcs1, Scheme::Pss] {
                for hash in HASHES {
                    for len in [0usize, 1, 77] {
                        let mut msg = vec![0u8; len];
                        rng.fill_bytes(&mut msg);
                        let d = digest(hash, &msg);
                        let sig = sign(key, scheme, hash, &d, &mut rng);
                        assert_eq!(sig.len(), key.ours.size());
                        assert!(
                            verdict(key, scheme, hash, &d, &sig),
                            "{scheme:?} {hash:?} {}",
                            key.ours.bits()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn tampered_signatures_are_rejected() {
        let mut rng = StdRng::seed_from_u64(12);
        let all = keys();
        for (ki, key) in all.iter().enumerate() {
            for scheme in [Scheme::Pkcs1, Scheme::Pss] {
                for hash in HASHES {
                    let mut msg = [0u8; 40];
                    rng.fill_bytes(&mut msg);
                    let d = digest(hash, &msg);
                    let sig = sign(key, scheme, hash, &d, &mut rng);

                    // A flipped bit anywhere in the signature.
                    for _ in 0..2 {
                        let mut bad = sig.clone();
                        let bit = rng.gen_range(0..bad.len() * 8);
                        bad[bit / 8] ^= 1 << (bit % 8);
                        assert!(!ours(&key.ours, scheme, hash, &d, &bad));
                        if bad < key.theirs.n().to_bytes_be() {
                            assert!(!verdict(key, scheme, hash, &d, &bad));
                        }
                    }
                    // A flipped bit in the digest.
                    for _ in 0..1 {
                        let mut bad = d.clone();
                        let bit = rng.gen_range(0..bad.len() * 8);
                        bad[bit / 8] ^= 1 << (bit % 8);
                        assert!(!verdict(key, scheme, hash, &bad, &sig));
                    }
                    // Wrong hash: other algorithms with the right-length digest of the same
                    // message, and with the original digest (wrong length).
                    for other in HASHES.into_iter().filter(|&h| h != hash) {
                        assert!(!verdict(key, scheme, other, &digest(other, &msg), &sig));
                        assert!(!verdict(key, scheme, other, &d, &sig));
                    }
                    // The other scheme.
                    let other_scheme = match scheme {
                        Scheme::Pkcs1 => Scheme::Pss,
                        Scheme::Pss => Scheme::Pkcs1,
                    };
                    assert!(!verdict(key, other_scheme, hash, &d, &sig));
                    // Truncated and extended signatures.
                    assert!(!verdict(key, scheme, hash, &d, &sig[1..]));
                    assert!(!verdict(key, scheme, hash, &d, &sig[..sig.len() - 1]));
                    let mut longer = sig.clone();
                    longer.push(0);
                    assert!(!verdict(key, scheme, hash, &d, &longer));
                    let mut longer = vec![0u8];
                    longer.extend_from_slice(&sig);
                    assert!(!verdict(key, scheme, hash, &d, &longer));
                    assert!(!verdict(key, scheme, hash, &d, &[]));
                    // Digest of the wrong length for the hash.
                    assert!(!verdict(key, scheme, hash, &d[1..], &sig));
                    // Signature >= n: n itself, sig + n when it still fits, all ones. The rsa
                    // crate's PSS path reduces the signature mod n instead of rejecting it
                    // (RFC 8017 8.1.2 step 2 requires rejection), so only ours is checked
                    // there.
                    let n = key.theirs.n();
                    let size = key.ours.size();
                    let mut too_big = vec![n.to_bytes_be(), vec![0xff; size]];
                    let sum = (BigUint::from_bytes_be(&sig) + n).to_bytes_be();
                    if sum.len() == size {
                        too_big.push(sum);
                    }
                    for bad in &too_big {
                        assert_eq!(bad.len(), size);
                        assert!(!ours(&key.ours, scheme, hash, &d, bad));
                        if scheme == Scheme::Pkcs1 {
                            assert!(!verdict(key, scheme, hash, &d, bad));
                        }
                    }
                    // Trivial values.
                    let zero = vec![0u8; size];
                    let mut one = vec![0u8; size];
                    one[size - 1] = 1;
                    assert!(!verdict(key, scheme, hash, &d, &zero));
                    assert!(!verdict(key, scheme, hash, &d, &one));
                    // A signature by another key (the next one, of a different size or not),
                    // checked with this one.
                    {
                        let other = &all[(ki + 1) % all.len()];
                        let other_sig = sign(other, scheme, hash, &d, &mut rng);
                        let fits = other_sig.len() == size && other_sig < n.to_bytes_be();
                        assert!(!ours(&key.ours, scheme, hash, &d, &other_sig));
                        if fits || scheme == Scheme::Pkcs1 {
                            assert!(!verdict(key, scheme, hash, &d, &other_sig));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rsavp1_matches_biguint_modpow() {
        let mut rng = StdRng::seed_from_u64(13);
        let bit_sizes = [
            2048usize, 2049, 2079, 2080, 2081, 3000, 3072, 4095, 4096, 6001, 8191, 8192,
        ];
        let large = [17u64, 257, 0x8000_0001, 0xffff_fffd, u64::from(u32::MAX)];
        let mut moduli: Vec<Vec<u8>> = bit_sizes
            .iter()
            .map(|&bits| random_odd_modulus(&mut rng, bits))
            .collect();
        // Extremes for the carries and the final subtraction: 2^k - 1 (limbs all ones) and
        // 2^(k-1) + 1 (a single high bit).
        for bytes in [256usize, 260, 512] {
            moduli.push(vec![0xff; bytes]);
            let mut low = vec![0u8; bytes];
            low[0] = 0x80;
            low[bytes - 1] = 1;
            moduli.push(low);
        }
        for (i, n) in moduli.into_iter().enumerate() {
            let bits = BigUint::from_bytes_be(&n).bits();
            // 3, 65537 and, up to 4096 bits, one more exponent per size (the test build is
            // unoptimised and a 32-bit exponent costs twice as much as 65537).
            let extra = (bits <= 4096).then(|| large[i % large.len()]);
            for e in [3, 65537].into_iter().chain(extra) {
                let key = RsaPublicKey::from_be_bytes(&n, &e.to_be_bytes()).unwrap();
                assert_eq!(key.bits(), bits);
                assert_eq!(key.size(), n.len());
                assert_eq!(key.exponent(), e);
                let n_big = BigUint::from_bytes_be(&n);
                let n_minus_1 = (&n_big - 1u32).to_bytes_be();
                let mut bases = vec![vec![0u8; n.len()], n_minus_1];
                for _ in 0..2 {
                    let mut b = vec![0u8; n.len()];
                    rng.fill_bytes(&mut b);
                    b = (BigUint::from_bytes_be(&b) % &n_big).to_bytes_be();
                    bases.push(b);
                }
                bases.push(vec![1]);
                for base in bases {
                    let mut padded = vec![0u8; n.len() - base.len()];
                    padded.extend_from_slice(&base);
                    assert_eq!(
                        key.rsavp1(&padded).unwrap(),
                        reference_modpow(&n, e, &padded),
                        "bits {bits} e {e}"
                    );
                }
                // Out of range inputs.
                assert_eq!(key.rsavp1(&n), None);
                assert_eq!(key.rsavp1(&n[1..]), None);
                assert_eq!(key.rsavp1(&[]), None);
            }
        }
    }

    #[test]
    fn precomputation_matches_biguint() {
        let mut rng = StdRng::seed_from_u64(14);
        for bits in [2048usize, 2050, 3071, 4096] {
            let n = random_odd_modulus(&mut rng, bits);
            let key = RsaPublicKey::from_be_bytes(&n, &[1, 0, 1]).unwrap();
            let s = key.n.len();
            assert_eq!(s, bits.div_ceil(32));
            assert_eq!(
                key.n0inv.wrapping_mul(key.n[0]),
                u32::MAX,
                "n0inv * n0 = -1"
            );
            let n_big = BigUint::from_bytes_be(&n);
            let rr = (BigUint::from(1u32) << (64 * s)) % &n_big;
            let mut rr_bytes = vec![0u8; 4 * s];
            limbs_to_be_bytes(&key.rr, &mut rr_bytes);
            assert_eq!(BigUint::from_bytes_be(&rr_bytes), rr);
        }
        for n0 in [1u32, 3, 0xffff_ffff, 0x8000_0001, 0x1234_5677] {
            assert_eq!(neg_inv_u32(n0).wrapping_mul(n0), u32::MAX);
        }
    }

    #[test]
    fn key_parsing_errors() {
        let mut rng = StdRng::seed_from_u64(15);
        let n2048 = random_odd_modulus(&mut rng, 2048);
        let f4 = [1u8, 0, 1];
        let ok = RsaPublicKey::from_be_bytes(&n2048, &f4).unwrap();
        assert_eq!((ok.bits(), ok.size(), ok.exponent()), (2048, 256, 65537));

        // Leading zero bytes are ignored in both n and e.
        let mut padded = vec![0u8; 3];
        padded.extend_from_slice(&n2048);
        let k = RsaPublicKey::from_be_bytes(&padded, &[0, 0, 1, 0, 1]).unwrap();
        assert_eq!((k.bits(), k.size(), k.exponent()), (2048, 256, 65537));
        assert_eq!(k.n, ok.n);

        let n1024 = random_odd_modulus(&mut rng, 1024);
        assert_eq!(
            RsaPublicKey::from_be_bytes(&n1024, &f4).unwrap_err(),
            RsaKeyError::ModulusTooSmall { bits: 1024 }
        );
        let n2047 = random_odd_modulus(&mut rng, 2047);
        assert_eq!(
            RsaPublicKey::from_be_bytes(&n2047, &f4).unwrap_err(),
            RsaKeyError::ModulusTooSmall { bits: 2047 }
        );
        assert_eq!(
            RsaPublicKey::from_be_bytes(&[], &f4).unwrap_err(),
            RsaKeyError::ModulusTooSmall { bits: 0 }
        );
        assert_eq!(
            RsaPublicKey::from_be_bytes(&[0; 300], &f4).unwrap_err(),
            RsaKeyError::ModulusTooSmall { bits: 0 }
        );
        let n8193 = random_odd_modulus(&mut rng, 8193);
        assert_eq!(
            RsaPublicKey::from_be_bytes(&n8193, &f4).unwrap_err(),
            RsaKeyError::ModulusTooLarge { bits: 8193 }
        );
        assert!(RsaPublicKey::from_be_bytes(&random_odd_modulus(&mut rng, 8192), &f4).is_ok());

        let mut even = n2048.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert_eq!(
            RsaPublicKey::from_be_bytes(&even, &f4).unwrap_err(),
            RsaKeyError::EvenModulus
        );

        for bad_e in [
            &[][..],
            &[0],
            &[0, 0],
            &[1],
            &[2],
            &[1, 0, 0],
            &[0, 1, 0, 0],
            &[1; 9],
            // above the 2^32 - 1 cap: each would make a verification 2-4 times as costly
            &[1, 0, 0, 0, 1],
            &[0xff; 8],
            &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert_eq!(
                RsaPublicKey::from_be_bytes(&n2048, bad_e).unwrap_err(),
                RsaKeyError::BadExponent,
                "e = {bad_e:?}"
            );
        }
        for good_e in [
            &[3u8][..],
            &[0, 3],
            &[1, 0, 1],
            &[0xff; 4],
            &[0, 0, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(
                RsaPublicKey::from_be_bytes(&n2048, good_e).is_ok(),
                "e = {good_e:?}"
            );
        }

        for err in [
            RsaKeyError::ModulusTooSmall { bits: 1024 },
            RsaKeyError::ModulusTooLarge { bits: 9000 },
            RsaKeyError::EvenModulus,
            RsaKeyError::BadExponent,
        ] {
            let msg = err.to_string();
            assert!(msg.starts_with("rsa "), "{msg}");
            assert_eq!(msg, msg.to_lowercase());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn random_signature_bytes_are_rejected(
            sig in proptest::collection::vec(any::<u8>(), 256),
            short in proptest::collection::vec(any::<u8>(), 0..600),
            key_index in any::<proptest::sample::Index>(),
            hash_index in 0usize..3,
            msg in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let key = key_index.get(keys());
            let hash = HASHES[hash_index];
            let mut full = vec![0u8; key.ours.size()];
            for (f, s) in full.iter_mut().zip(sig.iter().cycle()) {
                *f = *s;
            }
            let d = digest(hash, &msg);
            for candidate in [&full, &sig, &short] {
                prop_assert!(!key.ours.verify_pkcs1v15(hash, &d, candidate));
                prop_assert!(!key.ours.verify_pss(hash, &d, candidate));
            }
            prop_assert!(!key.ours.verify_pkcs1v15(hash, &short, &full));
            prop_assert!(!key.ours.verify_pss(hash, &short, &full));
        }

        #[test]
        fn rsavp1_matches_reference_on_random_inputs(
            bits in 2048usize..=4200,
            seed in any::<u64>(),
            e in prop_oneof![Just(65537u64), Just(3u64), any::<u32>().prop_map(|e| u64::from(e | 1)).prop_filter("e >= 3", |&e| e >= 3)],
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let n = random_odd_modulus(&mut rng, bits);
            let key = RsaPublicKey::from_be_bytes(&n, &e.to_be_bytes()).unwrap();
            let mut base = vec![0u8; n.len()];
            rng.fill_bytes(&mut base);
            let expected = if base < n { Some(reference_modpow(&n, e, &base)) } else { None };
            prop_assert_eq!(key.rsavp1(&base), expected);
        }
    }
}
