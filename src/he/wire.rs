//! Ciphertexts and keys on the wire: a short header, then every residue packed to its prime's
//! bit width. Reading validates everything before use: a wrong header, parameter set, length or
//! an out-of-range residue is an error naming it, never a wrong object.
//!
//! Header: tag (4 bytes), version, log2 N, RNS limbs, representation, number of polynomials (u16).

use std::sync::Arc;

use super::bfv::{Ciphertext, PublicKey, SeededCiphertext};
use super::mult::RelinKey;
use super::poly::{Form, RnsPoly};
use super::{HeError, HeParams, HeResult};
use crate::backend::Backend;
use crate::ring::modp::Modulus;
use crate::ring::{pack_bits, packed_len, unpack_bits};

const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 1 + 1 + 1 + 2;
const CIPHERTEXT: (&[u8; 4], &str) = (b"SMct", "ciphertext");
const PUBLIC_KEY: (&[u8; 4], &str) = (b"SMps", "public key");
const RELIN_KEY: (&[u8; 4], &str) = (b"SMrk", "relinearization key");
const SEEDED: (&[u8; 4], &str) = (b"SMsc", "seeded ciphertext");
const COMPRESSED: (&[u8; 4], &str) = (b"SMcc", "compressed seeded ciphertext");
const SEED_LEN: usize = 32;

fn malformed(what: &'static str, reason: String) -> HeError {
    HeError::Malformed { what, reason }
}

/// Bytes of `polys` polynomials with the first `limbs` primes of `params`.
fn encoded_len(params: &HeParams, limbs: usize, polys: usize) -> usize {
    let per_poly: usize =
        params.moduli()[..limbs.min(params.moduli().len())].iter().map(|m| packed_len(params.degree(), m.bits())).sum();
    HEADER + polys * per_poly
}

/// Bytes of a serialized seeded ciphertext (c0 at every limb, then the seed).
pub fn seeded_ciphertext_len(params: &HeParams) -> usize {
    seeded_ciphertext_len_at(params, params.moduli().len())
}

/// Bytes of a serialized seeded ciphertext at the level of the first `limbs` primes.
pub fn seeded_ciphertext_len_at(params: &HeParams, limbs: usize) -> usize {
    encoded_len(params, limbs, 1) + SEED_LEN
}

/// Most low bits of c0 a compressed seeded ciphertext drops ([`SeededCiphertext::to_compressed`]).
pub const MAX_DROPPED_BITS: u32 = 56;

/// Bytes of a seeded ciphertext whose c0 drops its `dropped` lowest bits.
pub fn compressed_ciphertext_len(params: &HeParams, dropped: u32) -> usize {
    compressed_ciphertext_len_at(params, params.moduli().len(), dropped)
}

/// Bytes of a seeded ciphertext at the level of the first `limbs` primes whose c0 drops its
/// `dropped` lowest bits.
pub fn compressed_ciphertext_len_at(params: &HeParams, limbs: usize, dropped: u32) -> usize {
    let n = params.degree();
    let moduli = &params.moduli()[..limbs.clamp(1, params.moduli().len())];
    let digits: usize = moduli.iter().map(|m| packed_len(n, m.bits())).sum();
    COMPRESSED_HEADER + digits - packed_len(n, moduli[0].bits())
        + packed_len(n, digit0_bits(params, dropped))
        + SEED_LEN
}

const COMPRESSED_HEADER: usize = 4 + 1 + 1 + 1 + 1;

/// Bits of c0's lowest mixed-radix digit once `dropped` bits are rounded away.
fn digit0_bits(params: &HeParams, dropped: u32) -> u32 {
    params.moduli()[0].bits() - dropped
}

/// Bytes of a serialized ciphertext under `params` at `limbs` RNS limbs.
pub fn ciphertext_len(params: &HeParams, limbs: usize) -> usize {
    encoded_len(params, limbs, 2)
}

fn encode(tag: &[u8; 4], params: &HeParams, polys: &[&RnsPoly]) -> Vec<u8> {
    let n = params.degree();
    let limbs = polys.first().map_or(0, |p| p.limbs.len() / n);
    let mut out = Vec::with_capacity(encoded_len(params, limbs, polys.len()));
    out.extend_from_slice(tag);
    out.push(VERSION);
    out.push(n.trailing_zeros() as u8);
    out.push(limbs as u8);
    out.push(match polys.first().map(|p| p.form()) {
        Some(Form::Ntt) => 1,
        _ => 0,
    });
    out.extend_from_slice(&(polys.len() as u16).to_le_bytes());
    for poly in polys {
        for (limb, m) in poly.limbs.chunks_exact(n).zip(params.moduli()) {
            out.extend(pack_bits(limb, m.bits()));
        }
    }
    out
}

