//! BFV with plaintext modulus t = 2^64 and coefficient encoding (Cheetah-style): a plaintext is
//! a polynomial with coefficients in Z_2^64, encrypted as ⌊q·m/t⌉ + noise. (The textbook Δ·m
//! with Δ = ⌊q/t⌋ would add an error (q mod t)·m/q of up to 2^19 here, since t is not small
//! against q; the rounded encoding leaves only the noise.)
//!
//! Decryption computes x = c0 + c1·s mod q and rounds: m = ⌊(2^64·x + ⌊q/2⌋) / q⌋ mod 2^64,
//! which is correct while the noise stays below Δ/2 (see [`Decryptor::noise_budget`]).

use std::sync::Arc;

use num_bigint::BigUint;
use num_traits::{One, ToPrimitive, Zero};
use rand::rngs::ChaCha20Rng;
use rand::{CryptoRng, SeedableRng};
use zeroize::Zeroize;

use super::poly::{Form, RnsPoly};
use super::{HeError, HeParams, HeResult};
use crate::backend::{Backend, Prepared};

/// A plaintext: up to N coefficients in Z_2^64 (missing ones are zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plaintext {
    coeffs: Vec<u64>,
}

impl Plaintext {
    /// Wraps coefficients; errors if there are more than N.
    pub fn new(params: &HeParams, coeffs: Vec<u64>) -> HeResult<Plaintext> {
        if coeffs.len() > params.degree() {
            return Err(HeError::Shape(format!(
                "{} plaintext coefficients exceed N = {}",
                coeffs.len(),
                params.degree()
            )));
        }
        Ok(Plaintext { coeffs })
    }

    /// The coefficients (exactly N after decryption).
    pub fn coeffs(&self) -> &[u64] {
        &self.coeffs
    }

    fn scaled(&self, params: &HeParams, ctx: &CrtContext, limbs: usize) -> RnsPoly {
        let wide: Vec<u128> = self.coeffs.iter().map(|&c| c as u128).collect();
        scaled(params, ctx, limbs, &wide)
    }
}

/// ⌊q·m/t⌉ = Δ·m + ⌊(r·m + t/2)/t⌋ with q = Δ·t + r (q = the first `limbs` primes, as in `ctx`)
/// for coefficients m < t, in RNS coefficient form.
fn scaled(params: &HeParams, ctx: &CrtContext, limbs: usize, coeffs: &[u128]) -> RnsPoly {
    let n = params.degree();
    let corrections: Vec<u128> = coeffs.iter().map(|&m| ctx.rounding(m)).collect();
    let mut poly = RnsPoly { limbs: vec![0; n * limbs], form: Form::Coeff };
    for (i, m) in params.moduli()[..limbs].iter().enumerate() {
        let delta = ctx.delta_mod[i];
        let dst = poly.limbs[i * n..(i + 1) * n].iter_mut();
        for ((dst, &c), &corr) in dst.zip(coeffs).zip(&corrections) {
            *dst = m.add(m.mul(m.reduce_u128(c), delta), m.reduce_u128(corr));
        }
    }
    poly
}

impl Ciphertext {
    /// Adds ⌊q'·m/t⌉ for coefficients m < t given as u128 (t up to 2^96), at the ciphertext's
    /// level q'.
    pub(crate) fn add_wide_plain_assign(
        &mut self,
        params: &HeParams,
        coeffs: &[u128],
        backend: &dyn Backend,
    ) -> HeResult<()> {
        add_wide_plain(params, &mut self.c0, coeffs, backend)
    }
}

/// c0 += ⌊q'·m/t⌉ for the plaintext coefficients `coeffs` (below t), at c0's level q' and in its
/// form: adds m to whatever c0 is the constant part of.
pub(crate) fn add_wide_plain(
    params: &HeParams,
    c0: &mut RnsPoly,
    coeffs: &[u128],
    backend: &dyn Backend,
) -> HeResult<()> {
    let t = params.plain_bits();
    if coeffs.len() > params.degree() || coeffs.iter().any(|&c| c >> t != 0) {
        return Err(HeError::Shape(format!("plaintext must have at most N coefficients below 2^{t}")));
    }
    let (n, k) = (params.degree(), c0.limbs.len() / params.degree());
    let ctx = CrtContext::new(&params.moduli()[..k], t);
    // ⌊q'·m/t⌉ is zero beyond the plaintext's coefficients: in coefficient form only those are
    // added (a constant, such as a selector's share, touches one coefficient per limb)
    let mut dm = scaled(params, &ctx, k, coeffs);
    match c0.form() {
        Form::Ntt => {
            dm.to_ntt(params, backend)?;
            c0.add_assign(params, &dm);
        }
        Form::Coeff => {
            for ((c, d), m) in c0.limbs.chunks_exact_mut(n).zip(dm.limbs.chunks_exact(n)).zip(params.moduli()) {
                c.iter_mut().zip(&d[..coeffs.len()]).for_each(|(c, &d)| *c = m.add(*c, d));
            }
        }
    }
    Ok(())
}

