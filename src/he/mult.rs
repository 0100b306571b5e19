//! Ciphertext × ciphertext products (BFV, any plaintext modulus t = 2^64..2^96, any level),
//! computed entirely in RNS: no multi-precision integer in the hot path.
//!
//! With both ciphertexts lifted to centered integers (|c| ≤ Q/2), the tensor
//! (c0·d0, c0·d1 + c1·d0, c1·d1) has coefficients below N·Q²/2 in magnitude; it is computed
//! exactly in the extended basis Q∪P with P > 2^3·N·Q·2^9 (so QP > 4·max|x| for a sum of up to
//! 2^9 such tensors, [`ProductSum`]), then scaled by t/Q and rounded straight back to Q ("traditional" BFV multiplication, after Halevi–Polyakov–Shoup,
//! ePrint 2018/117, §4, with a fixed-point fraction instead of floating point):
//!
//! - **Q → P, centered** (fast base conversion with the overflow removed): z_i = [x_i·(Q/q_i)^-1]_{q_i},
//!   v = round(Σ z_i/q_i), x = Σ z_i·(Q/q_i) − v·Q. The f64 rounding can only err when x is within
//!   2^-45·Q of ±Q/2, where either lift is as small.
//! - **Q∪P → Q, scaled**: with M = QP, z_r = [x_r·(M/r)^-1]_r and v = round(Σ z_r/r) (exact: |x| <
//!   M/4), t·x/Q = Σ_{l∈Q} z_l·(ω_l + θ_l) + Σ_{j∈P} z_j·t·P/p_j − v·t·P where t·P/q_l = ω_l + θ_l
//!   (integer and fractional part). Only Σ z_l·θ_l is fractional; it is rounded with θ_l held to
//!   2^-128 (an error below 2^-64, so the result is ⌊t·x/Q⌉ or, at an exact half, one off — a unit
//!   of noise). Every other term is an integer reduced mod q_i with precomputed constants.
//!
//! The bases and all constants are computed once per parameter set and level
//! ([`HeParams::tensor_basis`]). Relinearization uses the RNS gadget: digit i of d2 is its
//! residue mod q_i, and key part i encrypts s²·g_i with g_i the i-th CRT idempotent (g_i ≡ 1 mod
//! q_i, 0 mod the others), so Σ_i digit_i·g_i = d2; restricted to the first k' limbs the same key
//! serves level k'. The added noise is about Σ_i q_i·‖e_i‖·√N, far below Δ = Q/t for the sets here.
//!
//! [`Tensored`] is the product before relinearization, d0 + d1·s + d2·s² ≈ Δ·m_a·m_b: whoever holds
//! s (the client) decrypts it directly with [`SecretKey::decrypt_tensored`], so a result only the
//! client opens can skip relinearization.

use std::sync::Arc;

use num_bigint::BigUint;
use num_traits::One;
use rand::CryptoRng;
use zeroize::Zeroize;

use super::bfv::{Ciphertext, PublicKey, SecretKey};
use super::poly::{Form, RnsPoly};
use super::{HeError, HeParams, HeResult};
use crate::backend::{Backend, Buffer, Scratch, SwitchKeyRows, TensorBasis};
use crate::ring::modp::{MAX_PRIME_BITS, Modulus, ntt_primes};

/// The relinearization key: for every prime q_i of Q, an encryption (b_i, a_i) of s²·g_i, in
/// NTT form; also kept as [`Backend::key_switch`] reads it (row per limb j: the b_i at j, then
/// the a_i at j, with Shoup constants), in host memory until [`RelinKey::hold`].
#[derive(Debug)]
pub struct RelinKey {
    pub(crate) parts: Vec<(RnsPoly, RnsPoly)>,
    rows: Buffer,
    shoup: Buffer,
}

impl RelinKey {
    pub(crate) fn new(params: &HeParams, parts: Vec<(RnsPoly, RnsPoly)>) -> RelinKey {
        let n = params.degree();
        let (mut rows, mut shoup) = (Vec::new(), Vec::new());
        for (j, m) in params.moduli().iter().enumerate() {
            let start = rows.len();
            for half in [0, 1] {
                for (b, a) in &parts {
                    rows.extend_from_slice(&[b, a][half].limbs[j * n..(j + 1) * n]);
                }
            }
            shoup.extend(rows[start..].iter().map(|&v| m.shoup(v)));
        }
        RelinKey { parts, rows: Buffer::host(rows), shoup: Buffer::host(shoup) }
    }

