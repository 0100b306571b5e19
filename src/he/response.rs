//! What the server does to a result before it leaves (circuit privacy and size), and how the
//! client opens it. A result is a ciphertext (c0, c1), or a product of two ciphertexts the server
//! did not relinearize ([`Tensored`]: (d0, d1, d2), opened with s and s²); both take the same
//! path ([`Outgoing`]).
//!
//! - [`Ciphertext::rerandomize`] adds a fresh public-key encryption of zero: c1 becomes an RLWE
//!   sample unrelated to the server's weights (otherwise c1 = a·w would give w away). A
//!   [`Tensored`] result also gets one under the client's [`SquareKey`] in (d0, d2).
//! - [`Ciphertext::flood`] adds noise of `bits` bits to c0 ([`super::flood`]: a sum of four
//!   uniforms): when it exceeds every weight-dependent noise term by 2^κ, the decrypted noise
//!   of m coefficients is within statistical distance √(3.2·m)·2^-κ of a distribution that does
//!   not depend on the weights.
//! - [`Ciphertext::shrink`] switches to power-of-two moduli, c1 to 2^b1 and the kept
//!   coefficients of c0 to 2^b0 (Cheetah's response shrinking): only the positions the client
//!   needs travel, at the fewest bits that still decrypt.

use rand::CryptoRng;

use super::bfv::{Ciphertext, PublicKey, SecretKey};
use super::flood::flood_poly;
use super::mult::{SquareKey, Tensored};
use super::poly::{Form, RnsPoly};
use super::{HeError, HeParams, HeResult};
use crate::backend::Backend;
use crate::ring::modp::Modulus;
use crate::ring::{pack_bits, packed_len, unpack_bits};