/// A BFV ciphertext (c0, c1) with c0 + c1·s ≈ Δ·m.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext {
    pub(crate) c0: RnsPoly,
    pub(crate) c1: RnsPoly,
}

impl Ciphertext {
    /// A ciphertext from the coefficient-form residues of c0 and c1 (k·N each, limb-major).
    pub(crate) fn from_coeff_limbs(c0: Vec<u64>, c1: Vec<u64>) -> Ciphertext {
        Ciphertext { c0: RnsPoly { limbs: c0, form: Form::Coeff }, c1: RnsPoly { limbs: c1, form: Form::Coeff } }
    }

    /// `self += other`. Both must be at the same modulus level; `other` is brought to `self`'s
    /// representation if it differs.
    pub fn add_assign(&mut self, params: &HeParams, other: &Ciphertext, backend: &dyn Backend) -> HeResult<()> {
        let (k, k_other) = (self.limbs(params), other.limbs(params));
        if k != k_other {
            return Err(HeError::Shape(format!("adding ciphertexts at {k} and {k_other} RNS limbs")));
        }
        if self.c0.form() == other.c0.form() {
            self.c0.add_assign(params, &other.c0);
            self.c1.add_assign(params, &other.c1);
        } else {
            let (mut c0, mut c1) = (other.c0.clone(), other.c1.clone());
            for c in [&mut c0, &mut c1] {
                match self.c0.form() {
                    Form::Ntt => c.to_ntt(params, backend)?,
                    Form::Coeff => c.to_coeff(params, backend)?,
                }
            }
            self.c0.add_assign(params, &c0);
            self.c1.add_assign(params, &c1);
        }
        Ok(())
    }

    /// Adds a plaintext: c0 += ⌊q'·m/t⌉ at the ciphertext's level q'.
    pub fn add_plain_assign(&mut self, params: &HeParams, pt: &Plaintext, backend: &dyn Backend) -> HeResult<()> {
        let wide: Vec<u128> = pt.coeffs.iter().map(|&c| c as u128).collect();
        self.add_wide_plain_assign(params, &wide, backend)
    }
}

/// A plaintext operand for products, prepared once and reused (the server's weights): signed
/// coefficients (ring elements of Z_2^64 read in two's complement) lifted mod q, in NTT form,
/// with Shoup constants for division-free products.
///
/// The product's noise is the ciphertext's noise times about Σ|w_j|, so operands with small
/// coefficients (fixed-point weights) keep most of the budget.
#[derive(Debug, Clone)]
pub struct PlainOperand {
    poly: RnsPoly,
    shoup: Vec<u64>,
}

impl PlainOperand {
    /// Prepares up to N coefficients.
    pub fn new(params: &HeParams, coeffs: &[u64], backend: &dyn Backend) -> HeResult<PlainOperand> {
        if coeffs.len() > params.degree() {
            return Err(HeError::Shape(format!(
                "{} operand coefficients exceed N = {}",
                coeffs.len(),
                params.degree()
            )));
        }
        let mut signed: Vec<i64> = coeffs.iter().map(|&c| c as i64).collect();
        signed.resize(params.degree(), 0);
        let mut poly = RnsPoly::from_signed(params, &signed);
        poly.to_ntt(params, backend)?;
        let n = params.degree();
        let shoup = poly
            .limbs
            .chunks_exact(n)
            .zip(params.moduli())
            .flat_map(|(limb, m)| limb.iter().map(move |&w| m.shoup(w)))
            .collect();
        Ok(PlainOperand { poly, shoup })
    }
}

