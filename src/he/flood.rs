//! Noise flooding: the noise the server adds to a result before it leaves, and the statistical
//! distance it buys over a session.
//!
//! A returned coefficient's decrypted noise is b + e + F: b depends on the server's weights
//! (|b| ≤ 2^β except with probability 2^-[`TAIL_BITS`] over the client's noise, the bound each
//! product computes), e on no secret of the server (re-randomization), F the flood of f = β + κ
//! bits. F is the sum of [`FLOOD_TERMS`] independent uniform integers on [−2^(f−2), 2^(f−2)):
//! |F| ≤ 2^f as for one uniform on [−2^f, 2^f), so decryption margins are the same.
//!
//! Why a sum: one uniform is within b/2^(f+1) ≤ 2^-κ of its shift by b, and those distances
//! add up over the m coefficients a client decrypts (m·2^-κ: 2^-30.6 for the 2^23.4
//! coefficients of a BERT-base forward at κ = 54). The sum's density is smooth, so its squared
//! Hellinger distance to its shift is quadratic in b: h ≤ [`HELLINGER_CONSTANT`]·(b/2^f)² ≤
//! c·2^-2κ. Hellinger affinities multiply over independent floods, also when each b depends
//! on what was returned before (the affinity of a sequence is at least the product of the
//! worst affinity of each step), and the statistical distance is at most √(2·Σh): m
//! coefficients at κ are within √(2c·m)·2^-κ, 2^-41.5 for the same forward.
//!
//! The constant: for a pmf p on the integers, Cauchy–Schwarz over the b unit steps gives
//! ½·Σ_x(√p(x) − √p(x−b))² ≤ (b²/2)·Σ_x(√p(x) − √p(x−1))², and for the sum of four uniforms of
//! width 2^(f−1) the last sum times 2^2f decreases with f to 3.1157… (a quarter of the Fisher
//! information of the continuous sum on [−1, 1)): h ≤ 1.558·(b/2^f)² (computed exactly for small
//! f in the tests).

use rand::{CryptoRng, RngExt};

use super::poly::RnsPoly;
use super::{HeError, HeParams, HeResult};

/// The weight-dependent noise bounds hold except with probability 2^-TAIL_BITS per returned
/// coefficient, over the client's encryption noise: 80, so that the tails of the 2^23.4
/// coefficients of a BERT-base forward (2^-56.6) stay far below the flood's own distance.
pub const TAIL_BITS: u32 = 80;

/// Standard deviations within which a (sub-)Gaussian noise term stays except with probability
/// 2^-[`TAIL_BITS`]: √(2·ln 2^(TAIL_BITS+1)).
pub fn tail_deviations() -> f64 {
    (2.0 * (TAIL_BITS + 1) as f64 * std::f64::consts::LN_2).sqrt()
}

/// Least flooding margin κ of a product, in bits beyond its noise bound; a product that would
/// need less is refused.
pub const MIN_STAT_BITS: u32 = 40;

/// Largest flooding noise, in bits.
pub const MAX_FLOOD_BITS: u32 = 250;

/// Largest flood whose terms are drawn from one 128-bit word each (their sum fits an i128);
/// wider floods take two words per term.
pub const NARROW_FLOOD_BITS: u32 = 126;

/// Uniform terms summed into one coefficient's flood.
pub const FLOOD_TERMS: u32 = 4;

/// Bound c on the squared Hellinger distance between the flood of f bits and its shift by b:
/// h ≤ c·(b/2^f)² (module notes; 1.558 rounded up).
pub const HELLINGER_CONSTANT: f64 = 1.6;

