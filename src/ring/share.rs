//! Additive secret shares over Z_2^64.

use std::ops::{Add, Neg, Sub};

use bytemuck::{Pod, Zeroable};
use rand::{CryptoRng, RngExt};

use super::RingError;

/// One party's additive share of a ring element: the secret is `x = x_client + x_server mod 2^64`.
///
/// A share on its own is uniformly distributed and says nothing about `x`; only
/// [`reconstruct`] with the other party's share reveals it. Shares add and subtract locally.
#[derive(Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(transparent)]
pub struct Share(u64);

impl Share {
    /// Wraps a raw ring element received as (or produced as) a share.
    pub fn from_raw(x: u64) -> Self {
        Self(x)
    }

    /// The raw ring element of this share.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// Adds a public constant. Exactly one party (by convention the client) does this, so the
    /// shared value moves by `c`.
    pub fn add_public(self, c: u64) -> Self {
        Self(self.0.wrapping_add(c))
    }

    /// Multiplies by a public constant: `c·x = c·x_c + c·x_s`.
    pub fn mul_public(self, c: u64) -> Self {
        Self(self.0.wrapping_mul(c))
    }
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share({:#018x})", self.0)
    }
}

impl Add for Share {
    type Output = Share;
    fn add(self, rhs: Share) -> Share {
        Share(self.0.wrapping_add(rhs.0))
    }
}

impl Sub for Share {
    type Output = Share;
    fn sub(self, rhs: Share) -> Share {
        Share(self.0.wrapping_sub(rhs.0))
    }
}

impl Neg for Share {
    type Output = Share;
    fn neg(self) -> Share {
        Share(self.0.wrapping_neg())
    }
}

/// Splits secrets into two share vectors: the first is uniform from `rng` (a CSPRNG), the second
/// is `x - r`. Either vector alone is independent of the secrets.
pub fn share_secret<R: CryptoRng + ?Sized>(secret: &[u64], rng: &mut R) -> (Vec<Share>, Vec<Share>) {
    let mine: Vec<Share> = secret.iter().map(|_| Share(rng.random())).collect();
    let theirs = secret.iter().zip(&mine).map(|(&x, r)| Share(x.wrapping_sub(r.0))).collect();
    (mine, theirs)
}

/// Recombines the two parties' shares: `x = a + b mod 2^64`.
pub fn reconstruct(a: &[Share], b: &[Share]) -> Result<Vec<u64>, RingError> {
    if a.len() != b.len() {
        return Err(RingError::LengthMismatch { left: a.len(), right: b.len() });
    }
    Ok(a.iter().zip(b).map(|(x, y)| x.0.wrapping_add(y.0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    proptest! {
        #[test]
        fn sharing_then_reconstructing_is_identity(xs in prop::collection::vec(any::<u64>(), 0..64), seed in any::<u64>()) {
            let (a, b) = share_secret(&xs, &mut StdRng::seed_from_u64(seed));
            prop_assert_eq!(reconstruct(&a, &b).unwrap_or_default(), xs);
        }

        #[test]
        fn shares_are_linear(x in any::<u64>(), y in any::<u64>(), c in any::<u64>(), seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let (xa, xb) = share_secret(&[x], &mut rng);
            let (ya, yb) = share_secret(&[y], &mut rng);
            let sum = reconstruct(&[xa[0] + ya[0]], &[xb[0] + yb[0]]).unwrap_or_default();
            prop_assert_eq!(sum[0], x.wrapping_add(y));
            let diff = reconstruct(&[xa[0] - ya[0]], &[xb[0] - yb[0]]).unwrap_or_default();
            prop_assert_eq!(diff[0], x.wrapping_sub(y));
            let scaled = reconstruct(&[xa[0].mul_public(c)], &[xb[0].mul_public(c)]).unwrap_or_default();
            prop_assert_eq!(scaled[0], x.wrapping_mul(c));
            let shifted = reconstruct(&[xa[0].add_public(c)], &[xb[0]]).unwrap_or_default();
            prop_assert_eq!(shifted[0], x.wrapping_add(c));
            let neg = reconstruct(&[-xa[0]], &[-xb[0]]).unwrap_or_default();
            prop_assert_eq!(neg[0], x.wrapping_neg());
        }
    }

    #[test]
    fn a_single_share_does_not_depend_on_the_secret() {
        // Same randomness, different secrets: the first share vector is identical.
        let (a0, _) = share_secret(&[0, 0, 0], &mut StdRng::seed_from_u64(7));
        let (a1, _) = share_secret(&[1, u64::MAX, 42], &mut StdRng::seed_from_u64(7));
        assert_eq!(a0, a1);
    }

    #[test]
    fn first_share_bits_look_uniform() {
        let (a, _) = share_secret(&vec![0u64; 4096], &mut StdRng::seed_from_u64(1));
        let ones: u32 = a.iter().map(|s| s.raw().count_ones()).sum();
        let expected = 4096.0 * 32.0;
        assert!((ones as f64 - expected).abs() < 5.0 * (4096.0f64 * 16.0).sqrt());
    }

    #[test]
    fn reconstruct_rejects_mismatched_lengths() {
        let err = reconstruct(&[Share::default()], &[]).err();
        assert_eq!(err, Some(RingError::LengthMismatch { left: 1, right: 0 }));
    }
}
