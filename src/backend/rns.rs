//! The two RNS conversions of a ciphertext product, as the backend runs them: the basis
//! extension of an operand from Q to Q∪P and the scale-and-round of a tensor from Q∪P back to Q
//! (the math is in `he::mult`'s module docs). [`TensorBasis`] holds one level's constants;
//! [`Backend::extend_basis`] and [`Backend::scale_down`] run the conversions, by default with
//! the host functions here, whose steps a GPU repeats on its device element for element
//! (`kernels/modarith.cuh`'s `sm_hat_rows_element`).

use num_bigint::BigUint;
use num_traits::{One, ToPrimitive};

use super::{Backend, BackendResult, NttTable, shape};
use crate::ring::modp::Modulus;

/// The extended basis Q∪P of one level and the constants of both conversions, as rows of
/// [`Backend::base_convert`] constants.
#[derive(Debug)]
pub struct TensorBasis {
    /// The level's primes Q, then P.
    pub(crate) moduli: Vec<Modulus>,
    /// Primes of Q.
    pub(crate) k: usize,
    /// The NTT tables of Q, then P.
    pub(crate) tables: Vec<NttTable>,
    /// Q → P: [(Q/q_i)^-1]_{q_i} and 1/q_i per q_i; rows [Q/q_i]_{p_j} (i < k) and [−Q]_{p_j}
    /// (the overflow row).
    pub(crate) q_hat_inv: Vec<(u64, u64)>,
    pub(crate) q_inv_f64: Vec<f64>,
    pub(crate) extend_rows: Vec<(u64, u64)>,
    /// Q∪P → Q: [(M/r)^-1]_r and 1/r per r; rows, for each output q_i: the integer terms
    /// ([ω_l]_{q_i} for r = q_l, [t·P/p_j]_{q_i} for r = p_j), then [−t·P]_{q_i} (the overflow
    /// row) and 1 (the rounded fraction's row).
    pub(crate) m_hat_inv: Vec<(u64, u64)>,
    pub(crate) all_inv_f64: Vec<f64>,
    pub(crate) scale_rows: Vec<(u64, u64)>,
    /// θ_l·2^128 for l ∈ Q (t·P/q_l = ω_l + θ_l), as (high, low) words.
    pub(crate) theta: Vec<(u64, u64)>,
}

impl TensorBasis {
    /// The constants for products at the level of `q` (its NTT tables) with the extension
    /// primes `p` and plaintext modulus t = 2^`plain_bits`. The primes must be distinct.
    pub fn new(q: &[NttTable], p: &[Modulus], plain_bits: u32) -> BackendResult<TensorBasis> {
        let Some(n) = q.first().map(NttTable::degree) else {
            return Err(shape("tensor_basis", "no prime in Q"));
        };
        let level = q.len();
        let q_mod: Vec<Modulus> = q.iter().map(|t| *t.modulus()).collect();
        let product = |ms: &[Modulus]| ms.iter().fold(BigUint::one(), |acc, m| acc * m.value());
        let (q_big, p_big) = (product(&q_mod), product(p));
        let t_big = BigUint::one() << plain_bits;
        let modulo = |x: &BigUint, m: &Modulus| (x % m.value()).to_u64().unwrap_or_else(|| unreachable!("x mod p < p"));
        let inverse = |x: &BigUint, m: &Modulus| {
            m.inv(modulo(x, m)).ok_or_else(|| shape("tensor_basis", format!("the prime {} is repeated", m.value())))
        };
        let with_shoup = |m: &Modulus, w: u64| (w, m.shoup(w));

        let mut q_hat_inv = Vec::new();
        let mut extend_rows = Vec::new();
        for m in &q_mod {
            let q_hat = &q_big / m.value();
            q_hat_inv.push(with_shoup(m, inverse(&q_hat, m)?));
            extend_rows.extend(p.iter().map(|pj| with_shoup(pj, modulo(&q_hat, pj))));
        }
        extend_rows.extend(p.iter().map(|pj| with_shoup(pj, pj.neg(modulo(&q_big, pj)))));

        let all: Vec<Modulus> = q_mod.iter().chain(p).copied().collect();
        let m_big = &q_big * &p_big;
        let mut m_hat_inv = Vec::new();
        let mut scale_rows = Vec::new();
        let mut theta = Vec::new();
        for (r, m) in all.iter().enumerate() {
            m_hat_inv.push(with_shoup(m, inverse(&(&m_big / m.value()), m)?));
            let term = if r < level {
                // t·P/q_l = ω + θ
                let num = &t_big * &p_big;
                let frac = ((&num % m.value()) << 128u32) / m.value();
                let frac = frac.to_u128().unwrap_or_else(|| unreachable!("a fraction below 1"));
                theta.push(((frac >> 64) as u64, frac as u64));
                &num / m.value()
            } else {
                &t_big * (&p_big / m.value())
            };
            scale_rows.extend(q_mod.iter().map(|qi| with_shoup(qi, modulo(&term, qi))));
        }
        let tp = &t_big * &p_big;
        scale_rows.extend(q_mod.iter().map(|qi| with_shoup(qi, qi.neg(modulo(&tp, qi)))));
        scale_rows.extend(q_mod.iter().map(|qi| with_shoup(qi, 1)));
        let mut tables = q.to_vec();
        for &m in p {
            tables.push(NttTable::new(n, m).map_err(|e| shape("tensor_basis", e.to_string()))?);
        }
        Ok(TensorBasis {
            k: level,
            tables,
            q_hat_inv,
            q_inv_f64: q_mod.iter().map(|m| 1.0 / m.value() as f64).collect(),
            extend_rows,
            m_hat_inv,
            all_inv_f64: all.iter().map(|m| 1.0 / m.value() as f64).collect(),
            scale_rows,
            theta,
            moduli: all,
        })
    }