    /// Hands the key's rows to `backend`, which then relinearizes where they are (a GPU keeps
    /// them in its memory; no copy on the CPU). A server does so once, when the key arrives.
    pub fn hold(&mut self, backend: &dyn Backend) -> HeResult<()> {
        for part in [&mut self.rows, &mut self.shoup] {
            let values = backend.fetch(std::mem::replace(part, Buffer::host(Vec::new())))?;
            *part = backend.hold(values)?;
        }
        Ok(())
    }
}

/// The client's public key for s²: (b, a) = (−a·s² + e, a), for products the server does not
/// relinearize ([`Tensored`]). A public-key encryption of zero under it, (b·u + e0, a·u + e1),
/// added to (d0, d2), makes d2 an RLWE sample independent of the server's operands (d2 =
/// c1·c1' would otherwise show the client the c1 of the server's selected weights). It assumes
/// no more than a relinearization key, which publishes encryptions of s² already.
#[derive(Debug, Clone)]
pub struct SquareKey(pub(crate) PublicKey);

impl SquareKey {
    /// Serializes as a public key (b, then the seed of a).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// Reads a square key for `params` (the checks of [`PublicKey::from_bytes`]).
    pub fn from_bytes(params: &Arc<HeParams>, bytes: &[u8]) -> HeResult<SquareKey> {
        PublicKey::from_bytes(params, bytes).map(SquareKey)
    }
}

impl SecretKey {
    /// The public key for s² ([`SquareKey`]).
    pub fn square_key<R: CryptoRng + ?Sized>(&self, backend: &dyn Backend, rng: &mut R) -> HeResult<SquareKey> {
        let mut s2 = self.s.clone();
        s2.mul_assign(&self.params, &self.s);
        let key = self.public_key_for(&s2, backend, rng);
        s2.zeroize();
        Ok(SquareKey(key?))
    }

    /// A relinearization key for [`Ciphertext::mul`] and [`Tensored::relinearize`].
    pub fn relin_key<R: CryptoRng + ?Sized>(&self, backend: &dyn Backend, rng: &mut R) -> HeResult<RelinKey> {
        let p = &self.params;
        let n = p.degree();
        let mut s2 = self.s.clone();
        s2.mul_assign(p, &self.s);
        let parts = (0..p.moduli().len())
            .map(|i| {
                let a = RnsPoly::uniform(p, Form::Ntt, rng);
                let mut b = RnsPoly::from_signed(p, &RnsPoly::error_coeffs(n, rng));
                b.to_ntt(p, backend)?;
                let mut as_ = a.clone();
                as_.mul_assign(p, &self.s);
                b.sub_assign(p, &as_);
                // + s²·g_i: s² on limb i, zero on the others
                let m = p.moduli()[i];
                for (x, &y) in b.limbs[i * n..(i + 1) * n].iter_mut().zip(&s2.limbs[i * n..(i + 1) * n]) {
                    *x = m.add(*x, y);
                }
                Ok((b, a))
            })
            .collect::<HeResult<_>>();
        s2.zeroize();
        Ok(RelinKey::new(p, parts?))
    }

    /// Decrypts a product that was not relinearized: rounds d0 + d1·s + d2·s².
    pub fn decrypt_tensored(&self, ct: &Tensored, backend: &dyn Backend) -> HeResult<super::Plaintext> {
        let p = &self.params;
        let mut s = self.s.clone();
        s.limbs.truncate(ct.limbs(p) * p.degree());
        let mut x = ct.d2.clone();
        let to_ntt = x.to_ntt(p, backend);
        x.mul_assign(p, &s);
        x.add_assign(p, &ct.d1);
        x.mul_assign(p, &s);
        x.add_assign(p, &ct.d0);
        s.zeroize();
        to_ntt?;
        x.to_coeff(p, backend)?;
        Ok(self.decode_phase(&x))
    }
}

/// A product of two ciphertexts before relinearization: (d0, d1, d2) with
/// d0 + d1·s + d2·s² ≈ Δ·m_a·m_b; d0 and d1 in NTT form and d2 in coefficient form as
/// [`ProductSum::finish`] leaves them, or all in coefficient form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensored {
    pub(crate) d0: RnsPoly,
    pub(crate) d1: RnsPoly,
    pub(crate) d2: RnsPoly,
}

