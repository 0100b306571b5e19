//! What the server does to a result ciphertext before it leaves (circuit privacy and size), and
//! how the client opens it.
//!
//! - [`Ciphertext::rerandomize`] adds a fresh public-key encryption of zero: c1 becomes an RLWE
//!   sample unrelated to the server's weights (otherwise c1 = a·w would give w away).
//! - [`Ciphertext::flood`] adds uniform noise of `bits` bits to c0: when it exceeds every
//!   weight-dependent noise term by 2^κ, the decrypted noise is within statistical distance
//!   2^-κ per coefficient of a distribution that does not depend on the weights.
//! - [`Ciphertext::shrink`] switches to power-of-two moduli, c1 to 2^b1 and the kept
//!   coefficients of c0 to 2^b0 (Cheetah's response shrinking): only the positions the client
//!   needs travel, at the fewest bits that still decrypt.

use rand::{CryptoRng, RngExt};

use super::bfv::{Ciphertext, PublicKey, SecretKey};
use super::poly::{Form, RnsPoly};
use super::{HeError, HeParams, HeResult};
use crate::backend::Backend;
use crate::ring::modp::Modulus;
use crate::ring::{pack_bits, packed_len, unpack_bits};

/// Largest flooding noise drawn from one 128-bit word per coefficient (2^(bits+1) values,
/// centred as an i128); wider floods take two words.
pub const NARROW_FLOOD_BITS: u32 = 126;

/// Largest flooding noise, in bits.
pub const MAX_FLOOD_BITS: u32 = 250;