    /// Number of primes, Q's and P's.
    pub fn len(&self) -> usize {
        self.moduli.len()
    }

    /// Whether the basis has no prime (never: Q has one at least).
    pub fn is_empty(&self) -> bool {
        self.moduli.is_empty()
    }

    /// Number of primes of Q (the level).
    pub fn level(&self) -> usize {
        self.k
    }

    /// The primes of Q, then P.
    pub fn moduli(&self) -> &[Modulus] {
        &self.moduli
    }

    /// The ring degree N.
    pub fn degree(&self) -> usize {
        self.tables[0].degree()
    }

    /// The constants of the first step of a conversion out of Q (`false`) or out of Q∪P
    /// (`true`).
    pub(crate) fn hat_constants(&self, from_all: bool) -> HatConstants<'_> {
        if from_all {
            HatConstants { hat_inv: &self.m_hat_inv, inv_f64: &self.all_inv_f64, theta: &self.theta }
        } else {
            HatConstants { hat_inv: &self.q_hat_inv, inv_f64: &self.q_inv_f64, theta: &[] }
        }
    }
}

/// The constants of [`hat_rows`] for one basis B: per prime r of B, [(B/r)^-1]_r with its Shoup
/// constant and 1/r in f64; the fraction's θ_l (none for a conversion that rounds no fraction).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HatConstants<'a> {
    pub hat_inv: &'a [(u64, u64)],
    pub inv_f64: &'a [f64],
    pub theta: &'a [(u64, u64)],
}

impl HatConstants<'_> {
    /// The constants as the kernels read them (`sm_hat_rows_element`): the pairs flat, 1/r by
    /// its IEEE-754 bits, θ flat.
    #[cfg(any(feature = "cuda", test))]
    pub(crate) fn words(&self) -> [Vec<u64>; 3] {
        let flat = |pairs: &[(u64, u64)]| pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        [flat(self.hat_inv), self.inv_f64.iter().map(|v| v.to_bits()).collect(), flat(self.theta)]
    }
}

/// The shape contract of [`Backend::extend_basis`]; returns the number of polynomials.
pub(crate) fn check_extend(basis: &TensorBasis, x: &[u64]) -> BackendResult<usize> {
    let each = basis.k * basis.degree();
    if !x.len().is_multiple_of(each) {
        return Err(shape("extend_basis", format!("{} values for polynomials of {} limbs", x.len(), basis.k)));
    }
    Ok(x.len() / each)
}

/// The shape contract of [`Backend::scale_down`]; returns the number of polynomials.
pub(crate) fn check_scale_down(basis: &TensorBasis, x: usize, out: usize) -> BackendResult<usize> {
    let n = basis.degree();
    let count = x / (basis.len() * n);
    if x != count * basis.len() * n || out != count * basis.k * n {
        return Err(shape(
            "scale_down",
            format!("{x} values over {} limbs in, {out} over {} out", basis.len(), basis.k),
        ));
    }
    Ok(count)
}

