//! Ciphertexts on the wire: a short header, then every residue packed to its prime's bit width.
//! Reading validates everything before use: a wrong header, parameter set, length or an
//! out-of-range residue is an error naming it, never a wrong ciphertext.

use super::bfv::Ciphertext;
use super::poly::{Form, RnsPoly};
use super::{HeError, HeParams, HeResult};
use crate::ring::{pack_bits, packed_len, unpack_bits};

const MAGIC: &[u8; 4] = b"SMct";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 1 + 1 + 1;

fn malformed(reason: String) -> HeError {
    HeError::Malformed { what: "ciphertext", reason }
}

/// Bytes of a serialized ciphertext under `params` with its first `limbs` primes.
pub fn ciphertext_len(params: &HeParams, limbs: usize) -> usize {
    HEADER
        + 2 * params.moduli()[..limbs.min(params.moduli().len())]
            .iter()
            .map(|m| packed_len(params.degree(), m.bits()))
            .sum::<usize>()
}

impl Ciphertext {
    /// Serializes (in the form it is in, at its modulus level).
    pub fn to_bytes(&self, params: &HeParams) -> Vec<u8> {
        let n = params.degree();
        let k = self.limbs(params);
        let mut out = Vec::with_capacity(ciphertext_len(params, k));
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(n.trailing_zeros() as u8);
        out.push(k as u8);
        out.push(match self.c0.form() {
            Form::Coeff => 0,
            Form::Ntt => 1,
        });
        for poly in [&self.c0, &self.c1] {
            for (limb, m) in poly.limbs.chunks_exact(n).zip(params.moduli()) {
                out.extend(pack_bits(limb, m.bits()));
            }
        }
        out
    }

    /// Reads a ciphertext serialized under the same parameters (at any modulus level).
    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> HeResult<Ciphertext> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return Err(malformed("not a secmoe ciphertext (bad magic or version)".into()));
        }
        let n = params.degree();
        if bytes[5] as u32 != n.trailing_zeros() {
            return Err(malformed(format!("degree 2^{}, expected {n}", bytes[5])));
        }
        let k = bytes[6] as usize;
        if k == 0 || k > params.moduli().len() {
            return Err(malformed(format!("{k} RNS limbs, expected 1..={}", params.moduli().len())));
        }
        let expected = ciphertext_len(params, k);
        if bytes.len() != expected {
            return Err(malformed(format!(
                "{} bytes, expected {expected} for {} at {k} limbs",
                bytes.len(),
                params.name()
            )));
        }
        let form = match bytes[7] {
            0 => Form::Coeff,
            1 => Form::Ntt,
            other => return Err(malformed(format!("unknown representation {other}"))),
        };
        let mut pos = HEADER;
        let mut polys = Vec::with_capacity(2);
        for half in ["c0", "c1"] {
            let mut limbs = Vec::with_capacity(n * k);
            for (i, m) in params.moduli()[..k].iter().enumerate() {
                let len = packed_len(n, m.bits());
                let vals = unpack_bits(&bytes[pos..pos + len], n, m.bits())?;
                if let Some(j) = vals.iter().position(|&v| v >= m.value()) {
                    return Err(malformed(format!("{half} residue {j} of limb {i} is not below its prime")));
                }
                limbs.extend(vals);
                pos += len;
            }
            polys.push(RnsPoly { limbs, form });
        }
        let c1 = polys.pop().ok_or_else(|| malformed("missing c1".into()))?;
        let c0 = polys.pop().ok_or_else(|| malformed("missing c0".into()))?;
        Ok(Ciphertext { c0, c1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::he::{Plaintext, SecretKey};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn fixture() -> (std::sync::Arc<HeParams>, CpuBackend, SecretKey, Ciphertext, Plaintext) {
        let p = HeParams::n4096().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(5);
        let sk = SecretKey::generate(&p, &be, &mut rng);
        let pt = Plaintext::new(&p, (0..p.degree()).map(|_| rng.random()).collect()).unwrap_or_else(|e| panic!("{e}"));
        let ct = sk.encrypt(&pt, &be, &mut rng);
        (p, be, sk, ct, pt)
    }

    #[test]
    fn round_trips_at_the_packed_size() {
        let (p, be, sk, ct, pt) = fixture();
        let bytes = ct.to_bytes(&p);
        // 2 polys × 4096 × (55 + 54) bits, plus 8 header bytes
        assert_eq!(bytes.len(), 8 + 2 * 4096 * 109 / 8);
        let back = Ciphertext::from_bytes(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, ct);
        assert_eq!(sk.decrypt(&back, &be), pt);
    }

    #[test]
    fn a_switched_down_ciphertext_travels_at_its_smaller_size() {
        let p = HeParams::n8192().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(6);
        let sk = SecretKey::generate(&p, &be, &mut rng);
        let pt = Plaintext::new(&p, (0..100).map(|_| rng.random()).collect()).unwrap_or_else(|e| panic!("{e}"));
        let mut ct = sk.encrypt(&pt, &be, &mut rng);
        let full = ct.to_bytes(&p).len();
        ct.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        ct.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        let bytes = ct.to_bytes(&p);
        assert_eq!(bytes.len(), 8 + 2 * 8192 * 110 / 8);
        assert!(bytes.len() * 100 < full * 51, "110 of 218 bits of modulus left");
        let back = Ciphertext::from_bytes(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sk.decrypt(&back, &be).coeffs()[..100], pt.coeffs()[..]);
    }

    #[test]
    fn corrupted_or_foreign_bytes_are_errors_naming_the_problem() {
        let (p, _be, _sk, ct, _pt) = fixture();
        let bytes = ct.to_bytes(&p);
        let err = |b: &[u8]| Ciphertext::from_bytes(&p, b).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&bytes[..bytes.len() - 1]).contains("bytes, expected"));
        assert!(err(&bytes[..3]).contains("magic"));
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(err(&bad).contains("magic"));
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
        // all-ones residues are ≥ the prime
        let mut bad = bytes.clone();
        for b in &mut bad[8..16] {
            *b = 0xff;
        }
        assert!(err(&bad).contains("not below its prime"), "{}", err(&bad));
        // a ciphertext of another parameter set
        let other = HeParams::n8192().unwrap_or_else(|e| panic!("{e}"));
        assert!(Ciphertext::from_bytes(&other, &bytes).is_err());
    }
}
