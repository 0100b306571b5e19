//! The NTT's butterflies written for AVX-512, eight lanes at a time, for primes below 2^61.
//!
//! The Shoup products take the high half of y·w' from three of the four 32×32-bit partial
//! products (the low×low one only carries into it): the quotient is then short by at most 2 and
//! a product lands in [0, 4p) instead of [0, 2p), so the forward butterflies keep values in
//! [0, 8p) (hence p < 2^61) and the inverse ones reduce each product once more. That halves the
//! time of a transform against the exact high product (which AVX-512 lacks; the compiler's
//! vectorization of the portable loops computed it lane by lane with scalar `mulx`). Outputs
//! are fully reduced and equal the portable kernels' bit for bit (the test
//! `every_simd_level_computes_what_the_portable_kernel_does`).
//!
//! Stages whose butterflies span at least eight values read a broadcast twiddle; the three
//! stages of spans 4, 2 and 1 run together per group of 16 values held in two registers, each
//! stage splitting the group into its eight upper and eight lower values with a two-source
//! permutation and merging them back.

use std::arch::x86_64::*;

use super::NttTable;

/// Whether these kernels take `table` and the window of `len` slots from `first`: a prime below
/// 2^61 (values up to 8p in a lane) and whole groups of 16 values; other tables and windows stay
/// with the portable kernels.
pub(super) fn takes(table: &NttTable, first: usize, len: usize) -> bool {
    table.modulus.value() < 1 << 61 && len >= 16 && first.is_multiple_of(16) && len.is_multiple_of(16)
}

/// Lane indices of the spans-4, 2 and 1 stages: for a group of 16 values in (v0, v1), `lo`
/// picks each butterfly's first value and `hi` its second (for `_mm512_permutex2var_epi64`),
/// `back_lo` / `back_hi` put the butterflies' outputs (x', y') back into (v0, v1) order, and
/// `twiddle` spreads the group's twiddles over the lanes of their butterflies.
struct Spread {
    lo: [i64; 8],
    hi: [i64; 8],
    back_lo: [i64; 8],
    back_hi: [i64; 8],
    twiddle: [i64; 8],
}

const SPAN4: Spread = Spread {
    lo: [0, 1, 2, 3, 8, 9, 10, 11],
    hi: [4, 5, 6, 7, 12, 13, 14, 15],
    back_lo: [0, 1, 2, 3, 8, 9, 10, 11],
    back_hi: [4, 5, 6, 7, 12, 13, 14, 15],
    twiddle: [0, 0, 0, 0, 1, 1, 1, 1],
};

const SPAN2: Spread = Spread {
    lo: [0, 1, 4, 5, 8, 9, 12, 13],
    hi: [2, 3, 6, 7, 10, 11, 14, 15],
    back_lo: [0, 1, 8, 9, 2, 3, 10, 11],
    back_hi: [4, 5, 12, 13, 6, 7, 14, 15],
    twiddle: [0, 0, 1, 1, 2, 2, 3, 3],
};

const SPAN1: Spread = Spread {
    lo: [0, 2, 4, 6, 8, 10, 12, 14],
    hi: [1, 3, 5, 7, 9, 11, 13, 15],
    back_lo: [0, 8, 1, 9, 2, 10, 3, 11],
    back_hi: [4, 12, 5, 13, 6, 14, 7, 15],
    twiddle: [0, 1, 2, 3, 4, 5, 6, 7],
};

/// Indices of one [`Spread`] in registers.
#[derive(Clone, Copy)]
struct Lanes {
    lo: __m512i,
    hi: __m512i,
    back_lo: __m512i,
    back_hi: __m512i,
    twiddle: __m512i,
}

impl Lanes {
    #[target_feature(enable = "avx512f")]
    fn of(s: &Spread) -> Lanes {
        let v = |a: &[i64; 8]| _mm512_set_epi64(a[7], a[6], a[5], a[4], a[3], a[2], a[1], a[0]);
        Lanes { lo: v(&s.lo), hi: v(&s.hi), back_lo: v(&s.back_lo), back_hi: v(&s.back_hi), twiddle: v(&s.twiddle) }
    }
}

/// The prime's multiples in registers.
#[derive(Clone, Copy)]
struct Prime {
    p: __m512i,
    two_p: __m512i,
    four_p: __m512i,
}

impl Prime {
    #[target_feature(enable = "avx512f")]
    fn of(p: u64) -> Prime {
        let v = |c: u64| _mm512_set1_epi64(c as i64);
        Prime { p: v(p), two_p: v(2 * p), four_p: v(4 * p) }
    }
}