impl Ciphertext {
    /// `self ← self · w`: both halves multiplied by the operand (converted to NTT form first).
    /// Decrypts to the negacyclic product m·w with coefficients mod 2^64.
    pub fn mul_plain_assign(&mut self, params: &HeParams, w: &PlainOperand, backend: &dyn Backend) -> HeResult<()> {
        let n = params.degree();
        let k = self.limbs(params);
        let mut product = vec![0u64; k * n];
        let (ws, wsh) = (&w.poly.limbs[..k * n], &w.shoup[..k * n]);
        for c in [&mut self.c0, &mut self.c1] {
            c.to_ntt(params, backend)?;
            backend.mul_acc(&params.moduli()[..k], n, 1, &c.limbs, ws, Prepared::W(wsh), &mut product)?;
            c.limbs.copy_from_slice(&product);
        }
        Ok(())
    }

    /// Number of RNS limbs (the modulus level): all primes when fresh, fewer after
    /// [`Ciphertext::drop_last_modulus`].
    pub fn limbs(&self, params: &HeParams) -> usize {
        self.c0.limbs.len() / params.degree()
    }

    /// Modulus switching from q to q' = q / p_k (the last prime), to shrink what is sent back:
    /// c' = ⌊c · q'/q⌉, computed per limb as (c_i − \[c_k\]) · p_k^-1 mod p_i with \[c_k\] the
    /// centered last residue. The message is kept (its scale q/t becomes q'/t); the noise is
    /// divided by p_k and gains a rounding term of about (1 + ‖s‖_1)/2. Leaves coefficient form.
    pub fn drop_last_modulus(&mut self, params: &HeParams, backend: &dyn Backend) -> HeResult<()> {
        let n = params.degree();
        let k = self.limbs(params);
        let left: f64 = params.moduli()[..k.saturating_sub(1)].iter().map(|m| (m.value() as f64).log2()).sum();
        let min = (params.plain_bits() + MIN_NOISE_ROOM) as f64;
        if left < min {
            return Err(HeError::Shape(format!(
                "dropping a modulus would leave a {left:.0}-bit q, too small for {}-bit plaintexts (at least {min})",
                params.plain_bits()
            )));
        }
        let last = params.moduli()[k - 1];
        for c in [&mut self.c0, &mut self.c1] {
            c.to_coeff(params, backend)?;
            let (low, top) = c.limbs.split_at_mut((k - 1) * n);
            backend.divide_by_prime(&params.moduli()[..k - 1], n, low, top, &last)?;
            // the dropped limb's memory goes back (in place: a shrinking reallocation does not copy)
            c.limbs.truncate((k - 1) * n);
            c.limbs.shrink_to_fit();
        }
        Ok(())
    }
}

/// Bits above the plaintext modulus that a modulus switch must leave for the noise.
const MIN_NOISE_ROOM: u32 = 8;

/// The client's secret key: a ternary polynomial, kept in NTT form. Zeroized on drop; its
/// `Debug` prints nothing of it.
pub struct SecretKey {
    pub(crate) s: RnsPoly,
    pub(crate) params: Arc<HeParams>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}, redacted)", self.params.name())
    }
}

impl SecretKey {
    /// The same secret for a sibling parameter set (another plaintext modulus over the same
    /// ring and primes, [`HeParams::with_plain_bits`]).
    pub fn for_params(&self, params: &Arc<HeParams>) -> HeResult<SecretKey> {
        let same = params.degree() == self.params.degree()
            && params.ext_moduli().iter().map(|m| m.value()).eq(self.params.ext_moduli().iter().map(|m| m.value()));
        if !same {
            return Err(HeError::Shape(format!(
                "{} is not a sibling of the key's {}",
                params.name(),
                self.params.name()
            )));
        }
        Ok(SecretKey { s: self.s.clone(), params: params.clone() })
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.s.zeroize();
    }
}

/// A public key (b, a) = (−a·s + e, a), in NTT form. Its uniform half `a` is expanded from a
/// 32-byte seed, on the wire too: whoever receives the key gets an `a` it can trust to be
/// uniform (a client cannot send a = 0, which would make re-randomization by this key void).
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub(crate) b: RnsPoly,
    pub(crate) a: RnsPoly,
    pub(crate) seed: [u8; 32],
    pub(crate) params: Arc<HeParams>,
}