impl Ciphertext {
    /// Adds a fresh encryption of zero under `pk` (at the ciphertext's level).
    pub fn rerandomize<R: CryptoRng + ?Sized>(
        &mut self,
        params: &HeParams,
        pk: &PublicKey,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<()> {
        rerandomize(params, &mut self.parts(), pk, None, backend, rng)
    }

    /// Adds an independent flood of `bits` bits ([`super::flood`]: |noise| ≤ 2^bits) to every
    /// coefficient of c0. Leaves coefficient form.
    pub fn flood<R: CryptoRng + ?Sized>(
        &mut self,
        params: &HeParams,
        bits: u32,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<()> {
        flood(params, &mut self.parts(), bits, backend, rng)
    }

    /// Switches to power-of-two moduli: c1 → ⌊2^c1_bits·c1/q⌉ (all N coefficients) and c0 →
    /// ⌊2^c0_bits·c0/q⌉ at the positions `keep` only. Each value may be off by one unit from the
    /// exact rounding, which the caller's noise margin absorbs.
    pub fn shrink(
        &self,
        params: &HeParams,
        keep: &[usize],
        c0_bits: u32,
        c1_bits: u32,
        backend: &dyn Backend,
    ) -> HeResult<ShrunkCiphertext> {
        shrink(params, &[&self.c0, &self.c1], keep, c0_bits, c1_bits, backend)
    }
}

/// A result on its way out of the server ([`crate::he::matmul::mask_and_seal`]: masked in its
/// constant part, re-randomized, flooded, shrunk): a ciphertext (c0, c1), or a product that was
/// not relinearized (d0, d1, d2), opened with s and s².
pub trait Outgoing {
    /// Its parts, the constant one first, then those that multiply s, s², ….
    fn parts(&mut self) -> Vec<&mut RnsPoly>;
}

impl Outgoing for Ciphertext {
    fn parts(&mut self) -> Vec<&mut RnsPoly> {
        vec![&mut self.c0, &mut self.c1]
    }
}

impl Outgoing for Tensored {
    fn parts(&mut self) -> Vec<&mut RnsPoly> {
        vec![&mut self.d0, &mut self.d1, &mut self.d2]
    }
}

/// Adds to the parts of a result a fresh encryption of zero under each key of the client that
/// the parts beyond the constant one need: `pk` (for s) to the constant part and the first,
/// `square` (for s²) to the constant part and the second. A part under s² without the square
/// key is refused: it would leave with the server's operands in it.
pub(crate) fn rerandomize<R: CryptoRng + ?Sized>(
    params: &HeParams,
    parts: &mut [&mut RnsPoly],
    pk: &PublicKey,
    square: Option<&SquareKey>,
    backend: &dyn Backend,
    rng: &mut R,
) -> HeResult<()> {
    let n = params.degree();
    let k = parts.first().map_or(0, |c0| c0.limbs.len() / n);
    for i in 1..parts.len() {
        let key = match i {
            1 => pk,
            2 => {
                &square
                    .ok_or_else(|| {
                        HeError::Shape(
                            "a product that was not relinearized needs the client's square key to leave".into(),
                        )
                    })?
                    .0
            }
            _ => return Err(HeError::Shape(format!("a result of {} parts", parts.len()))),
        };
        let zero = key.encrypt(&super::Plaintext::new(params, Vec::new())?, backend, rng)?;
        for (j, mut z) in [(0, zero.c0), (i, zero.c1)] {
            z.limbs.truncate(k * n);
            if parts[j].form() == Form::Coeff {
                z.to_coeff(params, backend)?;
            }
            parts[j].add_assign(params, &z);
        }
    }
    Ok(())
}

/// Brings every part to coefficient form and adds an independent flood of `bits` bits to
/// every coefficient of the constant part.
pub(crate) fn flood<R: CryptoRng + ?Sized>(
    params: &HeParams,
    parts: &mut [&mut RnsPoly],
    bits: u32,
    backend: &dyn Backend,
    rng: &mut R,
) -> HeResult<()> {
    for part in parts.iter_mut() {
        part.to_coeff(params, backend)?;
    }
    match parts.first_mut() {
        Some(c0) => flood_poly(params, c0, bits, rng),
        None => Ok(()),
    }
}

/// Switches the constant part (at `keep`) to 2^c0_bits and every other part (all N
/// coefficients) to 2^c1_bits.
pub(crate) fn shrink(
    params: &HeParams,
    parts: &[&RnsPoly],
    keep: &[usize],
    c0_bits: u32,
    c1_bits: u32,
    backend: &dyn Backend,
) -> HeResult<ShrunkCiphertext> {
    let n = params.degree();
    let t = params.plain_bits();
    if c0_bits <= t || c0_bits > c1_bits || c1_bits > 127 {
        return Err(HeError::Unsupported {
            params: params.name(),
            what: format!("shrink to {c0_bits}/{c1_bits} bits (needs {t} < c0 bits ≤ c1 bits ≤ 127)"),
        });
    }
    if let Some(&bad) = keep.iter().find(|&&j| j >= n) {
        return Err(HeError::Shape(format!("kept coefficient {bad} is beyond N = {n}")));
    }
    let (c0, rest) = parts.split_first().ok_or_else(|| HeError::Shape("a result of no parts".into()))?;
    let k = c0.limbs.len() / n;
    let moduli = &params.moduli()[..k];
    let coeff = |poly: &RnsPoly| -> HeResult<RnsPoly> {
        let mut poly = poly.clone();
        poly.to_coeff(params, backend)?;
        Ok(poly)
    };
    let to_c0 = PowerOfTwoSwitch::new(moduli, c0_bits)?;
    let to_c1 = PowerOfTwoSwitch::new(moduli, c1_bits)?;
    let c0 = coeff(c0)?;
    let mut parts = rest.iter().map(|part| {
        let part = coeff(part)?;
        Ok::<Vec<u128>, HeError>((0..n).map(|j| to_c1.apply(&part, n, j)).collect())
    });
    let c1 = parts.next().unwrap_or_else(|| Ok(Vec::new()))?;
    let c2 = parts.next().unwrap_or_else(|| Ok(Vec::new()))?;
    let c0 = keep.iter().map(|&j| to_c0.apply(&c0, n, j)).collect();
    Ok(ShrunkCiphertext { c0_bits, c1_bits, plain_bits: t, c0, c1, c2 })
}

/// The error for RNS primes that are not pairwise coprime (parameter sets are built from distinct
/// primes, so this names a broken invariant instead of computing with a zero inverse).
fn not_coprime(m: &Modulus) -> HeError {
    HeError::RepeatedPrime { prime: m.value() }
}

/// Constants for x ↦ ⌊2^b·x/q⌉ mod 2^b from the RNS residues of x. With x̃_i = x_i·(q/p_i)^-1
/// mod p_i, x = Σ x̃_i·q/p_i − K·q for an integer K, so 2^b·x/q ≡ Σ x̃_i·2^b/p_i (mod 2^b); each
/// term is x̃_i·⌊2^b/p_i⌋ + (x̃_i·(2^b mod p_i))/p_i, an exact integer part plus a fraction.
struct PowerOfTwoSwitch {
    bits: u32,
    /// (p_i, (q/p_i)^-1 mod p_i with its Shoup constant, ⌊2^b/p_i⌋, 2^b mod p_i)
    terms: Vec<(Modulus, u64, u64, u128, u64)>,
}

impl PowerOfTwoSwitch {
    fn new(moduli: &[Modulus], bits: u32) -> HeResult<PowerOfTwoSwitch> {
        let terms = moduli
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let q_hat =
                    moduli.iter().enumerate().filter(|&(j, _)| j != i).fold(1, |acc, (_, o)| m.mul(acc, o.value()));
                let inv = m.inv(q_hat).ok_or_else(|| not_coprime(m))?;
                let pow = 1u128 << bits;
                Ok((*m, inv, m.shoup(inv), pow / m.value() as u128, (pow % m.value() as u128) as u64))
            })
            .collect::<HeResult<_>>()?;
        Ok(PowerOfTwoSwitch { bits, terms })
    }