/// Reads polynomials written by [`encode`] under `tag`; `limbs` and `polys` are checked when given.
fn decode(
    (tag, what): (&[u8; 4], &'static str),
    params: &HeParams,
    bytes: &[u8],
    limbs: Option<usize>,
    polys: usize,
) -> HeResult<Vec<RnsPoly>> {
    if bytes.len() < HEADER || &bytes[..4] != tag || bytes[4] != VERSION {
        return Err(malformed(what, format!("not a secmoe {what} (bad tag or version)")));
    }
    let n = params.degree();
    if bytes[5] as u32 != n.trailing_zeros() {
        return Err(malformed(what, format!("degree 2^{}, expected {n}", bytes[5])));
    }
    let k = bytes[6] as usize;
    if k == 0 || k > params.moduli().len() || limbs.is_some_and(|l| l != k) {
        let want = limbs.map_or(format!("1..={}", params.moduli().len()), |l| l.to_string());
        return Err(malformed(what, format!("{k} RNS limbs, expected {want}")));
    }
    let form = match bytes[7] {
        0 => Form::Coeff,
        1 => Form::Ntt,
        other => return Err(malformed(what, format!("unknown representation {other}"))),
    };
    let count = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    if count != polys {
        return Err(malformed(what, format!("{count} polynomials, expected {polys}")));
    }
    let expected = encoded_len(params, k, polys);
    if bytes.len() != expected {
        return Err(malformed(
            what,
            format!("{} bytes, expected {expected} for {} at {k} limbs", bytes.len(), params.name()),
        ));
    }
    let mut pos = HEADER;
    let mut out = Vec::with_capacity(polys);
    for index in 0..polys {
        let mut limbs = Vec::with_capacity(n * k);
        for (i, m) in params.moduli()[..k].iter().enumerate() {
            let len = packed_len(n, m.bits());
            let vals = unpack_bits(&bytes[pos..pos + len], n, m.bits())?;
            if let Some(j) = vals.iter().position(|&v| v >= m.value()) {
                return Err(malformed(
                    what,
                    format!("polynomial {index}: residue {j} of limb {i} is not below its prime"),
                ));
            }
            limbs.extend(vals);
            pos += len;
        }
        out.push(RnsPoly { limbs, form });
    }
    Ok(out)
}

fn pair(mut polys: Vec<RnsPoly>) -> (RnsPoly, RnsPoly) {
    let second = polys.pop().unwrap_or_else(|| RnsPoly { limbs: Vec::new(), form: Form::Coeff });
    let first = polys.pop().unwrap_or_else(|| RnsPoly { limbs: Vec::new(), form: Form::Coeff });
    (first, second)
}

impl Ciphertext {
    /// Serializes (in the form it is in, at its modulus level).
    pub fn to_bytes(&self, params: &HeParams) -> Vec<u8> {
        encode(CIPHERTEXT.0, params, &[&self.c0, &self.c1])
    }

    /// Reads a ciphertext serialized under the same parameters (at any modulus level).
    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> HeResult<Ciphertext> {
        let (c0, c1) = pair(decode(CIPHERTEXT, params, bytes, None, 2)?);
        Ok(Ciphertext { c0, c1 })
    }
}

impl SeededCiphertext {
    /// Serializes: c0 as one polynomial, then the 32-byte seed of c1.
    pub fn to_bytes(&self, params: &HeParams) -> Vec<u8> {
        let mut out = encode(SEEDED.0, params, &[&self.c0]);
        out.extend_from_slice(&self.seed);
        out
    }

    /// Reads a seeded ciphertext (full level, NTT form) for `params`.
    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> HeResult<SeededCiphertext> {
        SeededCiphertext::from_bytes_at(params, bytes, params.moduli().len())
    }

    /// Reads a seeded ciphertext at the level of the first `limbs` primes (NTT form).
    pub fn from_bytes_at(params: &HeParams, bytes: &[u8], limbs: usize) -> HeResult<SeededCiphertext> {
        let Some(split) = bytes.len().checked_sub(SEED_LEN) else {
            return Err(malformed(SEEDED.1, format!("{} bytes cannot hold a seed", bytes.len())));
        };
        let c0 = decode(SEEDED, params, &bytes[..split], Some(limbs), 1)?
            .pop()
            .ok_or_else(|| malformed(SEEDED.1, "no polynomial".into()))?;
        if c0.form() != Form::Ntt {
            return Err(malformed(SEEDED.1, "expected the NTT representation".into()));
        }
        let mut seed = [0u8; SEED_LEN];
        seed.copy_from_slice(&bytes[split..]);
        Ok(SeededCiphertext { c0, seed })
    }
}

impl SeededCiphertext {
    /// Serializes with c0's `dropped` lowest bits rounded away (0 ≤ `dropped` ≤
    /// [`MAX_DROPPED_BITS`], below the first prime's width): c0 in coefficient form as
    /// mixed-radix digits, c0 = d_0 + p_0·(d_1 + p_1·(d_2 + …)) (Garner), of which d_0 is sent
    /// without its low bits. The reader takes d_0 as the middle of what was dropped, so the
    /// decoded c0 is c0 + ε with |ε| ≤ 2^(dropped−1) per coefficient: encryption noise the
    /// product's noise bound counts. ε is a function of c0 alone, which is uniform: the
    /// compression is a public function of the ciphertext and hides as much as it does. The
    /// ciphertext keeps its level (its first primes of q).
    pub fn to_compressed(&self, params: &HeParams, dropped: u32, backend: &dyn Backend) -> HeResult<Vec<u8>> {
        check_dropped(params, dropped)?;
        let n = params.degree();
        let moduli = &params.moduli()[..self.c0.limbs.len() / n];
        let mut c0 = self.c0.clone();
        c0.to_coeff(params, backend)?;
        let radix = MixedRadix::new(moduli, dropped);
        let mut digits = vec![vec![0u64; n]; moduli.len()];
        for (i, mi) in moduli.iter().enumerate() {
            let (lower, rest) = digits.split_at_mut(i);
            for (c, (d, &r)) in rest[0].iter_mut().zip(&c0.limbs[i * n..(i + 1) * n]).enumerate() {
                // d_i = (…((r_i − d_0)·p_0^-1 − d_1)·p_1^-1 … − d_(i−1))·p_(i−1)^-1 mod p_i
                *d = lower
                    .iter()
                    .zip(&radix.inverses[i])
                    .fold(r, |t, (dj, &(w, ws))| mi.mul_shoup(mi.sub(t, radix.reduce(i, dj[c])), w, ws));
            }
        }
        for d in &mut digits[0] {
            *d >>= dropped;
        }
        let mut out = Vec::with_capacity(compressed_ciphertext_len_at(params, moduli.len(), dropped));
        out.extend_from_slice(COMPRESSED.0);
        out.extend([VERSION, n.trailing_zeros() as u8, moduli.len() as u8, dropped as u8]);
        out.extend(pack_bits(&digits[0], digit0_bits(params, dropped)));
        for (d, m) in digits[1..].iter().zip(&moduli[1..]) {
            out.extend(pack_bits(d, m.bits()));
        }
        out.extend_from_slice(&self.seed);
        Ok(out)
    }

    /// Reads [`SeededCiphertext::to_compressed`]'s bytes for `params` (c0 back in NTT form) and
    /// the number of bits it dropped.
    pub fn from_compressed(
        params: &HeParams,
        bytes: &[u8],
        backend: &dyn Backend,
    ) -> HeResult<(SeededCiphertext, u32)> {
        SeededCiphertext::from_compressed_at(params, bytes, params.moduli().len(), backend)
    }

    /// [`SeededCiphertext::from_compressed`] for a ciphertext at the level of the first `limbs`
    /// primes of `params`.
    pub fn from_compressed_at(
        params: &HeParams,
        bytes: &[u8],
        limbs: usize,
        backend: &dyn Backend,
    ) -> HeResult<(SeededCiphertext, u32)> {
        let what = COMPRESSED.1;
        if bytes.len() < COMPRESSED_HEADER || &bytes[..4] != COMPRESSED.0 || bytes[4] != VERSION {
            return Err(malformed(what, format!("not a secmoe {what} (bad tag or version)")));
        }
        let n = params.degree();
        if bytes[5] as u32 != n.trailing_zeros() {
            return Err(malformed(what, format!("degree 2^{}, expected {n}", bytes[5])));
        }
        if bytes[6] as usize != limbs || !(1..=params.moduli().len()).contains(&limbs) {
            return Err(malformed(what, format!("{} RNS limbs, expected {limbs}", bytes[6])));
        }
        let moduli = &params.moduli()[..limbs];
        let dropped = bytes[7] as u32;
        check_dropped(params, dropped).map_err(|_| malformed(what, format!("{dropped} dropped bits")))?;
        let expected = compressed_ciphertext_len_at(params, limbs, dropped);
        if bytes.len() != expected {
            return Err(malformed(
                what,
                format!("{} bytes, expected {expected} with {dropped} dropped bits", bytes.len()),
            ));
        }
        let mut pos = COMPRESSED_HEADER;
        let mut digits = Vec::with_capacity(moduli.len());
        for (i, m) in moduli.iter().enumerate() {
            let width = if i == 0 { digit0_bits(params, dropped) } else { m.bits() };
            let len = packed_len(n, width);
            let d = unpack_bits(&bytes[pos..pos + len], n, width)?;
            if i > 0
                && let Some(j) = d.iter().position(|&v| v >= m.value())
            {
                return Err(malformed(what, format!("digit {i} of coefficient {j} is not below its prime")));
            }
            digits.push(d);
            pos += len;
        }
        let radix = MixedRadix::new(moduli, dropped);
        let mut limbs = vec![0u64; moduli.len() * n];
        for (i, mi) in moduli.iter().enumerate() {
            let (scale, scale_shoup) = radix.scale[i];
            let (p0, p0_shoup) = radix.primes[i][0];
            for c in 0..n {
                // Horner from the top digit: c0 = d_0·2^dropped + half + p_0·(d_1 + p_1·(d_2 + …)),
                // half the middle of the dropped range (|ε| ≤ 2^(dropped−1))
                let mut acc = 0u64;
                for j in (1..moduli.len()).rev() {
                    let (w, ws) = radix.primes[i][j];
                    acc = mi.add(mi.mul_shoup(acc, w, ws), radix.reduce(i, digits[j][c]));
                }
                let d0 = mi.add(mi.mul_shoup(digits[0][c], scale, scale_shoup), radix.half[i]);
                limbs[i * n + c] = mi.add(mi.mul_shoup(acc, p0, p0_shoup), d0);
            }
        }
        let mut c0 = RnsPoly { limbs, form: Form::Coeff };
        c0.to_ntt(params, backend)?;
        let mut seed = [0u8; SEED_LEN];
        seed.copy_from_slice(&bytes[pos..]);
        Ok((SeededCiphertext { c0, seed }, dropped))
    }
}

/// Constants of the mixed-radix form of c0 over `moduli`, per limb i, with their Shoup
/// companions: p_j^-1 mod p_i for j < i, p_j mod p_i, 2^dropped mod p_i; and the middle of the
/// dropped range mod p_i.
struct MixedRadix {
    inverses: Vec<Vec<(u64, u64)>>,
    primes: Vec<Vec<(u64, u64)>>,
    scale: Vec<(u64, u64)>,
    half: Vec<u64>,
    one: Vec<u64>,
    moduli: Vec<Modulus>,
}

impl MixedRadix {
    fn new(moduli: &[Modulus], dropped: u32) -> MixedRadix {
        let moduli = moduli.to_vec();
        let with_shoup = |m: &Modulus, w: u64| (w, m.shoup(w));
        let half = if dropped == 0 { 0 } else { 1u64 << (dropped - 1) };
        let inverse = |mi: &Modulus, mj: &Modulus| with_shoup(mi, mi.inv(mi.reduce(mj.value())).unwrap_or(0));
        MixedRadix {
            inverses: moduli
                .iter()
                .enumerate()
                .map(|(i, mi)| moduli[..i].iter().map(|mj| inverse(mi, mj)).collect())
                .collect(),
            primes: moduli
                .iter()
                .map(|mi| moduli.iter().map(|mj| with_shoup(mi, mi.reduce(mj.value()))).collect())
                .collect(),
            scale: moduli.iter().map(|mi| with_shoup(mi, mi.pow(2, dropped as u64))).collect(),
            half: moduli.iter().map(|mi| mi.reduce(half)).collect(),
            one: moduli.iter().map(|mi| mi.shoup(1)).collect(),
            moduli,
        }
    }

    /// x mod p_i for any u64 x (a Shoup product by one).
    fn reduce(&self, i: usize, x: u64) -> u64 {
        self.moduli[i].mul_shoup(x, 1, self.one[i])
    }
}

/// Whether `dropped` low bits of c0 are a compression `params` allows.
pub(crate) fn check_dropped(params: &HeParams, dropped: u32) -> HeResult<()> {
    if dropped > MAX_DROPPED_BITS || dropped >= params.moduli()[0].bits() {
        return Err(HeError::Unsupported {
            params: params.name(),
            what: format!("drop {dropped} bits of c0 (at most {MAX_DROPPED_BITS}, below the first prime's width)"),
        });
    }
    Ok(())
}

impl PublicKey {
    /// Serializes: b as one polynomial, then the 32-byte seed of a.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = encode(PUBLIC_KEY.0, &self.params, &[&self.b]);
        out.extend_from_slice(&self.seed);
        out
    }

    /// Reads a public key for `params` (full level, NTT form); `a` is expanded from its seed.
    /// A key whose b has a limb of zeros (b = 0 in some residue: not an RLWE sample) is refused.
    pub fn from_bytes(params: &Arc<HeParams>, bytes: &[u8]) -> HeResult<PublicKey> {
        let Some(split) = bytes.len().checked_sub(SEED_LEN) else {
            return Err(malformed(PUBLIC_KEY.1, format!("{} bytes cannot hold a seed", bytes.len())));
        };
        let b = decode(PUBLIC_KEY, params, &bytes[..split], Some(params.moduli().len()), 1)?
            .pop()
            .ok_or_else(|| malformed(PUBLIC_KEY.1, "no polynomial".into()))?;
        if b.form() != Form::Ntt {
            return Err(malformed(PUBLIC_KEY.1, "expected the NTT representation".into()));
        }
        if let Some(l) = b.limbs.chunks_exact(params.degree()).position(|limb| limb.iter().all(|&v| v == 0)) {
            return Err(malformed(PUBLIC_KEY.1, format!("b is zero modulo prime {l} (a degenerate key)")));
        }
        let mut seed = [0u8; SEED_LEN];
        seed.copy_from_slice(&bytes[split..]);
        Ok(PublicKey {
            b,
            a: SeededCiphertext::mask(params, seed, params.moduli().len()),
            seed,
            params: params.clone(),
        })
    }
}