impl Tensored {
    /// Number of RNS limbs (the level).
    pub fn limbs(&self, params: &HeParams) -> usize {
        self.d0.limbs.len() / params.degree()
    }

    /// Adds another product at the same level: the sum of the products' plaintexts.
    pub fn add_assign(&mut self, params: &HeParams, other: &Tensored) -> HeResult<()> {
        if other.limbs(params) != self.limbs(params) {
            return Err(HeError::Shape(format!(
                "adding products at {} and {} RNS limbs",
                self.limbs(params),
                other.limbs(params)
            )));
        }
        self.d0.add_assign(params, &other.d0);
        self.d1.add_assign(params, &other.d1);
        self.d2.add_assign(params, &other.d2);
        Ok(())
    }

    /// Modulus switching of all three parts from q to its first `limbs` primes (coefficient
    /// form, as [`Ciphertext::drop_last_modulus`]): the noise is divided by the dropped primes
    /// and gains a rounding term of about (1 + ‖s‖₁ + ‖s²‖₁)/2.
    pub fn switch_down(&mut self, params: &HeParams, limbs: usize, backend: &dyn Backend) -> HeResult<()> {
        let (n, k) = (params.degree(), self.limbs(params));
        if !(1..=k).contains(&limbs) {
            return Err(HeError::Shape(format!("switching a product at {k} RNS limbs down to {limbs}")));
        }
        for part in [&mut self.d0, &mut self.d1, &mut self.d2] {
            part.to_coeff(params, backend)?;
            for last in (limbs..k).rev() {
                let (low, top) = part.limbs.split_at_mut(last * n);
                backend.divide_by_prime(&params.moduli()[..last], n, low, &top[..n], &params.moduli()[last])?;
                part.limbs.truncate(last * n);
            }
        }
        Ok(())
    }

    /// Folds d2 into (c0, c1) with the relinearization key: a two-part ciphertext of the same
    /// plaintext, in the form d0 and d1 were in.
    pub fn relinearize(self, params: &HeParams, rlk: &RelinKey, backend: &dyn Backend) -> HeResult<Ciphertext> {
        let n = params.degree();
        let k = self.limbs(params);
        let full = params.moduli().len();
        if rlk.parts.len() != full
            || rlk.parts.iter().any(|(b, a)| b.limbs.len() != full * n || a.limbs.len() != b.limbs.len())
        {
            return Err(HeError::Shape(format!("relinearization key has {} parts, expected {full}", rlk.parts.len())));
        }
        let moduli = &params.moduli()[..k];
        let Tensored { mut d0, mut d1, mut d2 } = self;
        d2.to_coeff(params, backend)?;
        // (c0, c1) = (d0, d1) + Σ_i [d2]_(q_i)·(b_i, a_i), brought to the form of d0 and d1
        // (one relinearization per output tile: its scratch, k²·N words, is 3.3 MB at five primes)
        let key = SwitchKeyRows { rows: &rlk.rows, shoup: &rlk.shoup, digits: full };
        let mut sum = Scratch::take(2 * k * n);
        backend.key_switch(&params.tables()[..k], None, key, &d2.limbs, d0.form() == Form::Coeff, &mut sum)?;
        for (half, out) in [&mut d0, &mut d1].into_iter().enumerate() {
            for (j, m) in moduli.iter().enumerate() {
                for (o, &s) in out.limbs[j * n..(j + 1) * n].iter_mut().zip(&sum[(2 * j + half) * n..][..n]) {
                    *o = m.add(*o, s);
                }
            }
        }
        Ok(Ciphertext { c0: d0, c1: d1 })
    }
}