/// Rows z_r = [x_r·c_r]_r of `x` (one row of n per modulus of `moduli`), followed by the
/// overflow row v = round(Σ_r z_r/r) (in f64, summed in r's order) and, when `theta` is given,
/// the rounded fraction ⌊Σ_l z_l·θ_l⌉ with θ_l held to 2^-128: the first step of a conversion
/// out of that basis, into `z` (rows + 1 + (θ given) rows of n).
pub(crate) fn hat_rows(
    backend: &(impl Backend + ?Sized),
    moduli: &[Modulus],
    HatConstants { hat_inv, inv_f64, theta }: HatConstants<'_>,
    n: usize,
    x: &[u64],
    z: &mut [u64],
) -> BackendResult<()> {
    let count = moduli.len();
    for (r, m) in moduli.iter().enumerate() {
        let (x, z) = (&x[r * n..(r + 1) * n], &mut z[r * n..(r + 1) * n]);
        backend.base_convert(std::slice::from_ref(m), n, x, &hat_inv[r..=r], z)?;
    }
    let (z, extra) = z.split_at_mut(count * n);
    for (c, v) in extra[..n].iter_mut().enumerate() {
        let mut sum = 0.0f64;
        for (r, &inv) in inv_f64.iter().enumerate() {
            sum += z[r * n + c] as f64 * inv;
        }
        *v = sum.round() as u64;
    }
    if !theta.is_empty() {
        for (c, dst) in extra[n..2 * n].iter_mut().enumerate() {
            let mut frac = 0u128;
            for (l, &(hi, lo)) in theta.iter().enumerate() {
                let zl = z[l * n + c] as u128;
                frac += zl * hi as u128 + ((zl * lo as u128) >> 64);
            }
            *dst = ((frac + (1 << 63)) >> 64) as u64;
        }
    }
    Ok(())
}

/// One polynomial mod Q (`x`, k limbs, NTT form when `ntt_form`) in Q∪P, NTT form, into `out`:
/// the Q limbs as they are (transformed), the P limbs from the centered lift
/// x = Σ z_i·(Q/q_i) − v·Q of its coefficients.
pub(crate) fn extend_one(
    backend: &(impl Backend + ?Sized),
    basis: &TensorBasis,
    x: &[u64],
    ntt_form: bool,
    out: &mut [u64],
) -> BackendResult<()> {
    let (k, n) = (basis.k, basis.degree());
    let (low, high) = out.split_at_mut(k * n);
    low.copy_from_slice(x);
    let mut coeff = super::Scratch::take(k * n);
    if ntt_form {
        coeff.copy_from_slice(x);
        backend.ntt_inverse(&basis.tables[..k], &mut coeff)?;
    } else {
        backend.ntt_forward(&basis.tables[..k], low)?;
    }
    let coeff: &[u64] = if ntt_form { &coeff } else { x };
    let mut z = super::Scratch::take((k + 1) * n);
    hat_rows(backend, &basis.moduli[..k], basis.hat_constants(false), n, coeff, &mut z)?;
    backend.base_convert(&basis.moduli[k..], n, &z, &basis.extend_rows, high)?;
    backend.ntt_forward(&basis.tables[k..], high)
}

