//! Arithmetic modulo a word-sized prime p < 2^62 (the RNS limbs of RLWE ciphertexts), and the
//! search for NTT-friendly primes p ≡ 1 (mod 2N).
//!
//! Products by a constant use Shoup's precomputation: with w' = ⌊w·2^64/p⌋, the product w·y is
//! reduced with one high multiplication and no division, and lands in [0, 2p) ("lazy").
//! Keeping p < 2^62 leaves room for values in [0, 4p) inside a u64 (Harvey's lazy butterflies).

use super::RingError;

/// Largest supported prime size in bits.
pub const MAX_PRIME_BITS: u32 = 61;

/// A prime modulus p with its precomputed constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modulus {
    p: u64,
    /// k = bit length of p.
    k: u32,
    /// Barrett's reciprocal ⌊2^2k / p⌋ (< 2^(k+1)).
    mu: u128,
    /// ⌊2^(64+k) / p⌋ (< 2^65), for Shoup constants.
    mu64: u128,
    /// ⌊2^128 / p⌋ as (high, low) words, for reducing any u128.
    mu128: (u64, u64),
}

impl Modulus {
    /// Wraps a prime `p < 2^62` (checked: p must be prime and fit).
    pub fn new(p: u64) -> Result<Modulus, RingError> {
        if p >= 1 << (MAX_PRIME_BITS + 1) || !is_prime(p) {
            return Err(RingError::BadModulus(p));
        }
        Ok(Modulus::unchecked(p))
    }

    fn unchecked(p: u64) -> Modulus {
        let k = 64 - p.leading_zeros();
        if k > MAX_PRIME_BITS + 1 {
            // Only the primality test goes here (up to 2^64): plain division, no Shoup constants.
            return Modulus { p, k, mu: 0, mu64: 0, mu128: (0, 0) };
        }
        Modulus {
            p,
            k,
            mu: (1u128 << (2 * k)) / p as u128,
            mu64: (1u128 << (64 + k)) / p as u128,
            mu128: split(u128::MAX / p as u128),
        }
    }

    /// The prime.
    #[inline]
    pub fn value(&self) -> u64 {
        self.p
    }

    /// Bit length of p.
    pub fn bits(&self) -> u32 {
        64 - self.p.leading_zeros()
    }

    /// `(a + b) mod p` for a, b < p.
    #[inline]
    pub fn add(&self, a: u64, b: u64) -> u64 {
        let s = a + b;
        if s >= self.p { s - self.p } else { s }
    }

    /// `(a - b) mod p` for a, b < p.
    #[inline]
    pub fn sub(&self, a: u64, b: u64) -> u64 {
        if a >= b { a - b } else { a + self.p - b }
    }

    /// `(-a) mod p` for a < p.
    #[inline]
    pub fn neg(&self, a: u64) -> u64 {
        if a == 0 { 0 } else { self.p - a }
    }

    /// `(a · b) mod p` for any a, b.
    #[inline]
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// `x mod p` for any x: Barrett reduction (no division) when x < 2^2k, as for every product
    /// of two residues.
    #[inline]
    pub fn reduce_u128(&self, x: u128) -> u64 {
        self.div_rem(x).1
    }

    /// `(⌊x/p⌋, x mod p)` for any x; division-free (Barrett) when x < 2^2k.
    #[inline]
    pub fn div_rem(&self, x: u128) -> (u128, u64) {
        if self.mu == 0 || x >> (2 * self.k) != 0 {
            return (x / self.p as u128, (x % self.p as u128) as u64);
        }
        // q̂ = ⌊⌊x / 2^(k-1)⌋ · μ / 2^(k+1)⌋ is at most 2 below ⌊x/p⌋.
        let mut q = ((x >> (self.k - 1)) * self.mu) >> (self.k + 1);
        let mut r = (x - q * self.p as u128) as u64;
        while r >= self.p {
            r -= self.p;
            q += 1;
        }
        (q, r)
    }

    /// `x mod p` for any u64 (Barrett, without a division, for primes above 2^32).
    #[inline]
    pub fn reduce(&self, x: u64) -> u64 {
        self.reduce_u128(x as u128)
    }