/// The extended basis for products at `level` RNS limbs ([`HeParams::tensor_basis`] keeps it):
/// Q the level's primes, P as many 61-bit NTT primes (none of the set's own) as make
/// P > 2^3·N·Q·2^[`SUM_TERM_BITS`], so QP holds a sum of up to 2^SUM_TERM_BITS tensors (each
/// |x| ≤ N·Q²/2) four times over.
pub(crate) fn tensor_basis(params: &HeParams, level: usize) -> HeResult<TensorBasis> {
    let n = params.degree();
    let q_bits = params.moduli()[..level].iter().fold(BigUint::one(), |acc, m| acc * m.value()).bits();
    let need = q_bits as f64 + (n as f64).log2() + 3.0 + f64::from(SUM_TERM_BITS);
    let mut p = Vec::new();
    let mut log_p = 0.0;
    for cand in ntt_primes(MAX_PRIME_BITS, n, 16)? {
        if log_p >= need {
            break;
        }
        if params.ext_moduli().iter().all(|m| m.value() != cand) {
            p.push(Modulus::new(cand)?);
            log_p += (cand as f64).log2();
        }
    }
    if log_p < need {
        return Err(HeError::Unsupported {
            params: params.name(),
            what: format!("multiply ciphertexts at {level} limbs: no {need:.0}-bit extension basis"),
        });
    }
    Ok(TensorBasis::new(&params.tables()[..level], &p, params.plain_bits())?)
}

/// Bits that a product needs in Δ = q/t beyond t·N: its noise, measured at 2^(log t + log N + 2)
/// (2^79 at t = 2^64, 2^85 at t = 2^70, N = 8192), and ~10 bits for the operands' own noise.
const PRODUCT_ROOM_BITS: u32 = 12;

/// log2 of the most products a [`ProductSum`] adds exactly: the extension basis P is sized for
/// 2^9 tensors (one more 61-bit prime than a single product needs at most).
pub const SUM_TERM_BITS: u32 = 9;

/// Ciphertexts lifted to the extended basis Q∪P (both halves, NTT form): the operands of
/// ciphertext products, each computed once for every product it enters. Held by the backend that
/// lifted them ([`Backend::extend_basis`]: device memory on a GPU), one after another, each half
/// by half, limb by limb (2·|Q∪P| polynomials), as [`Backend::tensor_sum`] reads them.
#[derive(Debug)]
pub struct Lifted {
    level: usize,
    count: usize,
    data: Buffer,
}

impl Lifted {
    /// Every ciphertext of `cts` (all at one level) lifted, both halves of all of them in one
    /// backend call (on the host: in parallel on the workers this runs on).
    pub fn of<C: std::borrow::Borrow<Ciphertext> + Sync>(
        cts: &[C],
        params: &HeParams,
        backend: &dyn Backend,
    ) -> HeResult<Lifted> {
        let n = params.degree();
        let level = cts.first().map_or(params.moduli().len(), |ct| ct.borrow().limbs(params));
        if let Some(bad) = cts.iter().position(|ct| ct.borrow().limbs(params) != level) {
            return Err(HeError::Shape(format!(
                "lifting ciphertexts at {level} and {} RNS limbs together (ciphertext {bad})",
                cts[bad].borrow().limbs(params)
            )));
        }
        check_room(params, level)?;
        let basis = params.tensor_basis(level)?;
        // every half in one form, the first's: a half in the other form is converted (a copy)
        let form = cts.first().map_or(Form::Ntt, |ct| ct.borrow().c0.form());
        let mut halves = Scratch::take(cts.len() * 2 * level * n);
        for (ct, dst) in cts.iter().zip(halves.chunks_exact_mut(2 * level * n)) {
            let ct = ct.borrow();
            for (half, dst) in [&ct.c0, &ct.c1].into_iter().zip(dst.chunks_exact_mut(level * n)) {
                dst.copy_from_slice(&half.limbs);
                if half.form() != form {
                    let tables = &params.tables()[..level];
                    match form {
                        Form::Ntt => backend.ntt_forward(tables, dst)?,
                        Form::Coeff => backend.ntt_inverse(tables, dst)?,
                    }
                }
            }
        }
        let data = backend.extend_basis(basis, &halves, form == Form::Ntt)?;
        Ok(Lifted { level, count: cts.len(), data })
    }

    /// Number of ciphertexts.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Ciphertext {
    /// Product of two ciphertexts at the same level, relinearized: decrypts to the negacyclic
    /// product of the plaintexts mod t. Returned in NTT form.
    pub fn mul(
        &self,
        other: &Ciphertext,
        params: &HeParams,
        rlk: &RelinKey,
        backend: &dyn Backend,
    ) -> HeResult<Ciphertext> {
        self.tensor(other, params, backend)?.relinearize(params, rlk, backend)
    }