    fn apply(&self, poly: &RnsPoly, n: usize, j: usize) -> u128 {
        let (mut int, mut frac) = (0u128, 0f64);
        for (i, &(m, inv, inv_shoup, whole, rest)) in self.terms.iter().enumerate() {
            let xt = m.mul_shoup(poly.limbs[i * n + j], inv, inv_shoup);
            let (q, r) = m.div_rem(xt as u128 * rest as u128);
            int = int.wrapping_add((xt as u128).wrapping_mul(whole)).wrapping_add(q);
            frac += r as f64 / m.value() as f64;
        }
        int.wrapping_add(frac.round() as u128) & ((1u128 << self.bits) - 1)
    }
}

/// A result at power-of-two moduli: c0 mod 2^c0_bits at the kept positions (both parties know
/// which), and all of c1 — and of c2, for a product that was not relinearized — mod 2^c1_bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShrunkCiphertext {
    c0_bits: u32,
    c1_bits: u32,
    /// Bits of the plaintext it carries: log t, or fewer where its top bits were dropped
    /// ([`ShrunkCiphertext::narrow`]). Not on the wire: the reader's expected shape states it.
    plain_bits: u32,
    c0: Vec<u128>,
    c1: Vec<u128>,
    /// Empty for a two-part ciphertext.
    c2: Vec<u128>,
}

/// Tags of the two-part and three-part forms.
const SHRUNK_TAG: &[u8; 4] = b"SMsh";
const SHRUNK3_TAG: &[u8; 4] = b"SMs3";
const SHRUNK_HEADER: usize = 4 + 1 + 1 + 4 + 4;

/// The expected form of a shrunk result: `parts` (2: (c0, c1); 3: a product opened with s²),
/// the kept positions and the widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShrunkShape {
    /// 2 or 3.
    pub parts: usize,
    /// Kept coefficients of c0.
    pub kept: usize,
    /// Bits of each kept c0 value.
    pub c0_bits: u32,
    /// Bits of each value of c1 (and c2).
    pub c1_bits: u32,
    /// Bits of the plaintext it carries (log t unless narrowed).
    pub plain_bits: u32,
}