/// ⌊t·x/Q⌉ mod Q of one polynomial over Q∪P in NTT form (`x`, transformed back in place) into
/// `out` (k limbs, coefficient form).
pub(crate) fn scale_down_one(
    backend: &(impl Backend + ?Sized),
    basis: &TensorBasis,
    x: &mut [u64],
    out: &mut [u64],
) -> BackendResult<()> {
    let (width, n) = (basis.len(), basis.degree());
    backend.ntt_inverse(&basis.tables, x)?;
    let mut z = super::Scratch::take((width + 2) * n);
    hat_rows(backend, &basis.moduli, basis.hat_constants(true), n, x, &mut z)?;
    backend.base_convert(&basis.moduli[..basis.k], n, &z, &basis.scale_rows, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, Buffer, CpuBackend};
    use crate::ring::modp::ntt_primes;
    use num_bigint::{BigInt, Sign};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn basis(n: usize, plain_bits: u32) -> TensorBasis {
        let modulus = |p| Modulus::new(p).unwrap_or_else(|e| panic!("{e}"));
        let q: Vec<NttTable> = ntt_primes(50, n, 3)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|p| NttTable::new(n, modulus(p)).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let p: Vec<Modulus> = ntt_primes(61, n, 4).unwrap_or_else(|e| panic!("{e}")).into_iter().map(modulus).collect();
        TensorBasis::new(&q, &p, plain_bits).unwrap_or_else(|e| panic!("{e}"))
    }

    /// ⌊a/d⌋ for d > 0 (BigInt's division truncates towards zero).
    fn div_floor(a: &BigInt, d: &BigInt) -> BigInt {
        if a.sign() == Sign::Minus { (a - d + 1) / d } else { a / d }
    }

    fn residue(x: &BigInt, m: &Modulus) -> u64 {
        let p = BigInt::from(m.value());
        let r = x - div_floor(x, &p) * &p;
        r.to_u64().unwrap_or_else(|| unreachable!("a residue below p"))
    }

    /// The lift of x mod Q is its centered representative (|x| ≤ Q/2) in every prime of P, and
    /// the rounding of X over Q∪P (|X| < QP/4) is ⌊t·X/Q⌉ mod Q — checked on integers drawn from
    /// the whole range, against big-integer arithmetic.
    #[test]
    fn the_conversions_are_the_centered_lift_and_the_rounded_scaling() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(5);
        let n = 64;
        let b = basis(n, 70);
        let k = b.level();
        let product = |ms: &[Modulus]| ms.iter().fold(BigInt::from(1), |acc, m| acc * m.value());
        let (q, all) = (product(&b.moduli[..k]), product(&b.moduli));
        let draw = |rng: &mut StdRng, bound: &BigInt| -> BigInt {
            let words: Vec<u64> = (0..8).map(|_| rng.random()).collect();
            let x = BigInt::from_slice(
                Sign::Plus,
                &words.iter().flat_map(|w| [*w as u32, (w >> 32) as u32]).collect::<Vec<_>>(),
            );
            let span = bound * 2;
            &x - div_floor(&x, &span) * &span - bound
        };
        // centered values mod Q, in coefficient form and in NTT form
        let xs: Vec<BigInt> = (0..n).map(|_| draw(&mut rng, &(&q / 2))).collect();
        let coeff: Vec<u64> = b.moduli[..k].iter().flat_map(|m| xs.iter().map(|x| residue(x, m))).collect();
        let mut want: Vec<u64> = b.moduli.iter().flat_map(|m| xs.iter().map(|x| residue(x, m))).collect();
        be.ntt_forward(&b.tables, &mut want).unwrap_or_else(|e| panic!("{e}"));
        let mut ntt = coeff.clone();
        be.ntt_forward(&b.tables[..k], &mut ntt).unwrap_or_else(|e| panic!("{e}"));
        for (x, form) in [(&coeff, false), (&ntt, true)] {
            let lifted = be.extend_basis(&b, x, form).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(lifted.host_values(), Some(&want[..]), "from NTT form: {form}");
        }
        // X over Q∪P, |X| < QP/4, rounded to ⌊t·X/Q⌉ mod Q
        let xs: Vec<BigInt> = (0..n).map(|_| draw(&mut rng, &(&all / 4))).collect();
        let mut over: Vec<u64> = b.moduli.iter().flat_map(|m| xs.iter().map(|x| residue(x, m))).collect();
        be.ntt_forward(&b.tables, &mut over).unwrap_or_else(|e| panic!("{e}"));
        let mut got = vec![0u64; k * n];
        be.scale_down(&b, Buffer::host(over), &mut got).unwrap_or_else(|e| panic!("{e}"));
        let t = BigInt::from(1) << 70u32;
        let rounded: Vec<BigInt> = xs.iter().map(|x| div_floor(&(2 * &t * x + &q), &(2 * &q))).collect();
        let want: Vec<u64> = b.moduli[..k].iter().flat_map(|m| rounded.iter().map(|x| residue(x, m))).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn ragged_operands_are_errors_naming_the_conversion_and_an_empty_run_lifts_to_nothing() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let b = basis(64, 64);
        let ragged = be.extend_basis(&b, &[0; 64], true);
        assert!(matches!(ragged, Err(BackendError::Shape { op: "extend_basis", .. })), "{ragged:?}");
        assert!(be.extend_basis(&b, &[], false).is_ok_and(|l| l.is_empty()));
        let mut out = vec![0u64; 3 * 64];
        let short = be.scale_down(&b, Buffer::host(vec![0; 6 * 64]), &mut out);
        assert!(matches!(short, Err(BackendError::Shape { op: "scale_down", .. })), "{short:?}");
        let no_q = TensorBasis::new(&[], &b.moduli[3..], 64);
        assert!(matches!(no_q, Err(BackendError::Shape { op: "tensor_basis", .. })), "{no_q:?}");
    }
}