/// Adds an independent flood of `bits` bits (module notes) to every coefficient of `c0`
/// (coefficient form).
pub(crate) fn flood_poly<R: CryptoRng + ?Sized>(
    params: &HeParams,
    c0: &mut RnsPoly,
    bits: u32,
    rng: &mut R,
) -> HeResult<()> {
    if !(2..=MAX_FLOOD_BITS).contains(&bits) {
        return Err(HeError::Unsupported {
            params: params.name(),
            what: format!("flood with {bits} bits of noise (2 to {MAX_FLOOD_BITS})"),
        });
    }
    let n = params.degree();
    // each term uniform on [0, 2^(bits−1)); the sum less FLOOD_TERMS·2^(bits−2) = 2^bits
    let term_bits = bits - 1;
    if bits <= NARROW_FLOOD_BITS {
        let span = 1u128 << term_bits;
        let noise: Vec<i128> = (0..n)
            .map(|_| (0..FLOOD_TERMS).map(|_| (rng.random::<u128>() % span) as i128).sum::<i128>() - (1i128 << bits))
            .collect();
        for (limb, m) in c0.limbs.chunks_exact_mut(n).zip(params.moduli()) {
            let p = m.value() as i128;
            for (x, &e) in limb.iter_mut().zip(&noise) {
                *x = m.add(*x, e.rem_euclid(p) as u64);
            }
        }
        return Ok(());
    }
    // the sum as hi·2^128 + lo, each term below 2^term_bits (126 to 249 bits)
    let below = |bits: u32| 1u128.checked_shl(bits).map_or(u128::MAX, |b| b - 1);
    let (hi_mask, lo_mask) = (below(term_bits.saturating_sub(128)), below(term_bits));
    let noise: Vec<(u128, u128)> = (0..n)
        .map(|_| {
            (0..FLOOD_TERMS).fold((0u128, 0u128), |(hi, lo), _| {
                let (term_hi, term_lo) = (rng.random::<u128>() & hi_mask, rng.random::<u128>() & lo_mask);
                let (lo, carry) = lo.overflowing_add(term_lo);
                (hi + term_hi + u128::from(carry), lo)
            })
        })
        .collect();
    for (limb, m) in c0.limbs.chunks_exact_mut(n).zip(params.moduli()) {
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

/// What a client has decrypted of one server's results, for the bound on its statistical
/// distance from noise that does not depend on the server's weights (module notes). Exposures
/// of several key sets of one session add up with [`Exposure::merge`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Exposure {
    /// Σ over returned coefficients of their squared Hellinger bound c·2^-2κ.
    hellinger: f64,
    /// Returned coefficients.
    coefficients: u64,
}

impl Exposure {
    /// Books `coefficients` returned coefficients flooded with margin `kappa`.
    pub fn add(&mut self, coefficients: usize, kappa: u32) {
        self.hellinger += coefficients as f64 * HELLINGER_CONSTANT * 2f64.powi(-2 * kappa as i32);
        self.coefficients += coefficients as u64;
    }

    /// Adds another server's exposure to the same client.
    pub fn merge(&mut self, other: &Exposure) {
        self.hellinger += other.hellinger;
        self.coefficients += other.coefficients;
    }

    /// Returned coefficients booked.
    pub fn coefficients(&self) -> u64 {
        self.coefficients
    }

    /// An upper bound on the statistical distance between the noise of everything booked and
    /// noise that does not depend on the weights: √(2·Σh) plus the bounds' tail probabilities.
    pub fn distance(&self) -> f64 {
        ((2.0 * self.hellinger).sqrt() + self.coefficients as f64 * 2f64.powi(-(TAIL_BITS as i32))).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::he::Form;

    /// The pmf of the sum of `terms` independent uniforms on [0, width), by convolution.
    fn sum_of_uniforms(width: usize, terms: u32) -> Vec<f64> {
        let mut pmf = vec![1.0];
        for _ in 0..terms {
            let mut prefix = vec![0.0];
            prefix.extend(pmf.iter().scan(0.0, |s, &v| {
                *s += v;
                Some(*s)
            }));
            pmf = (0..pmf.len() + width - 1)
                .map(|x| (prefix[x.min(pmf.len() - 1) + 1] - prefix[(x + 1).saturating_sub(width)]) / width as f64)
                .collect();
        }
        pmf
    }

    #[test]
    fn the_hellinger_constant_bounds_the_floods_unit_step_for_every_width() {
        let mut last = f64::INFINITY;
        for f in 5..=12u32 {
            let p = sum_of_uniforms(1 << (f - 1), FLOOD_TERMS);
            let roots: Vec<f64> = std::iter::once(0.0).chain(p.iter().map(|v| v.sqrt())).chain([0.0]).collect();
            let step: f64 = roots.windows(2).map(|w| (w[1] - w[0]).powi(2)).sum();
            // h ≤ (b²/2)·step = ((b/2^f)²)·(step·2^2f/2)
            let c = step * 4f64.powi(f as i32) / 2.0;
            assert!(c <= HELLINGER_CONSTANT && c <= last, "f = {f}: {c}");
            assert!(c > 1.55, "f = {f}: {c} (the limit is 1.5579)");
            last = c;
        }
    }

    #[test]
    fn a_floods_hellinger_distance_to_its_shift_is_quadratic_in_the_shift() {
        // exact h for f = 10 against the bound c·(b/2^f)², shifts up to a quarter of the range
        let f = 10;
        let p = sum_of_uniforms(1 << (f - 1), FLOOD_TERMS);
        for b in [1usize, 3, 17, 64, 256] {
            let at = |x: isize| if (0..p.len() as isize).contains(&x) { p[x as usize].sqrt() } else { 0.0 };
            let h: f64 = (0..(p.len() + b) as isize).map(|x| (at(x) - at(x - b as isize)).powi(2)).sum::<f64>() / 2.0;
            let bound = HELLINGER_CONSTANT * (b as f64 / 1024.0).powi(2);
            assert!(h <= bound, "b = {b}: h = {h:e} above {bound:e}");
            assert!(h > bound / 4.0, "b = {b}: h = {h:e} far below {bound:e}");
        }
    }

    #[test]
    fn the_flood_is_the_sum_of_four_uniform_terms_within_two_to_the_bits() {
        let p = HeParams::n4096().unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(7);
        let bits = 5; // terms on [0, 16), the sum less 32: [−32, 28]
        let mut counts = vec![0usize; 61];
        for _ in 0..16 {
            let mut c0 = RnsPoly::zero(&p, Form::Coeff);
            flood_poly(&p, &mut c0, bits, &mut rng).unwrap_or_else(|e| panic!("{e}"));
            let q0 = p.moduli()[0].value();
            for (i, &x) in c0.limbs[..p.degree()].iter().enumerate() {
                let e = if x > q0 / 2 { x as i64 - q0 as i64 } else { x as i64 };
                // every limb holds the same integer
                for (l, m) in p.moduli().iter().enumerate() {
                    assert_eq!(c0.limbs[l * p.degree() + i], e.rem_euclid(m.value() as i64) as u64);
                }
                counts[usize::try_from(e + 32).unwrap_or_else(|_| panic!("{e} below −32"))] += 1;
            }
        }
        let total: usize = counts.iter().sum();
        let want = sum_of_uniforms(16, FLOOD_TERMS);
        // χ² against the exact pmf over its 61 values (60 degrees of freedom: mean 60, sd ≈ 11)
        let chi2: f64 =
            want.iter().zip(&counts).map(|(w, &c)| (c as f64 - w * total as f64).powi(2) / (w * total as f64)).sum();
        assert!(chi2 < 120.0, "χ² = {chi2}");
    }

    #[test]
    fn wide_floods_carry_between_the_words_of_their_terms() {
        // at 200 bits the flood is below 2^200 in magnitude and not concentrated on few values
        let p = HeParams::n8192().unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(8);
        let mut c0 = RnsPoly::zero(&p, Form::Coeff);
        flood_poly(&p, &mut c0, 200, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let mut wider = RnsPoly::zero(&p, Form::Coeff);
        flood_poly(&p, &mut wider, 201, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        // each limb's residues look uniform (a 200-bit flood covers the 58-bit primes many times)
        for poly in [&c0, &wider] {
            let m = p.moduli()[0].value();
            let mean = poly.limbs[..p.degree()].iter().map(|&x| x as f64 / m as f64).sum::<f64>() / p.degree() as f64;
            assert!((mean - 0.5).abs() < 0.02, "{mean}");
        }
        assert!(flood_poly(&p, &mut c0, MAX_FLOOD_BITS + 1, &mut rng).is_err());
    }

    #[test]
    fn exposures_add_up_by_hellinger_sums_not_by_distances() {
        let mut e = Exposure::default();
        assert_eq!(e.distance(), 0.0);
        e.add(1 << 20, 54);
        // √(2c·m)·2^-κ plus m·2^-TAIL_BITS
        let one = (2.0 * HELLINGER_CONSTANT * 2f64.powi(20)).sqrt() * 2f64.powi(-54) + 2f64.powi(20 - TAIL_BITS as i32);
        assert!((e.distance() - one).abs() < 1e-9 * one);
        // four times the coefficients: twice the distance (not four times)
        let mut four = Exposure::default();
        for _ in 0..4 {
            four.merge(&e);
        }
        assert_eq!(four.coefficients(), 1 << 22);
        assert!((four.distance() / e.distance() - 2.0).abs() < 1e-3, "{}", four.distance() / e.distance());
        // a BERT-base forward's 2^23.4 coefficients at κ = 54: below 2^-40
        let mut forward = Exposure::default();
        forward.add(12 * 128 * 6912, 54);
        assert!(forward.distance().log2() < -41.0, "{}", forward.distance().log2());
    }
}