impl RelinKey {
    /// Serializes.
    pub fn to_bytes(&self, params: &HeParams) -> Vec<u8> {
        let polys: Vec<&RnsPoly> = self.parts.iter().flat_map(|(b, a)| [b, a]).collect();
        encode(RELIN_KEY.0, params, &polys)
    }

    /// Reads a relinearization key for `params` (one part per prime, NTT form).
    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> HeResult<RelinKey> {
        let k = params.moduli().len();
        let polys = decode(RELIN_KEY, params, bytes, Some(k), 2 * k)?;
        if polys.iter().any(|p| p.form() != Form::Ntt) {
            return Err(malformed(RELIN_KEY.1, "expected the NTT representation".into()));
        }
        let mut it = polys.into_iter();
        let parts = std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect();
        Ok(RelinKey::new(params, parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::he::{Plaintext, SecretKey};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn fixture() -> (Arc<HeParams>, CpuBackend, SecretKey, Ciphertext, Plaintext) {
        let p = HeParams::n4096().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(5);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let pt = Plaintext::new(&p, (0..p.degree()).map(|_| rng.random()).collect()).unwrap_or_else(|e| panic!("{e}"));
        let ct = sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        (p, be, sk, ct, pt)
    }

    #[test]
    fn round_trips_at_the_packed_size() {
        let (p, be, sk, ct, pt) = fixture();
        let bytes = ct.to_bytes(&p);
        // 2 polys × 4096 × (55 + 54) bits, plus the header
        assert_eq!(bytes.len(), HEADER + 2 * 4096 * 109 / 8);
        let back = Ciphertext::from_bytes(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, ct);
        assert_eq!(sk.decrypt(&back, &be).unwrap_or_else(|e| panic!("{e}")), pt);
    }

    #[test]
    fn a_seeded_ciphertext_at_a_lower_level_is_the_prefix_of_its_limbs_and_reads_only_there() {
        let p = HeParams::n8192().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(7);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let pt = Plaintext::new(&p, (0..p.degree()).map(|_| rng.random()).collect()).unwrap_or_else(|e| panic!("{e}"));
        let low = sk.encrypt_seeded_at(&pt, 3, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let bytes = low.to_bytes(&p);
        assert_eq!(bytes.len(), seeded_ciphertext_len_at(&p, 3));
        assert!(bytes.len() < seeded_ciphertext_len(&p));
        let back = SeededCiphertext::from_bytes_at(&p, &bytes, 3).unwrap_or_else(|e| panic!("{e}"));
        let ct = back.expand(&p);
        assert_eq!(ct.limbs(&p), 3);
        // the mask is the full-level mask's first limbs: the seed names one polynomial
        let full = SeededCiphertext::mask(&p, low.seed, 4);
        assert_eq!(ct.c1.limbs[..], full.limbs[..3 * p.degree()]);
        assert_eq!(sk.decrypt(&ct, &be).unwrap_or_else(|e| panic!("{e}")), pt);
        // a reader expecting another level refuses it, naming the limbs
        let err = SeededCiphertext::from_bytes(&p, &bytes).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("3 RNS limbs, expected 4")), "{err:?}");
        assert!(
            sk.encrypt_seeded_at(&pt, 0, &be, &mut rng).is_err()
                && sk.encrypt_seeded_at(&pt, 5, &be, &mut rng).is_err()
        );
        // compressed, it keeps its level: its size, its limbs, what it decrypts
        let bytes = low.to_compressed(&p, 20, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bytes.len(), compressed_ciphertext_len_at(&p, 3, 20));
        assert_eq!(bytes.len(), seeded_ciphertext_len_at(&p, 3) - HEADER + COMPRESSED_HEADER - 8192 * 20 / 8);
        let (back, dropped) =
            SeededCiphertext::from_compressed_at(&p, &bytes, 3, &be).unwrap_or_else(|e| panic!("{e}"));
        let ct = back.expand(&p);
        assert_eq!((ct.limbs(&p), dropped), (3, 20));
        assert_eq!(sk.decrypt(&ct, &be).unwrap_or_else(|e| panic!("{e}")), pt);
        let err = SeededCiphertext::from_compressed(&p, &bytes, &be).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("3 RNS limbs, expected 4")), "{err:?}");
    }