impl ShrunkShape {
    /// The shape after [`ShrunkCiphertext::narrow`] to `plain_bits`.
    pub fn narrowed(self, plain_bits: u32) -> ShrunkShape {
        let drop = self.plain_bits.saturating_sub(plain_bits);
        ShrunkShape { c0_bits: self.c0_bits - drop, c1_bits: self.c1_bits - drop, plain_bits, ..self }
    }

    /// Serialized size under degree `n`.
    pub fn encoded_len(&self, n: usize) -> usize {
        SHRUNK_HEADER + packed_u128_len(self.kept, self.c0_bits) + (self.parts - 1) * packed_u128_len(n, self.c1_bits)
    }
}

impl ShrunkCiphertext {
    /// Its shape.
    pub fn shape(&self) -> ShrunkShape {
        let parts = if self.c2.is_empty() { 2 } else { 3 };
        ShrunkShape {
            parts,
            kept: self.c0.len(),
            c0_bits: self.c0_bits,
            c1_bits: self.c1_bits,
            plain_bits: self.plain_bits,
        }
    }

    /// Drops the top bits of the plaintext down to `plain_bits`: every part reduced mod 2^(its
    /// width − (log t − plain_bits)). Decryption then gives the plaintext mod 2^plain_bits, the
    /// rest of the phase being unchanged below (v = c0·2^(b1−b0) + s·c1 is a sum of products,
    /// so it is reduced with them). A function of the result alone: it hides what it did.
    pub fn narrow(mut self, plain_bits: u32) -> HeResult<Self> {
        let Some(drop) = self.plain_bits.checked_sub(plain_bits).filter(|_| plain_bits > 0) else {
            return Err(HeError::Shape(format!("narrow a {}-bit plaintext to {plain_bits} bits", self.plain_bits)));
        };
        let (b0, b1) = (self.c0_bits - drop, self.c1_bits - drop);
        let (m0, m1) = ((1u128 << b0) - 1, (1u128 << b1) - 1);
        self.c0.iter_mut().for_each(|v| *v &= m0);
        self.c1.iter_mut().chain(self.c2.iter_mut()).for_each(|v| *v &= m1);
        Ok(ShrunkCiphertext { c0_bits: b0, c1_bits: b1, plain_bits, ..self })
    }

    /// Serializes: tag (two or three parts), bit widths, counts, then the packed values.
    pub fn to_bytes(&self) -> Vec<u8> {
        let shape = self.shape();
        let mut out = Vec::with_capacity(shape.encoded_len(self.c1.len()));
        out.extend_from_slice(if shape.parts == 3 { SHRUNK3_TAG } else { SHRUNK_TAG });
        out.push(self.c0_bits as u8);
        out.push(self.c1_bits as u8);
        out.extend_from_slice(&(self.c0.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.c1.len() as u32).to_le_bytes());
        pack_u128(&self.c0, self.c0_bits, &mut out);
        pack_u128(&self.c1, self.c1_bits, &mut out);
        if shape.parts == 3 {
            pack_u128(&self.c2, self.c1_bits, &mut out);
        }
        out
    }

