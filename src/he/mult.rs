//! Ciphertext × ciphertext products with relinearization (BFV, t = 2^64).
//!
//! The tensor (c0·d0, c0·d1 + c1·d0, c1·d1) is computed exactly over the integers in an extended
//! RNS basis Q∪P (P > N·Q, so the centered products fit), then scaled by t/Q and rounded back to
//! Q. Relinearization uses the RNS gadget: digit i of c2 is its residue mod p_i, and the key for
//! digit i encrypts s²·g_i with g_i the i-th CRT idempotent (g_i ≡ 1 mod p_i, 0 mod the others),
//! so Σ_i digit_i·g_i = c2. The added noise is about Σ_i p_i·N·σ, which the N = 8192 set absorbs;
//! N = 4096's 109-bit q has no room for products of 64-bit plaintexts.
//!
//! The basis extension and the rounding go through exact multi-precision arithmetic per
//! coefficient: correct, not yet fast (a later step replaces it with RNS base conversion).

use num_bigint::{BigInt, Sign};
use num_traits::ToPrimitive;
use rand::CryptoRng;

use super::bfv::{Ciphertext, CrtContext, SecretKey};
use super::poly::{Form, RnsPoly};
use super::{HeError, HeParams, HeResult};
use crate::backend::{Backend, NttTable};
use crate::ring::modp::{Modulus, ntt_primes};

/// Size and count of the auxiliary primes P of the tensoring basis.
const AUX_BITS: u32 = 60;

/// The relinearization key: for every prime p_i of Q, an encryption of s²·g_i, in NTT form.
#[derive(Debug, Clone)]
pub struct RelinKey {
    pub(crate) parts: Vec<(RnsPoly, RnsPoly)>,
}

impl SecretKey {
    /// A relinearization key for [`Ciphertext::mul`].
    pub fn relin_key<R: CryptoRng + ?Sized>(&self, backend: &dyn Backend, rng: &mut R) -> RelinKey {
        let p = &self.params;
        let n = p.degree();
        let mut s2 = self.s.clone();
        s2.mul_assign(p, &self.s);
        let parts = (0..p.moduli().len())
            .map(|i| {
                let a = RnsPoly::uniform(p, Form::Ntt, rng);
                let mut b = RnsPoly::from_signed(p, &RnsPoly::error_coeffs(n, rng));
                b.to_ntt(p, backend);
                let mut as_ = a.clone();
                as_.mul_assign(p, &self.s);
                b.sub_assign(p, &as_);
                // + s²·g_i: s² on limb i, zero on the others
                let m = p.moduli()[i];
                for (x, &y) in b.limbs[i * n..(i + 1) * n].iter_mut().zip(&s2.limbs[i * n..(i + 1) * n]) {
                    *x = m.add(*x, y);
                }
                (b, a)
            })
            .collect();
        RelinKey { parts }
    }
}

/// The extended basis Q∪P and its tables.
struct TensorBasis {
    moduli: Vec<Modulus>,
    tables: Vec<NttTable>,
    crt_q: CrtContext,
    crt_qp: CrtContext,
}

impl TensorBasis {
    fn new(params: &HeParams) -> HeResult<TensorBasis> {
        let n = params.degree();
        let need = params.log_q() + (n as f64).log2() + 4.0;
        let count = (need / (AUX_BITS - 1) as f64).ceil() as usize;
        let aux = ntt_primes(AUX_BITS, n, count)?;
        let mut moduli = params.moduli().to_vec();
        for p in aux {
            moduli.push(Modulus::new(p)?);
        }
        let tables = moduli.iter().map(|&m| NttTable::new(n, m)).collect::<Result<_, _>>()?;
        Ok(TensorBasis {
            crt_q: CrtContext::new(params.moduli(), 64),
            crt_qp: CrtContext::new(&moduli, 64),
            moduli,
            tables,
        })
    }

    /// Residue of a signed integer modulo `m`.
    fn residue(x: &BigInt, m: &Modulus) -> u64 {
        let r = (x.magnitude() % m.value()).to_u64().unwrap_or(0);
        if x.sign() == Sign::Minus { m.neg(r) } else { r }
    }

    /// Lifts a polynomial mod Q (coefficient form) to the centered integers, then to Q∪P, NTT form.
    fn extend(&self, params: &HeParams, x: &RnsPoly, backend: &dyn Backend) -> Vec<u64> {
        let n = params.degree();
        let k = params.moduli().len();
        let mut out = vec![0u64; n * self.moduli.len()];
        out[..k * n].copy_from_slice(&x.limbs);
        for j in 0..n {
            let v = self.crt_q.compose_limbs(n, &x.limbs, j);
            let centered = if v > self.crt_q.half_q {
                BigInt::from_biguint(Sign::Minus, &self.crt_q.q - v)
            } else {
                BigInt::from_biguint(Sign::Plus, v)
            };
            for (i, m) in self.moduli.iter().enumerate().skip(k) {
                out[i * n + j] = Self::residue(&centered, m);
            }
        }
        for (limb, table) in out.chunks_exact_mut(n).zip(&self.tables) {
            backend.ntt_forward(table, limb);
        }
        out
    }