    /// `dst[i] = src[i] mod p` for residues `src` of another modulus `from` (each below it): one
    /// conditional subtraction where from ≤ 2p (primes of one size), else a reduction.
    pub fn reduce_residues(&self, from: u64, src: &[u64], dst: &mut [u64]) {
        if from <= self.p.saturating_mul(2) {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v.min(v.wrapping_sub(self.p)));
        } else {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = self.reduce(v));
        }
    }

    /// `x mod p` for any u128 without a division: q = x1·μ1 + ⌊(x1·μ0 + x0·μ1)/2^64⌋ with
    /// μ = ⌊2^128/p⌋ leaves out less than 3 of x·μ/2^128 > x/p − 1, so it is at most 2 below
    /// ⌊x/p⌋, and x − q·p < 3p < 2^64 is exact in one word (four word products in all).
    #[inline]
    pub fn reduce_wide(&self, x: u128) -> u64 {
        if self.mu == 0 {
            return (x % self.p as u128) as u64;
        }
        let ((x1, x0), (m1, m0)) = (split(x), self.mu128);
        let (a, b) = (split(x1 as u128 * m0 as u128), split(x0 as u128 * m1 as u128));
        let carry = a.1.overflowing_add(b.1).1 as u64;
        let q = x1.wrapping_mul(m1).wrapping_add(a.0).wrapping_add(b.0).wrapping_add(carry);
        let mut r = x0.wrapping_sub(q.wrapping_mul(self.p));
        for _ in 0..2 {
            r -= if r >= self.p { self.p } else { 0 };
        }
        r
    }

    /// `x mod p` for a signed x (|i64::MIN| included), in [0, p).
    #[inline]
    pub fn reduce_signed(&self, x: i64) -> u64 {
        // small values (weights, errors) are already below p: no product needed
        let abs = x.unsigned_abs();
        let r = if abs < self.p { abs } else { self.reduce(abs) };
        if x >= 0 { r } else { self.neg(r) }
    }

    /// Shoup's constant for multiplying by `w < p`: `⌊w · 2^64 / p⌋`.
    #[inline]
    pub fn shoup(&self, w: u64) -> u64 {
        // w·⌊2^(64+k)/p⌋ / 2^k is at most 2 below ⌊w·2^64/p⌋ for w < p; fix by the remainder.
        let mut q = ((w as u128 * self.mu64) >> self.k) as u64;
        let mut r = ((w as u128) << 64) - q as u128 * self.p as u128;
        while r >= self.p as u128 {
            q += 1;
            r -= self.p as u128;
        }
        q
    }

    /// `w · y mod p` in [0, 2p), for any u64 `y`, `w < p` and `w_shoup = self.shoup(w)`.
    #[inline]
    pub fn mul_shoup_lazy(&self, y: u64, w: u64, w_shoup: u64) -> u64 {
        let q = ((y as u128 * w_shoup as u128) >> 64) as u64;
        y.wrapping_mul(w).wrapping_sub(q.wrapping_mul(self.p))
    }

    /// `w · y mod p` in [0, p).
    #[inline]
    pub fn mul_shoup(&self, y: u64, w: u64, w_shoup: u64) -> u64 {
        let r = self.mul_shoup_lazy(y, w, w_shoup);
        if r >= self.p { r - self.p } else { r }
    }

    /// `a^e mod p`.
    pub fn pow(&self, mut a: u64, mut e: u64) -> u64 {
        let mut r = 1 % self.p;
        a %= self.p;
        while e > 0 {
            if e & 1 == 1 {
                r = self.mul(r, a);
            }
            a = self.mul(a, a);
            e >>= 1;
        }
        r
    }

    /// `a^-1 mod p` for a ≠ 0 (Fermat).
    pub fn inv(&self, a: u64) -> Option<u64> {
        (!a.is_multiple_of(self.p)).then(|| self.pow(a, self.p - 2))
    }

    /// The smallest primitive `order`-th root of unity, if `order` divides p - 1 and is a power
    /// of two.
    pub fn primitive_root(&self, order: u64) -> Option<u64> {
        if !order.is_power_of_two() || !(self.p - 1).is_multiple_of(order) {
            return None;
        }
        let cofactor = (self.p - 1) / order;
        // x^(order/2) = -1 exactly for the elements of order `order` among x = g^cofactor.
        (2..self.p).map(|g| self.pow(g, cofactor)).find(|&x| order == 1 || self.pow(x, order / 2) == self.p - 1)
    }
}

/// A u128 as (high, low) words.
#[inline]
fn split(x: u128) -> (u64, u64) {
    ((x >> 64) as u64, x as u64)
}