    /// Reads a shrunk result that must have exactly the expected shape.
    pub fn from_bytes(params: &HeParams, bytes: &[u8], shape: ShrunkShape) -> HeResult<Self> {
        let bad = |reason: String| HeError::Malformed { what: "shrunk ciphertext", reason };
        let n = params.degree();
        let ShrunkShape { parts, kept, c0_bits, c1_bits, plain_bits } = shape;
        let found = match bytes.get(..4) {
            Some(t) if bytes.len() >= SHRUNK_HEADER && t == SHRUNK_TAG => 2,
            Some(t) if bytes.len() >= SHRUNK_HEADER && t == SHRUNK3_TAG => 3,
            _ => return Err(bad("not a secmoe shrunk ciphertext (bad tag)".into())),
        };
        if found != parts {
            return Err(bad(format!("{found} parts, expected {parts}")));
        }
        if plain_bits == 0 || plain_bits >= c0_bits || c0_bits > c1_bits || c1_bits > 127 {
            return Err(bad(format!("widths {c0_bits}/{c1_bits} bits for a {plain_bits}-bit plaintext")));
        }
        let (b0, b1) = (bytes[4] as u32, bytes[5] as u32);
        if (b0, b1) != (c0_bits, c1_bits) {
            return Err(bad(format!("widths {b0}/{b1} bits, expected {c0_bits}/{c1_bits}")));
        }
        let count0 = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
        let count1 = u32::from_le_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
        if (count0, count1) != (kept, n) {
            return Err(bad(format!("{count0} kept and {count1} c1 coefficients, expected {kept} and {n}")));
        }
        let expected = shape.encoded_len(n);
        if bytes.len() != expected {
            return Err(bad(format!("{} bytes, expected {expected}", bytes.len())));
        }
        let mut at = SHRUNK_HEADER;
        let mut read = |count: usize, bits: u32| {
            let len = packed_u128_len(count, bits);
            let values = unpack_u128(&bytes[at..at + len], count, bits).map_err(|e| bad(e.to_string()));
            at += len;
            values
        };
        let c0 = read(kept, c0_bits)?;
        let c1 = read(n, c1_bits)?;
        let c2 = if parts == 3 { read(n, c1_bits)? } else { Vec::new() };
        Ok(ShrunkCiphertext { c0_bits, c1_bits, plain_bits, c0, c1, c2 })
    }
}

/// Values of up to 127 bits as a low part of up to 64 bits and a high part (the rest, possibly
/// none), each bit-packed.
fn packed_u128_len(count: usize, bits: u32) -> usize {
    let (low, high) = split_bits(bits);
    packed_len(count, low) + if high == 0 { 0 } else { packed_len(count, high) }
}

/// (bits of the low part, bits of the high part) of a `bits`-bit value.
fn split_bits(bits: u32) -> (u32, u32) {
    (bits.min(64), bits.saturating_sub(64))
}

fn pack_u128(values: &[u128], bits: u32, out: &mut Vec<u8>) {
    let (low_bits, high_bits) = split_bits(bits);
    let low: Vec<u64> = values.iter().map(|&v| v as u64).collect();
    out.extend(pack_bits(&low, low_bits));
    if high_bits > 0 {
        let high: Vec<u64> = values.iter().map(|&v| (v >> 64) as u64).collect();
        out.extend(pack_bits(&high, high_bits));
    }
}

fn unpack_u128(bytes: &[u8], count: usize, bits: u32) -> Result<Vec<u128>, crate::ring::RingError> {
    let (low_bits, high_bits) = split_bits(bits);
    let split = packed_len(count, low_bits);
    let low = unpack_bits(&bytes[..split], count, low_bits)?;
    if high_bits == 0 {
        return Ok(low.into_iter().map(u128::from).collect());
    }
    let high = unpack_bits(&bytes[split..], count, high_bits)?;
    Ok(low.iter().zip(&high).map(|(&l, &h)| (h as u128) << 64 | l as u128).collect())
}