    /// ⌊t·x/Q⌉ mod Q for a tensor component over Q∪P in NTT form; returns coefficient form mod Q.
    fn scale_down(&self, params: &HeParams, mut x: Vec<u64>, backend: &dyn Backend) -> RnsPoly {
        let n = params.degree();
        for (limb, table) in x.chunks_exact_mut(n).zip(&self.tables) {
            backend.ntt_inverse(table, limb);
        }
        let mut out = RnsPoly::zero(params, Form::Coeff);
        let q = BigInt::from_biguint(Sign::Plus, self.crt_q.q.clone());
        let half_q = BigInt::from_biguint(Sign::Plus, self.crt_q.half_q.clone());
        for j in 0..n {
            let v = self.crt_qp.compose_limbs(n, &x, j);
            let centered = if v > self.crt_qp.half_q {
                BigInt::from_biguint(Sign::Minus, &self.crt_qp.q - v)
            } else {
                BigInt::from_biguint(Sign::Plus, v)
            };
            // round(2^64·x / Q), symmetric in the sign
            let scaled = (centered.magnitude().clone() << 64u32) + half_q.magnitude();
            let r = BigInt::from_biguint(centered.sign(), scaled / q.magnitude());
            for (i, m) in params.moduli().iter().enumerate() {
                out.limbs[i * n + j] = Self::residue(&r, m);
            }
        }
        out
    }
}

fn pointwise(moduli: &[Modulus], n: usize, a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = vec![0u64; a.len()];
    for (((o, x), y), m) in out.chunks_exact_mut(n).zip(a.chunks_exact(n)).zip(b.chunks_exact(n)).zip(moduli) {
        for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
            *o = m.mul(x, y);
        }
    }
    out
}

impl Ciphertext {
    /// Product of two fresh-level ciphertexts, relinearized: decrypts to the negacyclic product of
    /// the plaintexts with coefficients mod 2^64. Returned in NTT form.
    pub fn mul(
        &self,
        other: &Ciphertext,
        params: &HeParams,
        rlk: &RelinKey,
        backend: &dyn Backend,
    ) -> HeResult<Ciphertext> {
        let k = params.moduli().len();
        if params.plain_bits() != 64 {
            return Err(HeError::Unsupported {
                params: params.name(),
                what: format!("multiply ciphertexts: implemented for t = 2^64, not 2^{}", params.plain_bits()),
            });
        }
        if self.limbs(params) != k || other.limbs(params) != k {
            return Err(HeError::Shape("ciphertext products need both operands at the full modulus".into()));
        }
        if rlk.parts.len() != k {
            return Err(HeError::Shape(format!("relinearization key has {} parts, expected {k}", rlk.parts.len())));
        }
        let n = params.degree();
        let basis = TensorBasis::new(params)?;
        let ext = |c: &RnsPoly| {
            let mut c = c.clone();
            c.to_coeff(params, backend);
            basis.extend(params, &c, backend)
        };
        let (a0, a1, b0, b1) = (ext(&self.c0), ext(&self.c1), ext(&other.c0), ext(&other.c1));
        let all = &basis.moduli;
        let e0 = pointwise(all, n, &a0, &b0);
        let mut e1 = pointwise(all, n, &a0, &b1);
        for ((o, x), m) in e1.chunks_exact_mut(n).zip(pointwise(all, n, &a1, &b0).chunks_exact(n)).zip(all) {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = m.add(*o, x);
            }
        }
        let e2 = pointwise(all, n, &a1, &b1);
        let mut c0 = basis.scale_down(params, e0, backend);
        let mut c1 = basis.scale_down(params, e1, backend);
        let c2 = basis.scale_down(params, e2, backend);
        c0.to_ntt(params, backend);
        c1.to_ntt(params, backend);
        // Relinearize: c2 = Σ_i digit_i·g_i, digit_i = [c2]_{p_i} as an integer in [0, p_i).
        for (i, (rb, ra)) in rlk.parts.iter().enumerate() {
            let digit: Vec<i64> = c2.limbs[i * n..(i + 1) * n].iter().map(|&d| d as i64).collect();
            let mut d = RnsPoly::from_signed(params, &digit);
            d.to_ntt(params, backend);
            let (mut t0, mut t1) = (d.clone(), d);
            t0.mul_assign(params, rb);
            t1.mul_assign(params, ra);
            c0.add_assign(params, &t0);
            c1.add_assign(params, &t1);
        }
        Ok(Ciphertext { c0, c1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::he::Plaintext;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    #[test]
    fn products_of_ciphertexts_decrypt_to_products_mod_2_64() {
        let p = HeParams::n8192().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(12);
        let sk = SecretKey::generate(&p, &be, &mut rng);
        let rlk = sk.relin_key(&be, &mut rng);
        let n = p.degree();
        // two dense plaintexts of uniform 64-bit coefficients: the worst case for the noise
        let a: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let b: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let ca = sk.encrypt(&Plaintext::new(&p, a.clone()).unwrap_or_else(|e| panic!("{e}")), &be, &mut rng);
        let cb = sk.encrypt(&Plaintext::new(&p, b.clone()).unwrap_or_else(|e| panic!("{e}")), &be, &mut rng);
        let prod = ca.mul(&cb, &p, &rlk, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sk.decrypt(&prod, &be).coeffs(), &crate::he::negacyclic_mod_2_64(&a, &b)[..]);
        let budget = sk.noise_budget(&prod, &be);
        assert!(budget > 20.0, "only {budget:.1} bits left after one product");
    }

    #[test]
    fn products_need_full_level_operands_and_a_matching_key() {
        let p = HeParams::n8192().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(13);
        let sk = SecretKey::generate(&p, &be, &mut rng);
        let rlk = sk.relin_key(&be, &mut rng);
        let pt = Plaintext::new(&p, vec![1, 2, 3]).unwrap_or_else(|e| panic!("{e}"));
        let ct = sk.encrypt(&pt, &be, &mut rng);
        let mut low = ct.clone();
        low.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        assert!(ct.mul(&low, &p, &rlk, &be).is_err());
        let short = RelinKey { parts: rlk.parts[..2].to_vec() };
        assert!(ct.mul(&ct, &p, &short, &be).is_err());
    }
}