    /// Product of two ciphertexts at the same level, not relinearized.
    pub fn tensor(&self, other: &Ciphertext, params: &HeParams, backend: &dyn Backend) -> HeResult<Tensored> {
        let a = self.lift(params, backend)?;
        let mut sum = ProductSum::new(params, a.level)?;
        if std::ptr::eq(self, other) {
            sum.add(params, &a, &a, backend)?;
        } else {
            sum.add(params, &a, &other.lift(params, backend)?, backend)?;
        }
        sum.finish(params, backend)
    }

    /// This ciphertext in the extended basis of products at its level ([`Lifted`]).
    pub fn lift(&self, params: &HeParams, backend: &dyn Backend) -> HeResult<Lifted> {
        Lifted::of(std::slice::from_ref(self), params, backend)
    }
}

/// Whether products at `level` limbs leave room for their noise: log2(q/t) ≥ log t + log N +
/// [`PRODUCT_ROOM_BITS`].
fn check_room(params: &HeParams, level: usize) -> HeResult<()> {
    let n = params.degree();
    let log_delta =
        params.moduli()[..level].iter().map(|m| (m.value() as f64).log2()).sum::<f64>() - params.plain_bits() as f64;
    let need = (params.plain_bits() + PRODUCT_ROOM_BITS) as f64 + (n as f64).log2();
    if log_delta < need {
        return Err(HeError::Unsupported {
            params: params.name(),
            what: format!(
                "multiply ciphertexts at {level} limbs: log2(q/t) = {log_delta:.0} leaves no room for a product's noise (needs {need:.0})"
            ),
        });
    }
    Ok(())
}

/// Σ_j a_j ⊗ b_j over lifted ciphertexts, kept exact in Q∪P and scaled by t/Q once at the end:
/// an inner product of encrypted vectors (a row of ciphertexts times a column) costs one
/// pointwise product per pair and one inverse transform and rounding per result, not per pair.
/// Rounding once also adds less noise than rounding every product.
#[derive(Debug)]
pub struct ProductSum {
    level: usize,
    terms: usize,
    /// (e0, e1, e2) over Q∪P, NTT form, as residues, part by part; none before the first term.
    parts: Option<Buffer>,
}

impl ProductSum {
    /// An empty sum of products at `level` limbs.
    pub fn new(params: &HeParams, level: usize) -> HeResult<ProductSum> {
        check_room(params, level)?;
        params.tensor_basis(level)?;
        Ok(ProductSum { level, terms: 0, parts: None })
    }

    /// Adds Σ_j a_j ⊗ b_j over the pairs of two equally long runs of lifted ciphertexts.
    pub fn add(&mut self, params: &HeParams, a: &Lifted, b: &Lifted, backend: &dyn Backend) -> HeResult<()> {
        if a.len() != b.len() {
            return Err(HeError::Shape(format!("pairing {} lifted ciphertexts with {}", a.len(), b.len())));
        }
        self.add_from(params, a, (b, 0), backend)
    }

    /// Adds Σ_j a_j ⊗ b_(first+j) over every ciphertext of `a` (all at the sum's level); at most
    /// 2^[`SUM_TERM_BITS`] terms in all. One [`Backend::tensor_sum`] over all of them.
    pub fn add_from(
        &mut self,
        params: &HeParams,
        a: &Lifted,
        (b, first): (&Lifted, usize),
        backend: &dyn Backend,
    ) -> HeResult<()> {
        if a.level != self.level || b.level != self.level {
            return Err(HeError::Shape(format!(
                "multiplying ciphertexts at {} and {} RNS limbs into a sum at {}",
                a.level, b.level, self.level
            )));
        }
        let count = a.len();
        if first + count > b.len() {
            return Err(HeError::Shape(format!("lifted ciphertexts {first}..{} of {}", first + count, b.len())));
        }
        if self.terms + count > 1 << SUM_TERM_BITS {
            return Err(HeError::Shape(format!("a sum of more than 2^{SUM_TERM_BITS} ciphertext products")));
        }
        let basis = params.tensor_basis(self.level)?;
        let n = params.degree();
        let add = self.parts.is_some();
        let parts = match &mut self.parts {
            Some(parts) => parts,
            // unspecified values, which the first sum overwrites; host memory until a backend
            // that keeps the operands elsewhere takes it over
            None => self.parts.insert(Scratch::take(3 * basis.len() * n).into()),
        };
        backend.tensor_sum(basis.moduli(), n, count, (&a.data, 0), (&b.data, first), add, parts)?;
        self.terms += count;
        Ok(())
    }

