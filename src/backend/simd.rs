//! The CPU kernels' instruction sets: which one this machine runs ([`level`]), and [`Lanes`], a
//! vector of 64-bit lanes on AVX2 (4 lanes) or AVX-512 (8 lanes), so that each hand-vectorized
//! kernel is written once, generic over its lanes, and compiled for both sets.
//!
//! Neither set has a 64×64 → 128-bit multiply: the products are put together from 32×32 → 64-bit
//! ones (`vpmuludq`), as Shoup's modular product needs only the high half of y·w' and the low
//! halves of y·w and q·p. AVX2 also lacks 64-bit low products and unsigned minima: the first take
//! three 32-bit products, the second a sign test, which is why AVX2's kernels take primes below
//! 2^60 (every lane then holds less than 8p < 2^63) where AVX-512's take them below 2^61.

use std::arch::x86_64::*;
use std::sync::OnceLock;

/// An instruction set the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Avx512,
    Avx2,
    Baseline,
}

/// The level the kernels run at: the best [available] one, or the portable one when
/// `SECMOE_NO_SIMD` is set.
pub(super) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| if std::env::var_os("SECMOE_NO_SIMD").is_some() { Level::Baseline } else { available()[0] })
}

/// The levels this CPU supports, best first (the portable one always).
pub(super) fn available() -> Vec<Level> {
    let avx512 = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("bmi2");
    let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("bmi2");
    [(avx512, Level::Avx512), (avx2, Level::Avx2), (true, Level::Baseline)]
        .into_iter()
        .filter_map(|(has, level)| has.then_some(level))
        .collect()
}

/// A vector of 64-bit lanes. Every method is `unsafe` for one reason: the CPU must have the
/// instruction set of the implementation. The generic kernels are `#[inline(always)]` and
/// instantiated inside a function compiled for that set (`#[target_feature]`), which is called
/// only at the matching [`level`]. They call no closures: a closure is compiled without its
/// caller's features, so the intrinsics in it would become calls (an NTT 30× slower).
pub(super) trait Lanes: Copy {
    /// Lanes per vector.
    const LEN: usize;
    /// The lazy kernels take primes below this: lanes hold values up to 8p, which
    /// [`Lanes::reduce_once`] must compare correctly.
    const PRIME_LIMIT: u64;
    /// Every lane `v`.
    unsafe fn splat(v: u64) -> Self;
    /// `LEN` values from `src` (unaligned).
    unsafe fn load(src: *const u64) -> Self;
    /// The lanes to `dst` (unaligned).
    unsafe fn store(self, dst: *mut u64);
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn sub(self, b: Self) -> Self;
    unsafe fn and(self, b: Self) -> Self;
    /// Logical shift right by 32 bits.
    unsafe fn shr32(self) -> Self;
    /// Logical shift right by 29 bits.
    unsafe fn shr29(self) -> Self;
    /// The low 32 bits of each lane times those of `b`, as 64-bit products.
    unsafe fn mul32(self, b: Self) -> Self;
    /// The low 64 bits of the lanes' products.
    unsafe fn mullo(self, b: Self) -> Self;
    /// x − c where x ≥ c, else x (unsigned; below [`Lanes::PRIME_LIMIT`]·8 on AVX2).
    unsafe fn reduce_once(self, c: Self) -> Self;
    /// All ones in the lanes where x > b, else zero (unsigned; below 2^63 on AVX2).
    unsafe fn above(self, b: Self) -> Self;
}

/// Four 64-bit lanes of AVX2.
#[derive(Clone, Copy)]
pub(super) struct Avx2(pub(super) __m256i);

/// Eight 64-bit lanes of AVX-512 (F and DQ).
#[derive(Clone, Copy)]
pub(super) struct Avx512(pub(super) __m512i);

// SAFETY (every method of both impls): the intrinsics need the implementation's instruction set,
// which the trait's contract makes the caller guarantee.
impl Lanes for Avx2 {
    const LEN: usize = 4;
    const PRIME_LIMIT: u64 = 1 << 60;