    #[test]
    fn seeded_ciphertexts_are_half_the_size_and_round_trip() {
        let (p, be, sk, _, pt) = fixture();
        let seeded = sk.encrypt_seeded(&pt, &be, &mut StdRng::seed_from_u64(6)).unwrap_or_else(|e| panic!("{e}"));
        let bytes = seeded.to_bytes(&p);
        assert_eq!(bytes.len(), seeded_ciphertext_len(&p));
        assert_eq!(bytes.len(), HEADER + 4096 * 109 / 8 + SEED_LEN);
        let back = SeededCiphertext::from_bytes(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sk.decrypt(&back.expand(&p), &be).unwrap_or_else(|e| panic!("{e}")), pt);
        let err = SeededCiphertext::from_bytes(&p, &bytes[..bytes.len() - 1]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("bytes, expected")));
    }

    /// Dropping k low bits of c0 shrinks it by k bits per coefficient and moves c0 by at most
    /// 2^(k−1) (the noise budget loses about k bits); with k = 0 c0 comes back exactly.
    #[test]
    fn compressed_ciphertexts_drop_low_bits_and_still_decrypt() {
        let (p, be, sk, _, pt) = fixture();
        let seeded = sk.encrypt_seeded(&pt, &be, &mut StdRng::seed_from_u64(7)).unwrap_or_else(|e| panic!("{e}"));
        let fresh = sk.noise_budget(&seeded.expand(&p), &be).unwrap_or_else(|e| panic!("{e}"));
        let exact = seeded.to_compressed(&p, 0, &be).unwrap_or_else(|e| panic!("{e}"));
        let (back, k) = SeededCiphertext::from_compressed(&p, &exact, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((back.c0.limbs == seeded.c0.limbs, k), (true, 0));
        assert_eq!(exact.len(), seeded_ciphertext_len(&p) - HEADER + COMPRESSED_HEADER);
        for k in [1, 12, 30] {
            let bytes = seeded.to_compressed(&p, k, &be).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(bytes.len(), compressed_ciphertext_len(&p, k));
            assert_eq!(bytes.len(), compressed_ciphertext_len(&p, 0) - (4096 * k as usize) / 8);
            let (back, got) = SeededCiphertext::from_compressed(&p, &bytes, &be).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got, k);
            let ct = back.expand(&p);
            assert_eq!(sk.decrypt(&ct, &be).unwrap_or_else(|e| panic!("{e}")), pt);
            let budget = sk.noise_budget(&ct, &be).unwrap_or_else(|e| panic!("{e}"));
            assert!(budget >= fresh - k as f64 - 1.0 && budget <= fresh + 0.5, "{k} bits: {budget} from {fresh}");
        }
        for k in [MAX_DROPPED_BITS + 1, 64] {
            assert!(seeded.to_compressed(&p, k, &be).is_err());
        }
    }

    #[test]
    fn keys_round_trip_and_still_work() {
        let p = HeParams::n8192().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(7);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let pk = PublicKey::from_bytes(&p, &sk.public_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}")).to_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let rlk = RelinKey::from_bytes(&p, &sk.relin_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}")).to_bytes(&p))
            .unwrap_or_else(|e| panic!("{e}"));
        let pt = Plaintext::new(&p, vec![3, 5]).unwrap_or_else(|e| panic!("{e}"));
        let ct = pk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let sq = ct.mul(&ct, &p, &rlk, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sk.decrypt(&sq, &be).unwrap_or_else(|e| panic!("{e}")).coeffs()[..3], [9, 30, 25]);
        // a key is not a ciphertext, and a ciphertext is not a key
        assert!(Ciphertext::from_bytes(&p, &pk.to_bytes()).is_err());
        assert!(PublicKey::from_bytes(&p, &ct.to_bytes(&p)).is_err());
    }

    #[test]
    fn a_public_key_travels_as_b_and_a_seed_and_a_degenerate_b_is_refused() {
        let (p, be, sk, _, _) = fixture();
        let mut rng = StdRng::seed_from_u64(8);
        let bytes = sk.public_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}")).to_bytes();
        assert_eq!(bytes.len(), HEADER + 4096 * 109 / 8 + SEED_LEN);
        // b = 0 modulo the first prime: the first limb's bits are all zero
        let mut zero = bytes.clone();
        zero[HEADER..HEADER + 4096 * 55 / 8].fill(0);
        let err = PublicKey::from_bytes(&p, &zero).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("degenerate")));
        let err = PublicKey::from_bytes(&p, &bytes[..SEED_LEN - 1]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("seed")));
    }

    #[test]
    fn a_switched_down_ciphertext_travels_at_its_smaller_size() {
        let p = HeParams::n8192().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(6);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let pt = Plaintext::new(&p, (0..100).map(|_| rng.random()).collect()).unwrap_or_else(|e| panic!("{e}"));
        let mut ct = sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let full = ct.to_bytes(&p).len();
        ct.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        ct.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        let bytes = ct.to_bytes(&p);
        assert_eq!(bytes.len(), HEADER + 2 * 8192 * 110 / 8);
        assert!(bytes.len() * 100 < full * 51, "110 of 218 bits of modulus left");
        let back = Ciphertext::from_bytes(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sk.decrypt(&back, &be).unwrap_or_else(|e| panic!("{e}")).coeffs()[..100], pt.coeffs()[..]);
    }

    #[test]
    fn corrupted_or_foreign_bytes_are_errors_naming_the_problem() {
        let (p, _be, _sk, ct, _pt) = fixture();
        let bytes = ct.to_bytes(&p);
        let err = |b: &[u8]| Ciphertext::from_bytes(&p, b).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&bytes[..bytes.len() - 1]).contains("bytes, expected"));
        assert!(err(&bytes[..3]).contains("tag"));
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(err(&bad).contains("tag"));
        let mut bad = bytes.clone();
        bad[5] = 13;
        assert!(err(&bad).contains("degree"));
        let mut bad = bytes.clone();
        bad[6] = 3;
        assert!(err(&bad).contains("limbs"));
        let mut bad = bytes.clone();
        bad[6] = 1;
        assert!(err(&bad).contains("bytes, expected"), "{}", err(&bad));
        let mut bad = bytes.clone();
        bad[7] = 9;
        assert!(err(&bad).contains("representation"));
        let mut bad = bytes.clone();
        bad[8] = 3;
        assert!(err(&bad).contains("polynomials"));
        // all-ones residues are ≥ the prime
        let mut bad = bytes.clone();
        for b in &mut bad[HEADER..HEADER + 8] {
            *b = 0xff;
        }
        assert!(err(&bad).contains("not below its prime"), "{}", err(&bad));
        // a ciphertext of another parameter set
        let other = HeParams::n8192().unwrap_or_else(|e| panic!("{e}"));
        assert!(Ciphertext::from_bytes(&other, &bytes).is_err());
    }

    /// Every decoder, fed random bytes or a valid encoding with bytes changed, cut or extended,
    /// returns an object or an error naming what it read — never a panic.
    mod decoders {
        use super::*;
        use crate::he::{GaloisKeys, ShrunkCiphertext, ShrunkShape};
        use proptest::prelude::*;
        use std::sync::OnceLock;

        /// (N=4096 parameters, the linear set, valid encodings by decoder name)
        type Samples = (Arc<HeParams>, Arc<HeParams>, Vec<(&'static str, Vec<u8>)>);

        fn samples() -> &'static Samples {
            static SAMPLES: OnceLock<Samples> = OnceLock::new();
            SAMPLES.get_or_init(|| {
                let (p, be, sk, ct, pt) = fixture();
                let mut rng = StdRng::seed_from_u64(9);
                let lin = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
                let lin_sk = SecretKey::generate(&lin, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
                let galois = lin_sk.galois_keys(2, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
                let shrunk = {
                    let mut c = sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
                    c.flood(&p, 20, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
                    c.shrink(&p, &[0, 5, 9], 70, 80, &be).unwrap_or_else(|e| panic!("{e}"))
                };
                let shrunk3 = {
                    // any three polynomials encode (these parameters cannot multiply)
                    let c = sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
                    let (d0, d1, d2) = (c.c0, c.c1.clone(), c.c1);
                    crate::he::response::shrink(&p, &[&d0, &d1, &d2], &[0, 5, 9], 70, 80, &be)
                        .unwrap_or_else(|e| panic!("{e}"))
                };
                let samples = vec![
                    ("ciphertext", ct.to_bytes(&p)),
                    ("seeded", sk.encrypt_seeded(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}")).to_bytes(&p)),
                    (
                        "compressed",
                        sk.encrypt_seeded(&pt, &be, &mut rng)
                            .and_then(|c| c.to_compressed(&p, 17, &be))
                            .unwrap_or_else(|e| panic!("{e}")),
                    ),
                    ("public key", sk.public_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}")).to_bytes()),
                    ("galois", galois.to_bytes(&lin).unwrap_or_else(|e| panic!("{e}"))),
                    ("shrunk", shrunk.to_bytes()),
                    ("shrunk3", shrunk3.to_bytes()),
                ];
                (p, lin, samples)
            })
        }

        fn decode(which: &str, bytes: &[u8]) -> Result<(), String> {
            let (p, lin, _) = samples();
            let r = match which {
                "ciphertext" => Ciphertext::from_bytes(p, bytes).map(drop),
                "seeded" => SeededCiphertext::from_bytes(p, bytes).map(drop),
                "compressed" => {
                    let be = CpuBackend::new(1).map_err(|e| e.to_string())?;
                    SeededCiphertext::from_compressed(p, bytes, &be).map(drop)
                }
                "public key" => PublicKey::from_bytes(p, bytes).map(drop),
                "galois" => GaloisKeys::from_bytes(lin, bytes).map(drop),
                "shrunk" => ShrunkCiphertext::from_bytes(
                    p,
                    bytes,
                    ShrunkShape { parts: 2, kept: 3, c0_bits: 70, c1_bits: 80, plain_bits: p.plain_bits() },
                )
                .map(drop),
                _ => ShrunkCiphertext::from_bytes(
                    p,
                    bytes,
                    ShrunkShape { parts: 3, kept: 3, c0_bits: 70, c1_bits: 80, plain_bits: p.plain_bits() },
                )
                .map(drop),
            };
            r.map_err(|e| e.to_string())
        }

        /// Every header byte of every encoding set to the values that overflow careless code.
        #[test]
        fn extreme_header_bytes_are_errors() {
            for (name, valid) in &samples().2 {
                for i in 0..16.min(valid.len()) {
                    for v in [0u8, 1, 7, 0x40, 0x7f, 0x80, 0xff] {
                        let mut bytes = valid.clone();
                        bytes[i] = v;
                        let _ = decode(name, &bytes);
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn never_panic_and_name_what_is_wrong(
                which in 0usize..7,
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                cut in any::<prop::sample::Index>(),
                mode in 0u8..4,
                noise in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let (name, valid) = &samples().2[which];
                let mut bytes = valid.clone();
                // header bytes are where a decoder must be most careful: edit them often
                for (at, v) in &edits {
                    let i = if *v % 2 == 0 { at.index(16.min(bytes.len())) } else { at.index(bytes.len()) };
                    bytes[i] = *v;
                }
                match mode {
                    0 => bytes.truncate(cut.index(bytes.len() + 1)),
                    1 => bytes.extend_from_slice(&noise),
                    2 => bytes = noise.clone(),
                    _ => {}
                }
                if let Err(e) = decode(name, &bytes) {
                    let named = ["ciphertext", "public key", "Galois keys", "bytes", "tag", "prime", "levels", "seed", "degree", "limbs", "widths", "expected", "degenerate", "representation", "polynomial", "digit", "dropped"];
                    prop_assert!(named.iter().any(|n| e.contains(n)), "{}: {}", name, e);
                }
            }
        }
    }
}