/// Deterministic Miller–Rabin for all u64 (the first 12 primes are a complete witness set).
pub fn is_prime(n: u64) -> bool {
    const WITNESSES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for &w in &WITNESSES {
        if n.is_multiple_of(w) {
            return n == w;
        }
    }
    let d = (n - 1) >> (n - 1).trailing_zeros();
    let s = (n - 1).trailing_zeros();
    let m = Modulus::unchecked(n);
    'witness: for &a in &WITNESSES {
        let mut x = m.pow(a, d);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = m.mul(x, x);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// `count` distinct primes of exactly `bits` bits with p ≡ 1 (mod 2N), largest first.
pub fn ntt_primes(bits: u32, n: usize, count: usize) -> Result<Vec<u64>, RingError> {
    if !(20..=MAX_PRIME_BITS).contains(&bits) || !n.is_power_of_two() {
        return Err(RingError::NoPrimes { bits, n, count });
    }
    let step = 2 * n as u64;
    let top = (1u64 << bits) - 1;
    let mut candidate = top - (top % step) + 1;
    if candidate > top {
        candidate -= step;
    }
    let mut out = Vec::with_capacity(count);
    while out.len() < count && candidate >= 1 << (bits - 1) {
        if is_prime(candidate) {
            out.push(candidate);
        }
        candidate -= step;
    }
    if out.len() < count {
        return Err(RingError::NoPrimes { bits, n, count });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn primality_matches_known_values() {
        let primes = [2u64, 3, 65537, (1 << 61) - 1, 0xffff_ffff_0000_0001];
        let composites = [0u64, 1, 4, 561, 3_215_031_751, (1 << 61) + 1, 0xffff_ffff_ffff_ffff];
        assert!(primes.iter().all(|&p| is_prime(p)));
        assert!(composites.iter().all(|&c| !is_prime(c)));
    }

    #[test]
    fn ntt_primes_are_prime_congruent_and_sized() {
        for (bits, n) in [(60, 8192), (49, 4096), (36, 4096)] {
            let ps = ntt_primes(bits, n, 3).unwrap_or_default();
            assert_eq!(ps.len(), 3);
            for p in ps {
                assert!(is_prime(p));
                assert_eq!(p % (2 * n as u64), 1);
                assert_eq!(64 - p.leading_zeros(), bits);
            }
        }
    }

    #[test]
    fn residues_of_another_prime_reduce_like_a_remainder() {
        let primes = ntt_primes(58, 4096, 2).unwrap_or_default();
        let wide = ntt_primes(61, 4096, 1).unwrap_or_default();
        let (small, to) = (Modulus::new(primes[0]).unwrap_or_else(|e| panic!("{e}")), primes[1]);
        let m = Modulus::new(to).unwrap_or_else(|e| panic!("{e}"));
        // a prime of the same size (one subtraction) and one 8× wider (a reduction)
        for from in [small.value(), wide[0]] {
            let src: Vec<u64> = [0, 1, to - 1, to, to + 1, from - 1].into_iter().filter(|&v| v < from).collect();
            let mut dst = vec![0; src.len()];
            m.reduce_residues(from, &src, &mut dst);
            assert_eq!(dst, src.iter().map(|v| v % to).collect::<Vec<_>>(), "from {from}");
        }
    }

    #[test]
    fn primitive_roots_have_the_exact_order() {
        let p = ntt_primes(60, 4096, 1).unwrap_or_default()[0];
        let m = Modulus::new(p).unwrap_or_else(|e| panic!("{e}"));
        let psi = m.primitive_root(8192).unwrap_or_default();
        assert_eq!(m.pow(psi, 8192), 1);
        assert_eq!(m.pow(psi, 4096), p - 1);
    }

    proptest! {
        #[test]
        fn shoup_products_match_plain_products(y in any::<u64>(), w in any::<u64>()) {
            let m = Modulus::new((1 << 61) - 1).unwrap_or_else(|e| panic!("{e}"));
            let w = w % m.value();
            let lazy = m.mul_shoup_lazy(y, w, m.shoup(w));
            prop_assert!(lazy < 2 * m.value());
            prop_assert_eq!(lazy % m.value(), m.mul(y, w));
        }

        #[test]
        fn division_free_reductions_match_division(x in any::<u128>(), w in any::<u64>(), bits in 20u32..62) {
            let p = ntt_primes(bits, 1024, 1).unwrap_or_default()[0];
            let m = Modulus::new(p).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(m.reduce_u128(x) as u128, x % p as u128);
            for wide in [x, u128::MAX, u128::MAX - x % p as u128, (x >> 64) * p as u128, (x % p as u128) << 64] {
                prop_assert_eq!(m.reduce_wide(wide) as u128, wide % p as u128);
            }
            prop_assert_eq!(m.reduce(x as u64), (x as u64) % p);
            for signed in [x as i64, i64::MIN, i64::MAX, -1, 0] {
                prop_assert_eq!(m.reduce_signed(signed) as i128, (signed as i128).rem_euclid(p as i128));
            }
            let small = x % (p as u128 * p as u128);
            prop_assert_eq!(m.div_rem(small), (small / p as u128, (small % p as u128) as u64));
            let w = w % p;
            prop_assert_eq!(m.shoup(w) as u128, ((w as u128) << 64) / p as u128);
            prop_assert_eq!(m.shoup(p - 1) as u128, (((p - 1) as u128) << 64) / p as u128);
        }

        #[test]
        fn field_laws_hold(a in any::<u64>(), b in any::<u64>()) {
            let m = Modulus::new(0xfff_ffff_fffc_0001).unwrap_or_else(|e| panic!("{e}"));
            let (a, b) = (a % m.value(), b % m.value());
            prop_assert_eq!(m.sub(m.add(a, b), b), a);
            prop_assert_eq!(m.add(a, m.neg(a)), 0);
            if a != 0 {
                prop_assert_eq!(m.mul(a, m.inv(a).unwrap_or_default()), 1);
            }
        }
    }
}