impl SecretKey {
    /// Decrypts the kept coefficients of a shrunk result: v = c0·2^(b1−b0) + s·(c1 + s·c2)
    /// mod 2^b1 (c2 = 0 for two parts), m = ⌊v·t / 2^b1⌉ mod t (t = 2^plain_bits). The products
    /// by s are exact over the integers, reduced mod 2^b1 (computed in chunks through two NTT primes).
    pub fn decrypt_shrunk(&self, ct: &ShrunkCiphertext, keep: &[usize], backend: &dyn Backend) -> HeResult<Vec<u128>> {
        let p = &self.params;
        let n = p.degree();
        let t = ct.plain_bits;
        if ct.c0_bits <= t {
            return Err(HeError::Unsupported {
                params: p.name(),
                what: format!("open a {}-bit c0: it cannot hold {t}-bit plaintexts", ct.c0_bits),
            });
        }
        if keep.len() != ct.c0.len() || ct.c1.len() != n || !(ct.c2.is_empty() || ct.c2.len() == n) {
            return Err(HeError::Shape(format!(
                "{} kept positions for a shrunk ciphertext holding {}",
                keep.len(),
                ct.c0.len()
            )));
        }
        let mask = (1u128 << ct.c1_bits) - 1;
        let mut inner = ct.c1.clone();
        if !ct.c2.is_empty() {
            let s_c2 = self.times_s(&ct.c2, ct.c1_bits, backend)?;
            for (x, y) in inner.iter_mut().zip(s_c2) {
                *x = x.wrapping_add(y) & mask;
            }
        }
        let phase = self.times_s(&inner, ct.c1_bits, backend)?;
        let shift = ct.c1_bits - ct.c0_bits;
        let half = 1u128 << (ct.c1_bits - t - 1);
        let t_mask = (1u128 << t) - 1;
        Ok(keep
            .iter()
            .zip(&ct.c0)
            .map(|(&j, &c0)| {
                let v = (c0 << shift).wrapping_add(phase[j]) & mask;
                ((v + half) >> (ct.c1_bits - t)) & t_mask
            })
            .collect())
    }