impl SecretKey {
    /// A fresh ternary secret key.
    pub fn generate<R: CryptoRng + ?Sized>(
        params: &Arc<HeParams>,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<SecretKey> {
        let mut coeffs = RnsPoly::ternary_coeffs(params.degree(), rng);
        let s = RnsPoly::from_signed(params, &coeffs);
        coeffs.zeroize();
        let mut sk = SecretKey { s, params: params.clone() };
        sk.s.to_ntt(params, backend)?;
        Ok(sk)
    }

    /// The secret's small signed coefficients (the caller zeroizes them when done).
    pub(crate) fn signed_coeffs(&self, backend: &dyn Backend) -> HeResult<Vec<i64>> {
        let p = &self.params;
        let m = p.moduli()[0];
        let mut limb = self.s.limb(p, 0).to_vec();
        let inverse = backend.ntt_inverse(&p.tables()[..1], &mut limb);
        let out = limb.iter().map(|&v| if v > m.value() / 2 { -((m.value() - v) as i64) } else { v as i64 }).collect();
        limb.zeroize();
        inverse?;
        Ok(out)
    }

    /// The matching public key.
    pub fn public_key<R: CryptoRng + ?Sized>(&self, backend: &dyn Backend, rng: &mut R) -> HeResult<PublicKey> {
        self.public_key_for(&self.s, backend, rng)
    }

    /// A public key (b, a) = (−a·z + e, a) for the secret `z` (NTT form): `s`, or s² for the
    /// key that re-randomizes products that were not relinearized.
    pub(crate) fn public_key_for<R: CryptoRng + ?Sized>(
        &self,
        z: &RnsPoly,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<PublicKey> {
        let p = &self.params;
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let a = SeededCiphertext::mask(p, seed, p.moduli().len());
        let mut e = RnsPoly::from_signed(p, &RnsPoly::error_coeffs(p.degree(), rng));
        e.to_ntt(p, backend)?;
        let mut b = a.clone();
        b.mul_assign(p, z);
        b.neg_assign(p);
        b.add_assign(p, &e);
        Ok(PublicKey { b, a, seed, params: p.clone() })
    }

    /// Symmetric encryption: (c0, c1) = (−a·s + e + Δ·m, a), returned in NTT form.
    pub fn encrypt<R: CryptoRng + ?Sized>(
        &self,
        pt: &Plaintext,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<Ciphertext> {
        let c1 = RnsPoly::uniform(&self.params, Form::Ntt, rng);
        self.encrypt_with_mask(pt, c1, backend, rng)
    }

    /// Symmetric encryption whose uniform half `a` is expanded from a fresh 32-byte seed, so that
    /// only c0 and the seed travel (half the bytes). `a` is public in RLWE anyway; expanding it
    /// with ChaCha20 keeps it indistinguishable from uniform.
    pub fn encrypt_seeded<R: CryptoRng + ?Sized>(
        &self,
        pt: &Plaintext,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<SeededCiphertext> {
        self.encrypt_seeded_at(pt, self.params.moduli().len(), backend, rng)
    }

    /// [`SecretKey::encrypt_seeded`] at the level of the first `limbs` primes, q' = q_0···q_(limbs−1):
    /// c0 = −a·s + e + ⌊q'·m/t⌉ mod q', for a receiver that computes at that level (fewer
    /// limbs to send and to compute on, for products whose noise q' still holds).
    pub fn encrypt_seeded_at<R: CryptoRng + ?Sized>(
        &self,
        pt: &Plaintext,
        limbs: usize,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<SeededCiphertext> {
        let p = &self.params;
        if !(1..=p.moduli().len()).contains(&limbs) {
            return Err(HeError::Shape(format!("encrypt at {limbs} limbs (1..={})", p.moduli().len())));
        }
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let c1 = SeededCiphertext::mask(p, seed, limbs);
        let ct = self.encrypt_with_mask(pt, c1, backend, rng)?;
        Ok(SeededCiphertext { c0: ct.c0, seed })
    }

    /// (−a·s + e + ⌊q'·m/t⌉, a) at the level q' of the mask `c1` (its first limbs of q).
    fn encrypt_with_mask<R: CryptoRng + ?Sized>(
        &self,
        pt: &Plaintext,
        c1: RnsPoly,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<Ciphertext> {
        let p = &self.params;
        let (n, limbs) = (p.degree(), c1.limbs.len() / p.degree());
        let ctx = CrtContext::new(&p.moduli()[..limbs], p.plain_bits());
        let mut c0 = RnsPoly::from_signed(p, &RnsPoly::error_coeffs(n, rng));
        c0.limbs.truncate(limbs * n);
        c0.add_assign(p, &pt.scaled(p, &ctx, limbs));
        c0.to_ntt(p, backend)?;
        let mut as_ = c1.clone();
        as_.mul_assign(p, &self.s);
        c0.sub_assign(p, &as_);
        Ok(Ciphertext { c0, c1 })
    }

    /// `c0 + c1·s` in coefficient form.
    fn phase(&self, ct: &Ciphertext, backend: &dyn Backend) -> HeResult<RnsPoly> {
        let p = &self.params;
        let (mut c0, mut c1) = (ct.c0.clone(), ct.c1.clone());
        c0.to_ntt(p, backend)?;
        c1.to_ntt(p, backend)?;
        c1.mul_assign(p, &self.s);
        c0.add_assign(p, &c1);
        c0.to_coeff(p, backend)?;
        Ok(c0)
    }

    /// Decrypts. With t > 2^64 the coefficients are the low 64 bits of the plaintext.
    pub fn decrypt(&self, ct: &Ciphertext, backend: &dyn Backend) -> HeResult<Plaintext> {
        Ok(self.decode_phase(&self.phase(ct, backend)?))
    }

    /// Decrypts to the whole plaintext, every coefficient mod t (t up to 2^96).
    pub fn decrypt_wide(&self, ct: &Ciphertext, backend: &dyn Backend) -> HeResult<Vec<u128>> {
        let p = &self.params;
        let x = self.phase(ct, backend)?;
        let ctx = CrtContext::new(&p.moduli()[..ct.limbs(p)], p.plain_bits());
        Ok((0..p.degree()).map(|j| ctx.round_to_t(&ctx.compose(p, &x, j)).to_u128().unwrap_or(0)).collect())
    }

    /// The plaintext of a phase x ≈ Δ·m (coefficient form, at its level): ⌊t·x/q⌉, low 64 bits.
    pub(crate) fn decode_phase(&self, x: &RnsPoly) -> Plaintext {
        let p = &self.params;
        let ctx = CrtContext::new(&p.moduli()[..x.limbs.len() / p.degree()], p.plain_bits());
        let low = BigUint::from(u64::MAX);
        let coeffs =
            (0..p.degree()).map(|j| (ctx.round_to_t(&ctx.compose(p, x, j)) & &low).to_u64().unwrap_or(0)).collect();
        Plaintext { coeffs }
    }

    /// Bits of noise budget left: log2(Δ/2) − log2(max |noise|). Decryption is correct while it
    /// is positive.
    pub fn noise_budget(&self, ct: &Ciphertext, backend: &dyn Backend) -> HeResult<f64> {
        let p = &self.params;
        let ctx = CrtContext::new(&p.moduli()[..ct.limbs(p)], p.plain_bits());
        let x = self.phase(ct, backend)?;
        let mut worst = BigUint::zero();
        for j in 0..p.degree() {
            let xj = ctx.compose(p, &x, j);
            let m = ctx.round_to_t(&xj);
            let dm = ((&ctx.q * m + (BigUint::one() << (ctx.t_bits - 1))) >> ctx.t_bits) % &ctx.q;
            let v = if xj >= dm { &xj - &dm } else { &xj + &ctx.q - &dm };
            let v = if v > ctx.half_q { &ctx.q - &v } else { v };
            worst = worst.max(v);
        }
        let half_delta = bits(&ctx.delta) - 1.0;
        Ok(if worst.is_zero() { half_delta } else { half_delta - bits(&worst) })
    }
}

/// A fresh symmetric ciphertext whose c1 is given by a seed (see [`SecretKey::encrypt_seeded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededCiphertext {
    pub(crate) c0: RnsPoly,
    pub(crate) seed: [u8; 32],
}

impl SeededCiphertext {
    /// The uniform polynomial (NTT form) that `seed` stands for, at its first `limbs` limbs
    /// (a prefix of the full-level one: limbs are drawn in order).
    pub(crate) fn mask(params: &HeParams, seed: [u8; 32], limbs: usize) -> RnsPoly {
        RnsPoly::uniform_at(params, limbs, Form::Ntt, &mut ChaCha20Rng::from_seed(seed))
    }

    /// Number of RNS limbs (the level it was encrypted at).
    pub fn limbs(&self, params: &HeParams) -> usize {
        self.c0.limbs.len() / params.degree()
    }

    /// The full ciphertext.
    pub fn expand(&self, params: &HeParams) -> Ciphertext {
        Ciphertext { c0: self.c0.clone(), c1: SeededCiphertext::mask(params, self.seed, self.limbs(params)) }
    }
}

impl PublicKey {
    /// Public-key encryption: (b·u + e0 + Δ·m, a·u + e1) with ternary u, in NTT form.
    pub fn encrypt<R: CryptoRng + ?Sized>(
        &self,
        pt: &Plaintext,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<Ciphertext> {
        let p = &self.params;
        let ctx = CrtContext::new(p.moduli(), p.plain_bits());
        let mut u = RnsPoly::from_signed(p, &RnsPoly::ternary_coeffs(p.degree(), rng));
        u.to_ntt(p, backend)?;
        let mut c0 = RnsPoly::from_signed(p, &RnsPoly::error_coeffs(p.degree(), rng));
        c0.add_assign(p, &pt.scaled(p, &ctx, p.moduli().len()));
        c0.to_ntt(p, backend)?;
        let mut bu = self.b.clone();
        bu.mul_assign(p, &u);
        c0.add_assign(p, &bu);
        let mut c1 = RnsPoly::from_signed(p, &RnsPoly::error_coeffs(p.degree(), rng));
        c1.to_ntt(p, backend)?;
        let mut au = self.a.clone();
        au.mul_assign(p, &u);
        c1.add_assign(p, &au);
        Ok(Ciphertext { c0, c1 })
    }
}

/// The 256-bit product a·b as (high, low) 128-bit halves.
fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    let (a1, a0) = (a >> 64, a & u64::MAX as u128);
    let (b1, b0) = (b >> 64, b & u64::MAX as u128);
    let (p00, p01, p10, p11) = (a0 * b0, a0 * b1, a1 * b0, a1 * b1);
    let mid = (p00 >> 64) + (p01 & u64::MAX as u128) + (p10 & u64::MAX as u128);
    let lo = (mid << 64) | (p00 & u64::MAX as u128);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (hi, lo)
}

fn bits(x: &BigUint) -> f64 {
    let b = x.bits();
    if b <= 64 {
        x.to_u64().map_or(0.0, |v| (v as f64).log2())
    } else {
        let top = (x >> (b - 53)).to_u64().unwrap_or(0) as f64;
        top.log2() + (b - 53) as f64
    }
}

/// Multi-precision constants for encoding and decoding: q, Δ = ⌊q/2^64⌋, and the CRT basis.
pub(crate) struct CrtContext {
    pub(crate) q: BigUint,
    pub(crate) half_q: BigUint,
    delta: BigUint,
    delta_mod: Vec<u64>,
    /// q mod t, t = 2^t_bits.
    q_mod_t: u128,
    t_bits: u32,
    /// (q / p_i) · ((q / p_i)^-1 mod p_i), the CRT idempotents.
    basis: Vec<BigUint>,
}

impl CrtContext {
    /// Constants for q = ∏ `moduli` (all primes, or the first k at a lower level) and the
    /// plaintext modulus 2^t_bits.
    pub(crate) fn new(moduli: &[crate::ring::modp::Modulus], t_bits: u32) -> CrtContext {
        let q: BigUint = moduli.iter().fold(BigUint::one(), |acc, m| acc * m.value());
        let delta = &q >> t_bits;
        let delta_mod = moduli.iter().map(|m| (&delta % m.value()).to_u64().unwrap_or(0)).collect();
        let basis = moduli
            .iter()
            .map(|m| {
                let q_hat = &q / m.value();
                let q_hat_mod = (&q_hat % m.value()).to_u64().unwrap_or(0);
                q_hat * m.inv(q_hat_mod).unwrap_or(0)
            })
            .collect();
        let q_mod_t = (&q & ((BigUint::one() << t_bits) - 1u32)).to_u128().unwrap_or(0);
        CrtContext { half_q: &q >> 1u32, q, delta, delta_mod, q_mod_t, t_bits, basis }
    }

    /// Coefficient `j` of `x` as an integer in [0, q).
    fn compose(&self, params: &HeParams, x: &RnsPoly, j: usize) -> BigUint {
        self.compose_limbs(params.degree(), &x.limbs, j)
    }

    /// Coefficient `j` of RNS rows `limbs` (row i = residues mod the i-th prime, n each) as an
    /// integer in [0, q).
    pub(crate) fn compose_limbs(&self, n: usize, limbs: &[u64], j: usize) -> BigUint {
        let sum: BigUint = self.basis.iter().enumerate().map(|(i, b)| b * limbs[i * n + j]).sum();
        sum % &self.q
    }

    /// ⌊(t·x + ⌊q/2⌋) / q⌋ mod t: the plaintext coefficient.
    fn round_to_t(&self, x: &BigUint) -> BigUint {
        let r = ((x << self.t_bits) + &self.half_q) / &self.q;
        r & ((BigUint::one() << self.t_bits) - 1u32)
    }

    /// ⌊(r·m + t/2) / t⌋ for r = q mod t and m < t: the rounding part of ⌊q·m/t⌉ (below t).
    fn rounding(&self, m: u128) -> u128 {
        let (hi, lo) = mul_wide(self.q_mod_t, m);
        let (lo, carry) = lo.overflowing_add(1u128 << (self.t_bits - 1));
        let hi = hi + carry as u128;
        // (hi·2^128 + lo) >> t_bits, with 64 ≤ t_bits < 128 and the result below 2^t_bits
        (hi << (128 - self.t_bits)) | (lo >> self.t_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn setup(params: HeResult<Arc<HeParams>>) -> (Arc<HeParams>, CpuBackend, StdRng) {
        (
            params.unwrap_or_else(|e| panic!("{e}")),
            CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}")),
            StdRng::seed_from_u64(9),
        )
    }

    #[test]
    fn wide_products_match_big_integers() {
        let mut rng = StdRng::seed_from_u64(12);
        for _ in 0..1000 {
            let (a, b): (u128, u128) = (rng.random(), rng.random());
            let (hi, lo) = mul_wide(a, b);
            let want = BigUint::from(a) * BigUint::from(b);
            assert_eq!((BigUint::from(hi) << 128u32) + BigUint::from(lo), want);
        }
    }

    #[test]
    fn encryption_round_trips_for_every_parameter_set() {
        for params in [HeParams::n4096(), HeParams::n8192()] {
            let (p, be, mut rng) = setup(params);
            let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
            let pk = sk.public_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
            let mut coeffs: Vec<u64> = (0..p.degree()).map(|_| rng.random()).collect();
            coeffs[0] = u64::MAX;
            coeffs[1] = 0;
            let pt = Plaintext::new(&p, coeffs).unwrap_or_else(|e| panic!("{e}"));
            for ct in [
                sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}")),
                pk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}")),
            ] {
                assert_eq!(sk.decrypt(&ct, &be).unwrap_or_else(|e| panic!("{e}")), pt, "{}", p.name());
                let budget = sk.noise_budget(&ct, &be).unwrap_or_else(|e| panic!("{e}"));
                // fresh noise is ~2^13 or less against Δ/2 ≈ 2^44 (N=4096) / 2^153 (N=8192)
                assert!(budget > 25.0, "{}: only {budget:.1} bits of budget", p.name());
            }
        }
    }

    #[test]
    fn sums_of_ciphertexts_and_plaintexts_decrypt_to_sums_mod_2_64() {
        let (p, be, mut rng) = setup(HeParams::n4096());
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let a: Vec<u64> = (0..p.degree()).map(|_| rng.random()).collect();
        let b: Vec<u64> = (0..100).map(|_| rng.random()).collect();
        let pa = Plaintext::new(&p, a.clone()).unwrap_or_else(|e| panic!("{e}"));
        let pb = Plaintext::new(&p, b.clone()).unwrap_or_else(|e| panic!("{e}"));
        let mut ct = sk.encrypt(&pa, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let mut other = sk.encrypt(&pb, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        other.c0.to_coeff(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        other.c1.to_coeff(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        ct.add_assign(&p, &other, &be).unwrap_or_else(|e| panic!("{e}"));
        ct.add_plain_assign(&p, &pb, &be).unwrap_or_else(|e| panic!("{e}"));
        let got = sk.decrypt(&ct, &be).unwrap_or_else(|e| panic!("{e}"));
        for (j, (&got, &aj)) in got.coeffs().iter().zip(&a).enumerate() {
            let bj = b.get(j).copied().unwrap_or(0);
            assert_eq!(got, aj.wrapping_add(bj).wrapping_add(bj), "coefficient {j}");
        }
    }

    #[test]
    fn plaintext_products_decrypt_to_negacyclic_products_mod_2_64() {
        let (p, be, mut rng) = setup(HeParams::n4096());
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let m: Vec<u64> = (0..p.degree()).map(|_| rng.random()).collect();
        // fixed-point-sized signed weights, |w| < 2^12, on a quarter of the coefficients
        let w: Vec<u64> = (0..p.degree() / 4).map(|_| rng.random_range(-4096i64..4096) as u64).collect();
        let mut ct = sk
            .encrypt(&Plaintext::new(&p, m.clone()).unwrap_or_else(|e| panic!("{e}")), &be, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let op = PlainOperand::new(&p, &w, &be).unwrap_or_else(|e| panic!("{e}"));
        ct.mul_plain_assign(&p, &op, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sk.decrypt(&ct, &be).unwrap_or_else(|e| panic!("{e}")).coeffs(),
            &crate::he::negacyclic_mod_2_64(&m, &w)[..]
        );
        let budget = sk.noise_budget(&ct, &be).unwrap_or_else(|e| panic!("{e}"));
        assert!(budget > 10.0, "{budget:.1} bits left after a product by 12-bit weights");
    }

    #[test]
    fn dropping_moduli_keeps_the_message_and_shrinks_the_ciphertext() {
        for params in [HeParams::n4096(), HeParams::n8192()] {
            let (p, be, mut rng) = setup(params);
            let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
            let pt =
                Plaintext::new(&p, (0..p.degree()).map(|_| rng.random()).collect()).unwrap_or_else(|e| panic!("{e}"));
            let mut ct = sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
            let w: Vec<u64> = (0..64).map(|_| rng.random_range(-256i64..256) as u64).collect();
            ct.mul_plain_assign(&p, &PlainOperand::new(&p, &w, &be).unwrap_or_else(|e| panic!("{e}")), &be)
                .unwrap_or_else(|e| panic!("{e}"));
            let expect = sk.decrypt(&ct, &be).unwrap_or_else(|e| panic!("{e}"));
            let mut dropped = 0;
            while ct.drop_last_modulus(&p, &be).is_ok() {
                dropped += 1;
                assert_eq!(
                    sk.decrypt(&ct, &be).unwrap_or_else(|e| panic!("{e}")),
                    expect,
                    "{} at {} limbs",
                    p.name(),
                    ct.limbs(&p)
                );
                assert!(
                    sk.noise_budget(&ct, &be).unwrap_or_else(|e| panic!("{e}")) > 0.0,
                    "{}: budget exhausted",
                    p.name()
                );
            }
            // N=4096's 109-bit q cannot lose a 54-bit prime; N=8192 goes from 218 to 109 bits.
            assert_eq!(dropped, if p.degree() == 4096 { 0 } else { 2 }, "{}", p.name());
        }
    }

    #[test]
    fn operations_at_a_lower_level_stay_correct_or_are_refused() {
        let (p, be, mut rng) = setup(HeParams::n8192());
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let a: Vec<u64> = (0..p.degree()).map(|_| rng.random()).collect();
        let pa = Plaintext::new(&p, a.clone()).unwrap_or_else(|e| panic!("{e}"));
        let full = sk.encrypt(&pa, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let mut low = full.clone();
        low.drop_last_modulus(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        assert!(low.clone().add_assign(&p, &full, &be).is_err(), "levels differ");
        low.add_plain_assign(&p, &pa, &be).unwrap_or_else(|e| panic!("{e}"));
        let doubled: Vec<u64> = a.iter().map(|x| x.wrapping_mul(2)).collect();
        assert_eq!(sk.decrypt(&low, &be).unwrap_or_else(|e| panic!("{e}")).coeffs(), &doubled[..]);
    }

    #[test]
    fn too_many_coefficients_is_an_error_and_the_key_is_not_printed() {
        let (p, be, mut rng) = setup(HeParams::n4096());
        assert!(Plaintext::new(&p, vec![0; 4097]).is_err());
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{sk:?}"), "SecretKey(n4096, redacted)");
    }
}