/// w·y mod p in [0, 4p) for any y < 2^64 (4p < 2^64), `ws` = ⌊w·2^64/p⌋: Shoup's product with
/// the quotient ⌊y·ws/2^64⌋ less at most 2, the carry of the dropped low×low partial product
/// and of the low halves of the cross products.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
pub(in crate::backend) fn mul_shoup_lazy(y: __m512i, w: __m512i, ws: __m512i, p: __m512i) -> __m512i {
    let (y_hi, ws_hi) = (_mm512_srli_epi64(y, 32), _mm512_srli_epi64(ws, 32));
    let cross = _mm512_add_epi64(
        _mm512_srli_epi64(_mm512_mul_epu32(y, ws_hi), 32),
        _mm512_srli_epi64(_mm512_mul_epu32(y_hi, ws), 32),
    );
    let q = _mm512_add_epi64(_mm512_mul_epu32(y_hi, ws_hi), cross);
    _mm512_sub_epi64(_mm512_mullo_epi64(y, w), _mm512_mullo_epi64(q, p))
}

/// x − c where x ≥ c, else x (unsigned).
#[inline]
#[target_feature(enable = "avx512f")]
pub(in crate::backend) fn reduce_once(x: __m512i, c: __m512i) -> __m512i {
    _mm512_min_epu64(x, _mm512_sub_epi64(x, c))
}

/// Cooley–Tukey butterfly: (x, y) in [0, 8p) → (u + w·y, u − w·y + 4p) in [0, 8p), with
/// u = x mod 4p and w·y in [0, 4p).
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn forward_butterfly(k: Prime, x: __m512i, y: __m512i, w: __m512i, ws: __m512i) -> (__m512i, __m512i) {
    let u = reduce_once(x, k.four_p);
    let v = mul_shoup_lazy(y, w, ws, k.p);
    (_mm512_add_epi64(u, v), _mm512_sub_epi64(_mm512_add_epi64(u, k.four_p), v))
}

/// Gentleman–Sande butterfly: (x, y) in [0, 2p) → ((x + y) mod 2p, w·(x − y + 2p) mod 2p),
/// both in [0, 2p).
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn inverse_butterfly(k: Prime, x: __m512i, y: __m512i, w: __m512i, ws: __m512i) -> (__m512i, __m512i) {
    let s = reduce_once(_mm512_add_epi64(x, y), k.two_p);
    let d = _mm512_sub_epi64(_mm512_add_epi64(x, k.two_p), y);
    (s, reduce_once(mul_shoup_lazy(d, w, ws, k.p), k.two_p))
}

/// Twiddles of one span-≤4 stage for one group: the group's `count` consecutive entries of the
/// stage's table from `at`, spread over their butterflies' lanes.
///
/// # Safety
/// `table[at..at + count]` must be in bounds, count ∈ {2, 4, 8}.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn group_twiddles(table: &[u64], at: usize, count: usize, spread: __m512i) -> __m512i {
    debug_assert!(at + count <= table.len());
    // SAFETY: the caller keeps at + count within the table; the masked load reads only those.
    let loaded = unsafe { _mm512_maskz_loadu_epi64(((1u16 << count) - 1) as u8, table.as_ptr().add(at).cast()) };
    _mm512_permutexvar_epi64(spread, loaded)
}

/// One span-≤4 stage on a group (v0, v1) with the group's twiddles (w, ws).
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn group_stage(
    v: (__m512i, __m512i),
    lanes: Lanes,
    twiddles: (__m512i, __m512i),
    butterfly: impl Fn(__m512i, __m512i, __m512i, __m512i) -> (__m512i, __m512i),
) -> (__m512i, __m512i) {
    let x = _mm512_permutex2var_epi64(v.0, lanes.lo, v.1);
    let y = _mm512_permutex2var_epi64(v.0, lanes.hi, v.1);
    let (x, y) = butterfly(x, y, twiddles.0, twiddles.1);
    (_mm512_permutex2var_epi64(x, lanes.back_lo, y), _mm512_permutex2var_epi64(x, lanes.back_hi, y))
}

/// The broadcast-twiddle stages: blocks of 2t values, t ≥ 8, each with twiddle `tw[block]`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn wide_stage(
    a: &mut [u64],
    t: usize,
    tw: (&[u64], &[u64]),
    butterfly: impl Fn(__m512i, __m512i, __m512i, __m512i) -> (__m512i, __m512i),
) {
    for (block, (&w, &ws)) in a.chunks_exact_mut(2 * t).zip(tw.0.iter().zip(tw.1)) {
        let (w, ws) = (_mm512_set1_epi64(w as i64), _mm512_set1_epi64(ws as i64));
        let ptr = block.as_mut_ptr();
        for i in (0..t).step_by(8) {
            // SAFETY: i + 8 ≤ t and t + i + 8 ≤ 2t = the block's length (t a multiple of 8).
            unsafe {
                let x = _mm512_loadu_si512(ptr.add(i).cast());
                let y = _mm512_loadu_si512(ptr.add(t + i).cast());
                let (x, y) = butterfly(x, y, w, ws);
                _mm512_storeu_si512(ptr.add(i).cast(), x);
                _mm512_storeu_si512(ptr.add(t + i).cast(), y);
            }
        }
    }
}