    /// The sum scaled by t/Q and rounded back to Q: (d0, d1) in NTT form, d2 in coefficient form.
    pub fn finish(self, params: &HeParams, backend: &dyn Backend) -> HeResult<Tensored> {
        let mut tensored = self.finish_coeff(params, backend)?;
        tensored.d0.to_ntt(params, backend)?;
        tensored.d1.to_ntt(params, backend)?;
        Ok(tensored)
    }

    /// [`ProductSum::finish`] with all three parts left in coefficient form, what a modulus
    /// switch and the packing read.
    pub fn finish_coeff(self, params: &HeParams, backend: &dyn Backend) -> HeResult<Tensored> {
        let n = params.degree();
        let basis = params.tensor_basis(self.level)?;
        let Some(parts) = self.parts else {
            return Err(HeError::Shape("a sum of no ciphertext products".into()));
        };
        let each = self.level * n;
        let mut rounded = vec![0u64; 3 * each];
        backend.scale_down(basis, parts, &mut rounded)?;
        let d2 = rounded.split_off(2 * each);
        let d1 = rounded.split_off(each);
        let poly = |limbs| RnsPoly { limbs, form: Form::Coeff };
        Ok(Tensored { d0: poly(rounded), d1: poly(d1), d2: poly(d2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::he::Plaintext;
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    use std::sync::Arc;

    fn negacyclic_mod_t(a: &[u128], b: &[u128], t_bits: u32) -> Vec<u128> {
        let n = a.len();
        let mask = if t_bits == 128 { u128::MAX } else { (1u128 << t_bits) - 1 };
        let mut c = vec![0u128; n];
        for (i, &ai) in a.iter().enumerate().filter(|(_, v)| **v != 0) {
            for (j, &bj) in b.iter().enumerate().filter(|(_, v)| **v != 0) {
                let prod = ai.wrapping_mul(bj);
                let at = (i + j) % n;
                c[at] = if i + j < n { c[at].wrapping_add(prod) } else { c[at].wrapping_sub(prod) } & mask;
            }
        }
        c
    }

    fn setup(params: HeResult<Arc<HeParams>>, seed: u64) -> (Arc<HeParams>, CpuBackend, StdRng, SecretKey, RelinKey) {
        let p = params.unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(seed);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let rlk = sk.relin_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        (p, be, rng, sk, rlk)
    }

    #[test]
    fn products_of_uniform_plaintexts_decrypt_to_products_mod_2_64() {
        let (p, be, mut rng, sk, rlk) = setup(HeParams::n8192(), 12);
        let n = p.degree();
        // two dense plaintexts of uniform 64-bit coefficients: the worst case for the noise
        let a: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let b: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let ca = sk
            .encrypt(&Plaintext::new(&p, a.clone()).unwrap_or_else(|e| panic!("{e}")), &be, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let cb = sk
            .encrypt(&Plaintext::new(&p, b.clone()).unwrap_or_else(|e| panic!("{e}")), &be, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let want = crate::he::negacyclic_mod_2_64(&a, &b);
        let tensored = ca.tensor(&cb, &p, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sk.decrypt_tensored(&tensored, &be).unwrap_or_else(|e| panic!("{e}")).coeffs(),
            &want[..],
            "before relinearization"
        );
        let prod = tensored.relinearize(&p, &rlk, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sk.decrypt(&prod, &be).unwrap_or_else(|e| panic!("{e}")).coeffs(), &want[..]);
        let budget = sk.noise_budget(&prod, &be).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("n8192 uniform: {budget:.1} bits left");
        assert!(budget > 20.0, "only {budget:.1} bits left after one product");
        // a square takes the shortcut (one operand extended) and agrees
        let sq = ca.mul(&ca, &p, &rlk, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sk.decrypt(&sq, &be).unwrap_or_else(|e| panic!("{e}")).coeffs(),
            &crate::he::negacyclic_mod_2_64(&a, &a)[..]
        );
    }

    #[test]
    fn a_sum_of_products_decrypts_to_the_inner_product_of_the_plaintexts() {
        let (p, be, mut rng, sk, rlk) = setup(HeParams::n8192(), 16);
        let n = p.degree();
        let encrypt = |v: &[u64], rng: &mut StdRng| {
            sk.encrypt(&Plaintext::new(&p, v.to_vec()).unwrap_or_else(|e| panic!("{e}")), &be, rng)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        // eight pairs of dense uniform plaintexts: Σ_j a_j·b_j mod 2^64, exact
        let pairs: Vec<(Vec<u64>, Vec<u64>)> =
            (0..8).map(|_| ((0..n).map(|_| rng.random()).collect(), (0..n).map(|_| rng.random()).collect())).collect();
        let mut want = vec![0u64; n];
        let mut sum = ProductSum::new(&p, p.moduli().len()).unwrap_or_else(|e| panic!("{e}"));
        let (mut cas, mut cbs) = (Vec::new(), Vec::new());
        for (a, b) in &pairs {
            for (w, v) in want.iter_mut().zip(crate::he::negacyclic_mod_2_64(a, b)) {
                *w = w.wrapping_add(v);
            }
            cas.push(encrypt(a, &mut rng));
            cbs.push(encrypt(b, &mut rng));
        }
        // the first three pairs one at a time, the other five lifted together and paired with
        // the tail of all eight b's lifted together
        let lift = |cts: &[Ciphertext]| Lifted::of(cts, &p, &be).unwrap_or_else(|e| panic!("{e}"));
        for (ca, cb) in cas.iter().zip(&cbs).take(3) {
            sum.add(&p, &lift(std::slice::from_ref(ca)), &lift(std::slice::from_ref(cb)), &be)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let (la, lb) = (lift(&cas[3..]), lift(&cbs));
        assert!(matches!(sum.add_from(&p, &la, (&lb, 4), &be), Err(HeError::Shape(_))), "b's terms 4..9 of 8");
        sum.add_from(&p, &la, (&lb, 3), &be).unwrap_or_else(|e| panic!("{e}"));
        let prod = sum.finish(&p, &be).and_then(|t| t.relinearize(&p, &rlk, &be)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sk.decrypt(&prod, &be).unwrap_or_else(|e| panic!("{e}")).coeffs(), &want[..]);
        let budget = sk.noise_budget(&prod, &be).unwrap_or_else(|e| panic!("{e}"));
        assert!(budget > 15.0, "only {budget:.1} bits left after a sum of eight products");
        // operands at another level, or more terms than the basis holds, are refused
        let ca = encrypt(&pairs[0].0, &mut rng);
        let mut low = ca.clone();
        low.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        let (la, ll) = (ca.lift(&p, &be), low.lift(&p, &be));
        let (la, ll) = (la.unwrap_or_else(|e| panic!("{e}")), ll.unwrap_or_else(|e| panic!("{e}")));
        let mut sum = ProductSum::new(&p, p.moduli().len()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(sum.add(&p, &la, &ll, &be), Err(HeError::Shape(_))));
        for _ in 0..1 << SUM_TERM_BITS {
            sum.add(&p, &la, &la, &be).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(matches!(sum.add(&p, &la, &la, &be), Err(HeError::Shape(_))));
        assert!(matches!(Lifted::of(&[ca, low], &p, &be), Err(HeError::Shape(_))), "lifted together at two levels");
    }

    #[test]
    fn products_are_exact_for_the_linear_set_and_at_lower_levels() {
        // t = 2^70: the full 70-bit product, with small plaintexts on one side (one-hot bits,
        // selections) and uniform ones on the other
        let (p, be, mut rng, sk, rlk) = setup(HeParams::linear(), 13);
        let n = p.degree();
        let t_bits = p.plain_bits();
        let a: Vec<u128> = (0..n).map(|_| rng.random::<u128>() >> (128 - t_bits)).collect();
        let mut b = vec![0u128; n];
        b[3] = 1;
        b[100] = (1 << t_bits) - 1; // −1
        let enc = |v: &[u128], rng: &mut StdRng| {
            let mut ct = sk
                .encrypt(&Plaintext::new(&p, vec![0; 0]).unwrap_or_else(|e| panic!("{e}")), &be, rng)
                .unwrap_or_else(|e| panic!("{e}"));
            ct.add_wide_plain_assign(&p, v, &be).unwrap_or_else(|e| panic!("{e}"));
            ct
        };
        let (ca, cb) = (enc(&a, &mut rng), enc(&b, &mut rng));
        let prod = ca.mul(&cb, &p, &rlk, &be).unwrap_or_else(|e| panic!("{e}"));
        let want: Vec<u64> = negacyclic_mod_t(&a, &b, t_bits).iter().map(|&v| v as u64).collect();
        assert!(sk.decrypt(&prod, &be).unwrap_or_else(|e| panic!("{e}")).coeffs() == &want[..], "t = 2^70 product");
        let budget = sk.noise_budget(&prod, &be).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("linear set: {budget:.1} bits left");
        assert!(budget > 10.0, "{budget:.1} bits left");

        // n8192 at 3 and 2 of its 4 limbs, small messages
        let (p, be, mut rng, sk, rlk) = setup(HeParams::n8192(), 14);
        let a: Vec<u64> = (0..p.degree()).map(|_| rng.random_range(0..1u64 << 20)).collect();
        let b: Vec<u64> = (0..64).map(|_| rng.random_range(-100i64..100) as u64).collect();
        let mut ca = sk
            .encrypt(&Plaintext::new(&p, a.clone()).unwrap_or_else(|e| panic!("{e}")), &be, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cb = sk
            .encrypt(&Plaintext::new(&p, b.clone()).unwrap_or_else(|e| panic!("{e}")), &be, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let want = crate::he::negacyclic_mod_2_64(&a, &b);
        ca.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        cb.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        let prod = ca.mul(&cb, &p, &rlk, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prod.limbs(&p), 3);
        assert!(sk.decrypt(&prod, &be).unwrap_or_else(|e| panic!("{e}")).coeffs() == &want[..], "at 3 limbs");
        eprintln!("n8192 at 3 limbs: {:.1} bits left", sk.noise_budget(&prod, &be).unwrap_or_else(|e| panic!("{e}")));
        // at all 4 limbs left in coefficient form, switched down a prime and relinearized there:
        // the same plaintext at 3 limbs, still in coefficient form
        let enc = |v: &[u64], rng: &mut StdRng| {
            sk.encrypt(&Plaintext::new(&p, v.to_vec()).unwrap_or_else(|e| panic!("{e}")), &be, rng)
                .and_then(|ct| ct.lift(&p, &be))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (la, lb) = (enc(&a, &mut rng), enc(&b, &mut rng));
        let mut sum = ProductSum::new(&p, 4).unwrap_or_else(|e| panic!("{e}"));
        sum.add(&p, &la, &lb, &be).unwrap_or_else(|e| panic!("{e}"));
        let mut tensored = sum.finish_coeff(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        assert!(tensored.switch_down(&p, 4, &be).is_ok() && tensored.switch_down(&p, 5, &be).is_err());
        tensored.switch_down(&p, 3, &be).unwrap_or_else(|e| panic!("{e}"));
        let low = tensored.relinearize(&p, &rlk, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((low.limbs(&p), low.c0.form(), low.c1.form()), (3, Form::Coeff, Form::Coeff));
        assert!(sk.decrypt(&low, &be).unwrap_or_else(|e| panic!("{e}")).coeffs() == &want[..], "switched to 3 limbs");
        eprintln!(
            "n8192 switched to 3 limbs: {:.1} bits left",
            sk.noise_budget(&low, &be).unwrap_or_else(|e| panic!("{e}"))
        );
    }

    #[test]
    fn products_need_operands_at_one_level_and_a_matching_key() {
        let (p, be, mut rng, sk, rlk) = setup(HeParams::n8192(), 15);
        let pt = Plaintext::new(&p, vec![1, 2, 3]).unwrap_or_else(|e| panic!("{e}"));
        let ct = sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let mut low = ct.clone();
        low.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(ct.mul(&low, &p, &rlk, &be), Err(HeError::Shape(_))));
        // at 2 of n8192's 4 limbs, q/t = 2^45 cannot hold a product's ~2^79 noise: refused, not wrong
        let mut lower = low.clone();
        lower.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        let refused = lower.mul(&lower, &p, &rlk, &be);
        assert!(matches!(&refused, Err(HeError::Unsupported { what, .. }) if what.contains("no room")), "{refused:?}");
        let short = RelinKey::new(&p, rlk.parts[..2].to_vec());
        assert!(matches!(ct.mul(&ct, &p, &short, &be), Err(HeError::Shape(_))));
    }
}