    /// s·a mod 2^bits for a polynomial a of `bits`-bit coefficients, exactly: a is cut into
    /// chunks of w bits such that each chunk's product with the ternary s (coefficients below
    /// N·2^w in magnitude) is within half the product P of the first two primes; each is
    /// computed there by NTT, lifted by Garner to its centred integer and added at its offset.
    fn times_s(&self, a: &[u128], bits: u32, backend: &dyn Backend) -> HeResult<Vec<u128>> {
        let p = &self.params;
        let n = p.degree();
        let unsupported = || HeError::Unsupported {
            params: p.name(),
            what: format!("open {bits}-bit shrunk ciphertexts exactly (needs two primes of 2·N·2^32)"),
        };
        let [m1, m2] = match p.moduli() {
            [m1, m2, ..] => [*m1, *m2],
            _ => return Err(unsupported()),
        };
        let log_p = (m1.value() as f64).log2() + (m2.value() as f64).log2();
        let room = (log_p.floor() as u32).saturating_sub(n.trailing_zeros() + 2);
        if room < 32 || log_p >= 127.0 {
            return Err(unsupported());
        }
        let width = room.min(bits);
        // Garner: x = r1 + p1·((r2 − r1)·p1^-1 mod p2) in [0, p1·p2).
        let p1_inv = m2.inv(m2.reduce(m1.value())).ok_or_else(|| not_coprime(&m2))?;
        let big_p = m1.value() as u128 * m2.value() as u128;
        let mask = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
        let mut out = vec![0u128; n];
        for low in (0..bits).step_by(width as usize) {
            let chunk_mask = (1u128 << width.min(bits - low)) - 1;
            let mut chunk = RnsPoly { limbs: Vec::with_capacity(2 * n), form: Form::Coeff };
            for m in [m1, m2] {
                chunk.limbs.extend(a.iter().map(|&v| m.reduce_u128((v >> low) & chunk_mask)));
            }
            chunk.to_ntt(p, backend)?;
            chunk.mul_assign(p, &self.s);
            chunk.to_coeff(p, backend)?;
            for (j, o) in out.iter_mut().enumerate() {
                let (r1, r2) = (chunk.limbs[j], chunk.limbs[n + j]);
                let h = m2.mul(m2.sub(r2, m2.reduce(r1)), p1_inv);
                let x = r1 as u128 + m1.value() as u128 * h as u128;
                let centred = if x > big_p / 2 { x.wrapping_sub(big_p) } else { x };
                *o = o.wrapping_add(centred << low) & mask;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::he::{MAX_FLOOD_BITS, Plaintext, SecretKey};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    #[test]
    fn a_flooded_rerandomized_shrunk_ciphertext_still_decrypts() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(11);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let pk = sk.public_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let mut m: Vec<u64> = (0..p.degree()).map(|_| rng.random()).collect();
        m[..4].copy_from_slice(&[0, 1, u64::MAX, 1 << 63]);
        let pt = Plaintext::new(&p, m.clone()).unwrap_or_else(|e| panic!("{e}"));
        let mut ct = sk.encrypt_seeded(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}")).expand(&p);
        ct.rerandomize(&p, &pk, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        ct.flood(&p, 85, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let keep: Vec<usize> = (0..p.degree()).step_by(3).chain([p.degree() - 1]).collect();
        let shrunk = ct.shrink(&p, &keep, 74, 83, &be).unwrap_or_else(|e| panic!("{e}"));
        let bytes = shrunk.to_bytes();
        let shape = ShrunkShape { parts: 2, kept: keep.len(), c0_bits: 74, c1_bits: 83, plain_bits: p.plain_bits() };
        assert_eq!(bytes.len(), shape.encoded_len(p.degree()));
        let back = ShrunkCiphertext::from_bytes(&p, &bytes, shape).unwrap_or_else(|e| panic!("{e}"));
        let got = sk.decrypt_shrunk(&back, &keep, &be).unwrap_or_else(|e| panic!("{e}"));
        let want: Vec<u128> = keep.iter().map(|&j| m[j] as u128).collect();
        assert_eq!(got, want);
        // narrowed, the result carries the plaintext's low bits in fewer bytes; widening is refused
        for bits in [64, 44, 12] {
            let narrow = back.clone().narrow(bits).unwrap_or_else(|e| panic!("{e}"));
            let bytes = narrow.to_bytes();
            assert_eq!(bytes.len(), shape.narrowed(bits).encoded_len(p.degree()));
            assert!(bytes.len() < shape.encoded_len(p.degree()));
            let narrow =
                ShrunkCiphertext::from_bytes(&p, &bytes, shape.narrowed(bits)).unwrap_or_else(|e| panic!("{e}"));
            let got = sk.decrypt_shrunk(&narrow, &keep, &be).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got, want.iter().map(|v| v & ((1 << bits) - 1)).collect::<Vec<_>>(), "narrowed to {bits} bits");
        }
        assert!(back.narrow(p.plain_bits() + 1).is_err());
    }

    /// A product of two ciphertexts that was not relinearized leaves through the same path as
    /// a ciphertext — masked, re-randomized under (s, s²), flooded, shrunk to three parts — and
    /// the client opens the negacyclic product of the plaintexts minus the mask. Without the
    /// square key it cannot leave. The re-randomization changes d1 and d2 entirely.
    #[test]
    fn a_tensored_product_leaves_masked_and_opens_with_s_squared() {
        use crate::he::matmul::{ResponseKeys, mask_and_seal, response_shape};
        use rand::rngs::ChaCha20Rng;
        let p = HeParams::select().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let n = p.degree();
        let mut rng = StdRng::seed_from_u64(5);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let pk = sk.public_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let square = sk.square_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        // a sparse a (8 coefficients) times b: every output a short signed sum
        let a: Vec<u64> = (0..8).map(|_| rng.random_range(-(1i64 << 20)..1 << 20) as u64).collect();
        let b: Vec<u64> = (0..n).map(|_| rng.random_range(-(1i64 << 30)..1 << 30) as u64).collect();
        let enc = |v: &[u64], rng: &mut StdRng| {
            let pt = Plaintext::new(&p, v.to_vec()).unwrap_or_else(|e| panic!("{e}"));
            sk.encrypt(&pt, &be, rng).unwrap_or_else(|e| panic!("{e}"))
        };
        let (ca, cb) = (enc(&a, &mut rng), enc(&b, &mut rng));
        let product = ca.tensor(&cb, &p, &be).unwrap_or_else(|e| panic!("{e}"));
        let t_mask = (1u128 << p.plain_bits()) - 1;
        let want: Vec<u128> = (0..n)
            .map(|i| {
                (0..a.len()).fold(0u128, |acc, j| {
                    let (bi, sign) = if j <= i { (b[i - j], 1) } else { (b[n + i - j], -1) };
                    let term = (a[j] as i64 as i128) * (bi as i64 as i128) * sign;
                    acc.wrapping_add(term as u128) & t_mask
                })
            })
            .collect();
        let keep: Vec<usize> = (0..n).step_by(7).collect();
        let keys = ResponseKeys { pk: &pk, galois: None, square: Some(&square) };
        let (bytes, mask) = mask_and_seal(
            &p,
            keys,
            product.clone(),
            &keep,
            (0, p.plain_bits()),
            MAX_FLOOD_BITS,
            &be,
            &mut ChaCha20Rng::seed_from_u64(1),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let shape = response_shape(&p, 3, keep.len());
        assert_eq!(bytes.len(), shape.encoded_len(n));
        let ct = ShrunkCiphertext::from_bytes(&p, &bytes, shape).unwrap_or_else(|e| panic!("{e}"));
        let got = sk.decrypt_shrunk(&ct, &keep, &be).unwrap_or_else(|e| panic!("{e}"));
        for ((&j, v), r) in keep.iter().zip(got).zip(mask) {
            assert_eq!(v.wrapping_add(r as u128) & ((1 << 64) - 1), want[j] & ((1 << 64) - 1), "coefficient {j}");
        }
        // no square key: refused, not sent with d2 = c1·c1' in the clear
        let keys = ResponseKeys { square: None, ..keys };
        let err = mask_and_seal(
            &p,
            keys,
            product.clone(),
            &keep,
            (0, p.plain_bits()),
            100,
            &be,
            &mut ChaCha20Rng::seed_from_u64(1),
        );
        assert!(err.err().is_some_and(|e| e.to_string().contains("square key")));
        // re-randomized: no coefficient of d1 or d2 survives
        let mut fresh = product.clone();
        rerandomize(&p, &mut fresh.parts(), &pk, Some(&square), &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        flood(&p, &mut fresh.parts(), 2, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let mut old = product;
        flood(&p, &mut old.parts(), 2, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        for (ours, theirs) in [(&fresh.d1, &old.d1), (&fresh.d2, &old.d2)] {
            let same = ours.limbs.iter().zip(&theirs.limbs).filter(|(x, y)| x == y).count();
            assert!(same < 8, "{same} coefficients unchanged");
        }
    }

    #[test]
    fn malformed_shrunk_ciphertexts_are_refused_by_name() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let n = p.degree();
        let ct = ShrunkCiphertext {
            c0_bits: 67,
            c1_bits: 77,
            plain_bits: 60,
            c0: vec![1; 10],
            c1: vec![2; n],
            c2: Vec::new(),
        };
        let bytes = ct.to_bytes();
        let shape = ShrunkShape { parts: 2, kept: 10, c0_bits: 67, c1_bits: 77, plain_bits: 60 };
        let three = ShrunkCiphertext { c2: vec![3; n], ..ct.clone() }.to_bytes();
        for (bytes, expect) in [
            (bytes[..bytes.len() - 1].to_vec(), "bytes, expected"),
            (b"XXXX".iter().chain(&bytes[4..]).copied().collect(), "bad tag"),
            (three.clone(), "3 parts, expected 2"),
        ] {
            let err = ShrunkCiphertext::from_bytes(&p, &bytes, shape).err().map(|e| e.to_string());
            assert!(err.as_deref().is_some_and(|e| e.contains(expect)), "{err:?}");
        }
        let err =
            ShrunkCiphertext::from_bytes(&p, &bytes, ShrunkShape { kept: 11, ..shape }).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("expected 11")));
        let err =
            ShrunkCiphertext::from_bytes(&p, &bytes, ShrunkShape { c0_bits: 66, ..shape }).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("widths")));
        let err = ShrunkCiphertext::from_bytes(&p, &three[..three.len() - 1], ShrunkShape { parts: 3, ..shape });
        assert!(err.err().is_some_and(|e| e.to_string().contains("bytes, expected")));
        let back = ShrunkCiphertext::from_bytes(&p, &three, ShrunkShape { parts: 3, ..shape });
        assert_eq!(back.ok().map(|c| c.shape().parts), Some(3));
    }
}