/// The first stage of a forward transform whose input is a polynomial of support s = 2t (t ≥ 8)
/// in `a[..s]`: every block of s values would hold a copy of it (the stages before only copy),
/// so each block's butterflies read the head and write the block, the head's own block last.
/// Whatever `a` held beyond s is overwritten.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn head_stage(
    a: &mut [u64],
    t: usize,
    tw: (&[u64], &[u64]),
    butterfly: impl Fn(__m512i, __m512i, __m512i, __m512i) -> (__m512i, __m512i),
) {
    let blocks = a.len() / (2 * t);
    let ptr = a.as_mut_ptr();
    for j in (0..blocks).rev() {
        let (w, ws) = (_mm512_set1_epi64(tw.0[j] as i64), _mm512_set1_epi64(tw.1[j] as i64));
        for i in (0..t).step_by(8) {
            // SAFETY: i + 8 ≤ t and the block j·2t + 2t ≤ a.len(); block 0 (the head) is
            // written last, after every other block has read it.
            unsafe {
                let x = _mm512_loadu_si512(ptr.add(i).cast());
                let y = _mm512_loadu_si512(ptr.add(t + i).cast());
                let (x, y) = butterfly(x, y, w, ws);
                _mm512_storeu_si512(ptr.add(j * 2 * t + i).cast(), x);
                _mm512_storeu_si512(ptr.add(j * 2 * t + t + i).cast(), y);
            }
        }
    }
}

/// Slots `first..first + a.len()` (a window the kernels [take](takes), whole blocks of s) of the
/// forward transform of the polynomial of support s (a power of two) in `a[..s]`, whatever
/// follows it: the stages of spans s/2 down to 1, then the reduction to [0, p).
#[target_feature(enable = "avx512f,avx512dq")]
pub(super) fn forward(table: &NttTable, a: &mut [u64], s: usize, first: usize) {
    let n = table.n;
    debug_assert!(takes(table, first, a.len()) && s.is_power_of_two() && a.len().is_multiple_of(s));
    let k = Prime::of(table.modulus.value());
    let bf = |x, y, w, ws| forward_butterfly(k, x, y, w, ws);
    // the stage of span t has m = n/2t blocks, the window's from first/2t on
    let twiddles = |t: usize| {
        let (m, from) = (n / (2 * t), n / (2 * t) + first / (2 * t));
        (&table.psi[from..2 * m], &table.psi_shoup[from..2 * m])
    };
    let mut t = s / 2;
    if t >= 8 {
        head_stage(a, t, twiddles(t), bf);
        t /= 2;
    } else {
        NttTable::replicate(a, s);
    }
    while t >= 8 {
        wide_stage(a, t, twiddles(t), bf);
        t /= 2;
    }
    // spans 4, 2, 1 where the support reaches them (t is the first span left, 0 if none)
    let stages = [(4, Lanes::of(&SPAN4)), (2, Lanes::of(&SPAN2)), (1, Lanes::of(&SPAN1))];
    for (g, group) in a.chunks_exact_mut(16).enumerate() {
        let g = first / 16 + g;
        let ptr = group.as_mut_ptr();
        // SAFETY: a group is 16 values: two unaligned loads of 8.
        let mut v = unsafe { (_mm512_loadu_si512(ptr.cast()), _mm512_loadu_si512(ptr.add(8).cast())) };
        for &(span, lanes) in stages.iter().filter(|(span, _)| *span <= t) {
            // the stage of span `span` has n/(2·span) blocks, the group holds 8/span of them
            let (m, count) = (n / (2 * span), 8 / span);
            // SAFETY: m + g·count + count ≤ 2m: the group's blocks are among the stage's m.
            let tw = unsafe {
                (
                    group_twiddles(&table.psi, m + g * count, count, lanes.twiddle),
                    group_twiddles(&table.psi_shoup, m + g * count, count, lanes.twiddle),
                )
            };
            v = group_stage(v, lanes, tw, bf);
        }
        let reduce = |x| reduce_once(reduce_once(reduce_once(x, k.four_p), k.two_p), k.p);
        // SAFETY: as the loads above.
        unsafe {
            _mm512_storeu_si512(ptr.cast(), reduce(v.0));
            _mm512_storeu_si512(ptr.add(8).cast(), reduce(v.1));
        }
    }
}

