//! Polynomials of Z_q[X]/(X^N + 1) in RNS form: one row of N residues per prime.

use rand::{CryptoRng, RngExt};
use zeroize::Zeroize;

use super::{HeParams, HeResult};
use crate::backend::Backend;

/// Coefficient or evaluation (NTT) representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Residues of the coefficients.
    Coeff,
    /// Residues of the NTT evaluations (products are pointwise).
    Ntt,
}

/// A polynomial mod q in RNS form: `limbs[i·N + j]` is coefficient (or evaluation) j mod p_i.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RnsPoly {
    pub(crate) limbs: Vec<u64>,
    pub(crate) form: Form,
}

impl Zeroize for RnsPoly {
    fn zeroize(&mut self) {
        self.limbs.zeroize();
    }
}

impl RnsPoly {
    /// The zero polynomial.
    pub fn zero(params: &HeParams, form: Form) -> RnsPoly {
        RnsPoly { limbs: vec![0; params.degree() * params.moduli().len()], form }
    }

    /// Uniform mod q (uniform per residue is uniform mod q by the CRT).
    pub fn uniform<R: CryptoRng + ?Sized>(params: &HeParams, form: Form, rng: &mut R) -> RnsPoly {
        RnsPoly::uniform_at(params, params.moduli().len(), form, rng)
    }

    /// [`RnsPoly::uniform`] at the first `level` primes: the same values as the first `level`
    /// limbs of the full-level polynomial drawn from the same generator.
    pub fn uniform_at<R: CryptoRng + ?Sized>(params: &HeParams, level: usize, form: Form, rng: &mut R) -> RnsPoly {
        let n = params.degree();
        let mut limbs = Vec::with_capacity(n * level);
        for m in &params.moduli()[..level] {
            limbs.extend((0..n).map(|_| rng.random_range(0..m.value())));
        }
        RnsPoly { limbs, form }
    }

    /// Lifts small signed coefficients into every residue, in coefficient form.
    pub fn from_signed(params: &HeParams, coeffs: &[i64]) -> RnsPoly {
        let mut limbs = Vec::with_capacity(params.degree() * params.moduli().len());
        for m in params.moduli() {
            limbs.extend(coeffs.iter().map(|&c| m.reduce_signed(c)));
        }
        RnsPoly { limbs, form: Form::Coeff }
    }

    /// Ternary coefficients, uniform in {-1, 0, 1}.
    pub fn ternary_coeffs<R: CryptoRng + ?Sized>(n: usize, rng: &mut R) -> Vec<i64> {
        (0..n).map(|_| rng.random_range(0..3i64) - 1).collect()
    }

    /// Error coefficients from the centered binomial distribution with η = 21 (σ ≈ 3.24, the HE
    /// standard's σ = 3.2 within 2%).
    pub fn error_coeffs<R: CryptoRng + ?Sized>(n: usize, rng: &mut R) -> Vec<i64> {
        const MASK: u64 = (1 << 21) - 1;
        (0..n)
            .map(|_| {
                let r: u64 = rng.random();
                (r & MASK).count_ones() as i64 - ((r >> 21) & MASK).count_ones() as i64
            })
            .collect()
    }

    /// Representation.
    pub fn form(&self) -> Form {
        self.form
    }

    /// The residues modulo prime `i`.
    pub fn limb(&self, params: &HeParams, i: usize) -> &[u64] {
        let n = params.degree();
        &self.limbs[i * n..(i + 1) * n]
    }

    /// Converts to NTT form (no-op if already there): one backend call over every limb.
    pub fn to_ntt(&mut self, params: &HeParams, backend: &dyn Backend) -> HeResult<()> {
        if self.form == Form::Coeff {
            backend.ntt_forward(self.tables(params)?, &mut self.limbs)?;
            self.form = Form::Ntt;
        }
        Ok(())
    }

    /// Converts to coefficient form (no-op if already there).
    pub fn to_coeff(&mut self, params: &HeParams, backend: &dyn Backend) -> HeResult<()> {
        if self.form == Form::Ntt {
            backend.ntt_inverse(self.tables(params)?, &mut self.limbs)?;
            self.form = Form::Coeff;
        }
        Ok(())
    }

    /// The NTT tables of the limbs held (fewer than the set's after modulus switching).
    fn tables<'a>(&self, params: &'a HeParams) -> HeResult<&'a [crate::backend::NttTable]> {
        let count = self.limbs.len() / params.degree();
        params.tables().get(..count).ok_or_else(|| {
            super::HeError::Shape(format!("{count} limbs, the parameter set has {}", params.tables().len()))
        })
    }

    fn zip_limbs(
        &mut self,
        params: &HeParams,
        other: &RnsPoly,
        f: impl Fn(&crate::ring::modp::Modulus, u64, u64) -> u64,
    ) {
        assert_eq!(self.form, other.form, "RNS polynomials in different forms");
        let n = params.degree();
        for ((a, b), m) in self.limbs.chunks_exact_mut(n).zip(other.limbs.chunks_exact(n)).zip(params.moduli()) {
            for (x, y) in a.iter_mut().zip(b) {
                *x = f(m, *x, *y);
            }
        }
    }

    /// `self += other`.
    pub fn add_assign(&mut self, params: &HeParams, other: &RnsPoly) {
        self.zip_limbs(params, other, |m, x, y| m.add(x, y));
    }

    /// `self -= other`.
    pub fn sub_assign(&mut self, params: &HeParams, other: &RnsPoly) {
        self.zip_limbs(params, other, |m, x, y| m.sub(x, y));
    }

    /// `self *= other`, both in NTT form (a negacyclic product).
    pub fn mul_assign(&mut self, params: &HeParams, other: &RnsPoly) {
        assert_eq!(self.form, Form::Ntt, "polynomial products need the NTT form");
        self.zip_limbs(params, other, |m, x, y| m.mul(x, y));
    }

    /// `-self`.
    pub fn neg_assign(&mut self, params: &HeParams) {
        let n = params.degree();
        for (a, m) in self.limbs.chunks_exact_mut(n).zip(params.moduli()) {
            for x in a.iter_mut() {
                *x = m.neg(*x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_coefficients_reduce_at_the_extremes() {
        let p = HeParams::n4096().unwrap_or_else(|e| panic!("{e}"));
        let q0 = p.moduli()[0].value();
        let coeffs = [i64::MIN, i64::MAX, -1, 0, 1, -(q0 as i64), q0 as i64];
        let poly = RnsPoly::from_signed(&p, &coeffs);
        for (l, m) in p.moduli().iter().enumerate() {
            let q = m.value() as i128;
            for (j, &c) in coeffs.iter().enumerate() {
                let want = (c as i128).rem_euclid(q) as u64;
                assert_eq!(poly.limbs[l * coeffs.len() + j], want, "{c} mod {q}");
            }
        }
    }
}