    #[inline(always)]
    unsafe fn splat(v: u64) -> Self {
        unsafe { Avx2(_mm256_set1_epi64x(v as i64)) }
    }
    #[inline(always)]
    unsafe fn load(src: *const u64) -> Self {
        unsafe { Avx2(_mm256_loadu_si256(src.cast())) }
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut u64) {
        unsafe { _mm256_storeu_si256(dst.cast(), self.0) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        unsafe { Avx2(_mm256_add_epi64(self.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        unsafe { Avx2(_mm256_sub_epi64(self.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn and(self, b: Self) -> Self {
        unsafe { Avx2(_mm256_and_si256(self.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn shr32(self) -> Self {
        unsafe { Avx2(_mm256_srli_epi64::<32>(self.0)) }
    }
    #[inline(always)]
    unsafe fn shr29(self) -> Self {
        unsafe { Avx2(_mm256_srli_epi64::<29>(self.0)) }
    }
    #[inline(always)]
    unsafe fn mul32(self, b: Self) -> Self {
        unsafe { Avx2(_mm256_mul_epu32(self.0, b.0)) }
    }
    /// a·b mod 2^64 = a0·b0 + (a1·b0 + a0·b1)·2^32 for 32-bit halves.
    #[inline(always)]
    unsafe fn mullo(self, b: Self) -> Self {
        unsafe {
            let cross = _mm256_add_epi64(
                _mm256_mul_epu32(_mm256_srli_epi64::<32>(self.0), b.0),
                _mm256_mul_epu32(self.0, _mm256_srli_epi64::<32>(b.0)),
            );
            Avx2(_mm256_add_epi64(_mm256_mul_epu32(self.0, b.0), _mm256_slli_epi64::<32>(cross)))
        }
    }
    /// With x, c < 2^63, x − c is negative exactly when x < c: its sign picks x.
    #[inline(always)]
    unsafe fn reduce_once(self, c: Self) -> Self {
        unsafe {
            let d = _mm256_castsi256_pd(_mm256_sub_epi64(self.0, c.0));
            Avx2(_mm256_castpd_si256(_mm256_blendv_pd(d, _mm256_castsi256_pd(self.0), d)))
        }
    }
    /// A signed comparison, right for values below 2^63.
    #[inline(always)]
    unsafe fn above(self, b: Self) -> Self {
        unsafe { Avx2(_mm256_cmpgt_epi64(self.0, b.0)) }
    }
}

impl Lanes for Avx512 {
    const LEN: usize = 8;
    const PRIME_LIMIT: u64 = 1 << 61;

    #[inline(always)]
    unsafe fn splat(v: u64) -> Self {
        unsafe { Avx512(_mm512_set1_epi64(v as i64)) }
    }
    #[inline(always)]
    unsafe fn load(src: *const u64) -> Self {
        unsafe { Avx512(_mm512_loadu_si512(src.cast())) }
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut u64) {
        unsafe { _mm512_storeu_si512(dst.cast(), self.0) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        unsafe { Avx512(_mm512_add_epi64(self.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        unsafe { Avx512(_mm512_sub_epi64(self.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn and(self, b: Self) -> Self {
        unsafe { Avx512(_mm512_and_si512(self.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn shr32(self) -> Self {
        unsafe { Avx512(_mm512_srli_epi64::<32>(self.0)) }
    }
    #[inline(always)]
    unsafe fn shr29(self) -> Self {
        unsafe { Avx512(_mm512_srli_epi64::<29>(self.0)) }
    }
    #[inline(always)]
    unsafe fn mul32(self, b: Self) -> Self {
        unsafe { Avx512(_mm512_mul_epu32(self.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn mullo(self, b: Self) -> Self {
        unsafe { Avx512(_mm512_mullo_epi64(self.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn reduce_once(self, c: Self) -> Self {
        unsafe { Avx512(_mm512_min_epu64(self.0, _mm512_sub_epi64(self.0, c.0))) }
    }
    #[inline(always)]
    unsafe fn above(self, b: Self) -> Self {
        unsafe { Avx512(_mm512_movm_epi64(_mm512_cmpgt_epu64_mask(self.0, b.0))) }
    }
}

/// The high 64 bits of the lanes' products a·b, from four 32×32-bit products.
///
/// # Safety
/// As every [`Lanes`] method.
#[inline(always)]
pub(super) unsafe fn mulhi<L: Lanes>(a: L, b: L) -> L {
    unsafe {
        let low32 = L::splat(0xffff_ffff);
        let (ah, bh) = (a.shr32(), b.shr32());
        let (ll, lh, hl, hh) = (a.mul32(b), a.mul32(bh), ah.mul32(b), ah.mul32(bh));
        let mid = ll.shr32().add(lh.and(low32)).add(hl.and(low32));
        hh.add(mid.shr32()).add(lh.shr32().add(hl.shr32()))
    }
}

/// Shoup's product y·c mod p in [0, 2p) for any lanes y, `shoup` = ⌊c·2^64/p⌋.
///
/// # Safety
/// As every [`Lanes`] method.
#[inline(always)]
pub(super) unsafe fn mul_shoup<L: Lanes>(y: L, c: L, shoup: L, p: L) -> L {
    unsafe { y.mullo(c).sub(mulhi(y, shoup).mullo(p)) }
}

/// w·y mod p in [0, 4p) for any y < 2^64 (4p < 2^64), `ws` = ⌊w·2^64/p⌋: Shoup's product with
/// the quotient ⌊y·ws/2^64⌋ less at most 2, the carry of the dropped low×low partial product
/// and of the low halves of the cross products (three 32-bit products instead of four).
///
/// # Safety
/// As every [`Lanes`] method.
#[inline(always)]
pub(super) unsafe fn mul_shoup_lazy<L: Lanes>(y: L, w: L, ws: L, p: L) -> L {
    unsafe {
        let (y_hi, ws_hi) = (y.shr32(), ws.shr32());
        let cross = y.mul32(ws_hi).shr32().add(y_hi.mul32(ws).shr32());
        let q = y_hi.mul32(ws_hi).add(cross);
        y.mullo(w).sub(q.mullo(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::modp::{Modulus, ntt_primes};
    use proptest::prelude::*;

    /// The products of one level on 8 values (two vectors of AVX2), against the portable ones.
    fn products_at(level: Level, ys: [u64; 8], w: u64, m: &Modulus) -> ([u64; 8], [u64; 8], [u64; 8]) {
        #[target_feature(enable = "avx2")]
        fn avx2(ys: [u64; 8], w: u64, m: &Modulus) -> ([u64; 8], [u64; 8], [u64; 8]) {
            products::<Avx2>(ys, w, m)
        }
        #[target_feature(enable = "avx512f,avx512dq")]
        fn avx512(ys: [u64; 8], w: u64, m: &Modulus) -> ([u64; 8], [u64; 8], [u64; 8]) {
            products::<Avx512>(ys, w, m)
        }
        #[inline(always)]
        fn products<L: Lanes>(ys: [u64; 8], w: u64, m: &Modulus) -> ([u64; 8], [u64; 8], [u64; 8]) {
            let (mut hi, mut exact, mut lazy) = ([0u64; 8], [0u64; 8], [0u64; 8]);
            // SAFETY: instantiated inside a function compiled for L's set, called at its level;
            // whole vectors of the 8 values.
            unsafe {
                let (w, ws, p) = (L::splat(w), L::splat(m.shoup(w)), L::splat(m.value()));
                for at in (0..8).step_by(L::LEN) {
                    let y = L::load(ys.as_ptr().add(at));
                    mulhi(y, ws).store(hi.as_mut_ptr().add(at));
                    mul_shoup(y, w, ws, p).store(exact.as_mut_ptr().add(at));
                    mul_shoup_lazy(y, w, ws, p).store(lazy.as_mut_ptr().add(at));
                }
            }
            (hi, exact, lazy)
        }
        match level {
            // SAFETY: `level` is one this CPU supports.
            Level::Avx512 => unsafe { avx512(ys, w, m) },
            // SAFETY: as above.
            Level::Avx2 => unsafe { avx2(ys, w, m) },
            Level::Baseline => {
                let ws = m.shoup(w);
                let hi = ys.map(|y| ((y as u128 * ws as u128) >> 64) as u64);
                (hi, ys.map(|y| m.mul_shoup_lazy(y, w, ws)), ys.map(|y| m.mul_shoup_lazy(y, w, ws)))
            }
        }
    }

    proptest! {
        /// At every level this CPU has, the high product is exact, Shoup's product is the
        /// portable one, and the shortened quotient leaves a product in [0, 4p) congruent to
        /// w·y, for any y < 2^64 and primes up to 2^61.
        #[test]
        fn vector_products_are_the_portable_ones(ys in any::<[u64; 8]>(), w in any::<u64>(), bits in 20u32..=61) {
            let m = Modulus::new(ntt_primes(bits, 16, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}"));
            let w = w % m.value();
            let ws = m.shoup(w);
            for level in available() {
                let (hi, exact, lazy) = products_at(level, ys, w, &m);
                for (i, y) in ys.iter().enumerate() {
                    prop_assert_eq!(hi[i], ((*y as u128 * ws as u128) >> 64) as u64, "{:?}", level);
                    prop_assert_eq!(exact[i], m.mul_shoup_lazy(*y, w, ws), "{:?}", level);
                    prop_assert!(lazy[i] < 4 * m.value());
                    prop_assert_eq!(lazy[i] % m.value(), m.mul(*y % m.value(), w), "{:?}", level);
                }
            }
        }
    }
}