/// Inverse transform of `a` (a table the kernels [take](takes), bit-reversed input in [0, p)): the spans 1, 2
/// and 4 per group, the wider stages, and the last stage with the scaling by N^-1.
#[target_feature(enable = "avx512f,avx512dq")]
pub(super) fn inverse(table: &NttTable, a: &mut [u64]) {
    let n = table.n;
    debug_assert!(takes(table, 0, n) && a.len() == n);
    let k = Prime::of(table.modulus.value());
    let bf = |x, y, w, ws| inverse_butterfly(k, x, y, w, ws);
    let stages = [(1, Lanes::of(&SPAN1)), (2, Lanes::of(&SPAN2)), (4, Lanes::of(&SPAN4))];
    for (g, group) in a.chunks_exact_mut(16).enumerate() {
        let ptr = group.as_mut_ptr();
        // SAFETY: a group is 16 values.
        let mut v = unsafe { (_mm512_loadu_si512(ptr.cast()), _mm512_loadu_si512(ptr.add(8).cast())) };
        for &(span, lanes) in &stages {
            let (m, count) = (n / (2 * span), 8 / span);
            // SAFETY: as in `forward`; m ≥ 2 since n ≥ 16.
            let tw = unsafe {
                (
                    group_twiddles(&table.psi_inv, m + g * count, count, lanes.twiddle),
                    group_twiddles(&table.psi_inv_shoup, m + g * count, count, lanes.twiddle),
                )
            };
            v = group_stage(v, lanes, tw, bf);
        }
        // SAFETY: as the loads above.
        unsafe {
            _mm512_storeu_si512(ptr.cast(), v.0);
            _mm512_storeu_si512(ptr.add(8).cast(), v.1);
        }
    }
    let (mut t, mut m) = (8, n / 16);
    while m > 1 {
        wide_stage(a, t, (&table.psi_inv[m..2 * m], &table.psi_inv_shoup[m..2 * m]), bf);
        t *= 2;
        m /= 2;
    }
    // the last stage with N^-1 folded in: x' = (u + v)/N, y' = (u − v)·ψ^-1/N, reduced to [0, p)
    let (n_inv, n_inv_s) = (_mm512_set1_epi64(table.n_inv as i64), _mm512_set1_epi64(table.n_inv_shoup as i64));
    let (last, last_s) = (_mm512_set1_epi64(table.last_inv as i64), _mm512_set1_epi64(table.last_inv_shoup as i64));
    let ptr = a.as_mut_ptr();
    for i in (0..n / 2).step_by(8) {
        // SAFETY: i + 8 ≤ n/2 and n/2 + i + 8 ≤ n.
        unsafe {
            let u = _mm512_loadu_si512(ptr.add(i).cast());
            let v = _mm512_loadu_si512(ptr.add(n / 2 + i).cast());
            let x = mul_shoup_lazy(_mm512_add_epi64(u, v), n_inv, n_inv_s, k.p);
            let y = mul_shoup_lazy(_mm512_sub_epi64(_mm512_add_epi64(u, k.two_p), v), last, last_s, k.p);
            let reduce = |x| reduce_once(reduce_once(x, k.two_p), k.p);
            _mm512_storeu_si512(ptr.add(i).cast(), reduce(x));
            _mm512_storeu_si512(ptr.add(n / 2 + i).cast(), reduce(y));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::modp::{Modulus, ntt_primes};
    use proptest::prelude::*;

    proptest! {
        /// The shortened quotient leaves a product in [0, 4p) and congruent to w·y, for any
        /// y < 2^64 and primes up to 2^61.
        #[test]
        fn shoup_products_land_below_four_p(ys in any::<[u64; 8]>(), w in any::<u64>(), bits in 20u32..=61) {
            if !std::arch::is_x86_feature_detected!("avx512dq") {
                return Ok(());
            }
            let m = Modulus::new(ntt_primes(bits, 16, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}"));
            let w = w % m.value();
            let mut got = [0u64; 8];
            // SAFETY: the CPU has AVX-512F/DQ (checked above); 8 values in and out.
            unsafe {
                let y = _mm512_loadu_si512(ys.as_ptr().cast());
                let v = |c: u64| _mm512_set1_epi64(c as i64);
                let r = mul_shoup_lazy(y, v(w), v(m.shoup(w)), v(m.value()));
                _mm512_storeu_si512(got.as_mut_ptr().cast(), r);
            }
            for (y, r) in ys.iter().zip(got) {
                prop_assert!(r < 4 * m.value());
                prop_assert_eq!(r % m.value(), m.mul(*y % m.value(), w));
            }
        }
    }
}