impl Ciphertext {
    /// Adds a fresh encryption of zero under `pk` (same level as `self`).
    pub fn rerandomize<R: CryptoRng + ?Sized>(
        &mut self,
        params: &HeParams,
        pk: &PublicKey,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<()> {
        let zero = pk.encrypt(&super::Plaintext::new(params, Vec::new())?, backend, rng)?;
        self.add_assign(params, &zero, backend)
    }

    /// Adds independent uniform noise from [−2^bits, 2^bits) to every coefficient of c0.
    /// Leaves coefficient form.
    pub fn flood<R: CryptoRng + ?Sized>(
        &mut self,
        params: &HeParams,
        bits: u32,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<()> {
        if bits > MAX_FLOOD_BITS {
            return Err(HeError::Unsupported {
                params: params.name(),
                what: format!("flood with {bits} bits of noise (at most {MAX_FLOOD_BITS})"),
            });
        }
        let n = params.degree();
        self.c0.to_coeff(params, backend)?;
        self.c1.to_coeff(params, backend)?;
        if bits <= NARROW_FLOOD_BITS {
            let span = 1u128 << (bits + 1);
            let noise: Vec<i128> = (0..n).map(|_| (rng.random::<u128>() % span) as i128 - (span / 2) as i128).collect();
            for (limb, m) in self.c0.limbs.chunks_exact_mut(n).zip(params.moduli()) {
                let p = m.value() as i128;
                for (x, &e) in limb.iter_mut().zip(&noise) {
                    *x = m.add(*x, e.rem_euclid(p) as u64);
                }
            }
            return Ok(());
        }
        // e = hi·2^128 + lo − 2^bits with lo uniform in [0, 2^128) and hi in [0, 2^(bits+1−128))
        let hi_mask = (1u128 << (bits + 1 - 128)) - 1;
        let noise: Vec<(u128, u128)> = (0..n).map(|_| (rng.random::<u128>() & hi_mask, rng.random::<u128>())).collect();
        for (limb, m) in self.c0.limbs.chunks_exact_mut(n).zip(params.moduli()) {
            let two_64 = m.reduce_u128(1u128 << 64);
            let two_128 = m.mul(two_64, two_64);
            let offset = match bits.checked_sub(128) {
                Some(above) => m.mul(m.reduce_u128(1u128 << above), two_128),
                None => m.reduce_u128(1u128 << bits),
            };
            for (x, &(hi, lo)) in limb.iter_mut().zip(&noise) {
                let e = m.add(m.mul(m.reduce_u128(hi), two_128), m.reduce_u128(lo));
                *x = m.add(*x, m.sub(e, offset));
            }
        }
        Ok(())
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
        let k = self.limbs(params);
        let moduli = &params.moduli()[..k];
        let (mut c0, mut c1) = (self.c0.clone(), self.c1.clone());
        c0.to_coeff(params, backend)?;
        c1.to_coeff(params, backend)?;
        let to_c0 = PowerOfTwoSwitch::new(moduli, c0_bits)?;
        let to_c1 = PowerOfTwoSwitch::new(moduli, c1_bits)?;
        Ok(ShrunkCiphertext {
            c0_bits,
            c1_bits,
            c0: keep.iter().map(|&j| to_c0.apply(&c0, n, j)).collect(),
            c1: (0..n).map(|j| to_c1.apply(&c1, n, j)).collect(),
        })
    }
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

/// A result ciphertext at power-of-two moduli: all of c1 mod 2^c1_bits, and c0 mod 2^c0_bits at
/// the kept positions (both parties know which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShrunkCiphertext {
    c0_bits: u32,
    c1_bits: u32,
    c0: Vec<u128>,
    c1: Vec<u128>,
}

const SHRUNK_TAG: &[u8; 4] = b"SMsh";
const SHRUNK_HEADER: usize = 4 + 1 + 1 + 4 + 4;

impl ShrunkCiphertext {
    /// Serialized size for `kept` positions under degree `n`.
    pub fn encoded_len(n: usize, kept: usize, c0_bits: u32, c1_bits: u32) -> usize {
        SHRUNK_HEADER + packed_u128_len(kept, c0_bits) + packed_u128_len(n, c1_bits)
    }

    /// Serializes: tag, bit widths, counts, then the packed values.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(ShrunkCiphertext::encoded_len(self.c1.len(), self.c0.len(), self.c0_bits, self.c1_bits));
        out.extend_from_slice(SHRUNK_TAG);
        out.push(self.c0_bits as u8);
        out.push(self.c1_bits as u8);
        out.extend_from_slice(&(self.c0.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.c1.len() as u32).to_le_bytes());
        pack_u128(&self.c0, self.c0_bits, &mut out);
        pack_u128(&self.c1, self.c1_bits, &mut out);
        out
    }

    /// Reads a shrunk ciphertext that must have exactly the expected shape.
    pub fn from_bytes(params: &HeParams, bytes: &[u8], kept: usize, c0_bits: u32, c1_bits: u32) -> HeResult<Self> {
        let bad = |reason: String| HeError::Malformed { what: "shrunk ciphertext", reason };
        let n = params.degree();
        if bytes.len() < SHRUNK_HEADER || &bytes[..4] != SHRUNK_TAG {
            return Err(bad("not a secmoe shrunk ciphertext (bad tag)".into()));
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
        let expected = ShrunkCiphertext::encoded_len(n, kept, c0_bits, c1_bits);
        if bytes.len() != expected {
            return Err(bad(format!("{} bytes, expected {expected}", bytes.len())));
        }
        let split = SHRUNK_HEADER + packed_u128_len(kept, c0_bits);
        let c0 = unpack_u128(&bytes[SHRUNK_HEADER..split], kept, c0_bits).map_err(|e| bad(e.to_string()))?;
        let c1 = unpack_u128(&bytes[split..], n, c1_bits).map_err(|e| bad(e.to_string()))?;
        Ok(ShrunkCiphertext { c0_bits, c1_bits, c0, c1 })
    }
}

/// Values of up to 127 bits as a low 64-bit part and a high part, each bit-packed.
fn packed_u128_len(count: usize, bits: u32) -> usize {
    packed_len(count, 64) + packed_len(count, bits - 64)
}

fn pack_u128(values: &[u128], bits: u32, out: &mut Vec<u8>) {
    let low: Vec<u64> = values.iter().map(|&v| v as u64).collect();
    let high: Vec<u64> = values.iter().map(|&v| (v >> 64) as u64).collect();
    out.extend(pack_bits(&low, 64));
    out.extend(pack_bits(&high, bits - 64));
}

fn unpack_u128(bytes: &[u8], count: usize, bits: u32) -> Result<Vec<u128>, crate::ring::RingError> {
    let split = packed_len(count, 64);
    let low = unpack_bits(&bytes[..split], count, 64)?;
    let high = unpack_bits(&bytes[split..], count, bits - 64)?;
    Ok(low.iter().zip(&high).map(|(&l, &h)| (h as u128) << 64 | l as u128).collect())
}

impl SecretKey {
    /// Decrypts the kept coefficients of a shrunk ciphertext: v = c0·2^(b1−b0) + c1·s mod 2^b1,
    /// m = ⌊v·t / 2^b1⌉ mod t (t = 2^plain_bits). The product c1·s is computed exactly over the
    /// integers (its coefficients stay below N·2^b1) through the NTT primes, then reduced mod 2^b1.
    pub fn decrypt_shrunk(&self, ct: &ShrunkCiphertext, keep: &[usize], backend: &dyn Backend) -> HeResult<Vec<u128>> {
        let p = &self.params;
        let n = p.degree();
        let t = p.plain_bits();
        if ct.c0_bits <= t {
            return Err(HeError::Unsupported {
                params: p.name(),
                what: format!("open a {}-bit c0: it cannot hold {t}-bit plaintexts", ct.c0_bits),
            });
        }
        if keep.len() != ct.c0.len() || ct.c1.len() != n {
            return Err(HeError::Shape(format!(
                "{} kept positions for a shrunk ciphertext holding {}",
                keep.len(),
                ct.c0.len()
            )));
        }
        // Primes whose product P (< 2^127) exceeds 2·N·2^b1, for an exact centered lift.
        let need = ct.c1_bits as f64 + (n as f64).log2() + 2.0;
        let mut limbs = 0;
        let mut log_p = 0.0;
        while log_p < need && limbs < p.moduli().len() {
            log_p += (p.moduli()[limbs].value() as f64).log2();
            limbs += 1;
        }
        if log_p < need || log_p >= 127.0 || limbs != 2 {
            return Err(HeError::Unsupported {
                params: p.name(),
                what: format!(
                    "open {}-bit shrunk ciphertexts exactly (needs two primes above {need:.0} bits)",
                    ct.c1_bits
                ),
            });
        }
        let (m1, m2) = (p.moduli()[0], p.moduli()[1]);
        let mut c1 = RnsPoly { limbs: Vec::with_capacity(2 * n), form: Form::Coeff };
        for m in [m1, m2] {
            c1.limbs.extend(ct.c1.iter().map(|&v| m.reduce_u128(v)));
        }
        c1.to_ntt(p, backend)?;
        c1.mul_assign(p, &self.s);
        c1.to_coeff(p, backend)?;
        // Garner: x = r1 + p1·((r2 − r1)·p1^-1 mod p2) in [0, p1·p2).
        let p1_inv = m2.inv(m2.reduce(m1.value())).ok_or_else(|| not_coprime(&m2))?;
        let big_p = m1.value() as u128 * m2.value() as u128;
        let mask = (1u128 << ct.c1_bits) - 1;
        let shift = ct.c1_bits - ct.c0_bits;
        let half = 1u128 << (ct.c1_bits - t - 1);
        let t_mask = (1u128 << t) - 1;
        Ok(keep
            .iter()
            .zip(&ct.c0)
            .map(|(&j, &c0)| {
                let (r1, r2) = (c1.limbs[j], c1.limbs[n + j]);
                let h = m2.mul(m2.sub(r2, m2.reduce(r1)), p1_inv);
                let x = r1 as u128 + m1.value() as u128 * h as u128;
                let c1s = if x > big_p / 2 { x.wrapping_sub(big_p) } else { x };
                let v = (c0 << shift).wrapping_add(c1s) & mask;
                ((v + half) >> (ct.c1_bits - t)) & t_mask
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::he::{Plaintext, SecretKey};
    use rand::{SeedableRng, rngs::StdRng};

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
        assert_eq!(bytes.len(), ShrunkCiphertext::encoded_len(p.degree(), keep.len(), 74, 83));
        let back = ShrunkCiphertext::from_bytes(&p, &bytes, keep.len(), 74, 83).unwrap_or_else(|e| panic!("{e}"));
        let got = sk.decrypt_shrunk(&back, &keep, &be).unwrap_or_else(|e| panic!("{e}"));
        let want: Vec<u128> = keep.iter().map(|&j| m[j] as u128).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn malformed_shrunk_ciphertexts_are_refused_by_name() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let n = p.degree();
        let ct = ShrunkCiphertext { c0_bits: 67, c1_bits: 77, c0: vec![1; 10], c1: vec![2; n] };
        let bytes = ct.to_bytes();
        for (bytes, expect) in [
            (bytes[..bytes.len() - 1].to_vec(), "bytes, expected"),
            (b"XXXX".iter().chain(&bytes[4..]).copied().collect(), "bad tag"),
        ] {
            let err = ShrunkCiphertext::from_bytes(&p, &bytes, 10, 67, 77).err().map(|e| e.to_string());
            assert!(err.as_deref().is_some_and(|e| e.contains(expect)), "{err:?}");
        }
        let err = ShrunkCiphertext::from_bytes(&p, &bytes, 11, 67, 77).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("expected 11")));
        let err = ShrunkCiphertext::from_bytes(&p, &bytes, 10, 66, 77).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("widths")));
    }
}
