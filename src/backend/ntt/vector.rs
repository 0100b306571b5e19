//! The NTT's butterflies written for vectors of 64-bit lanes ([`Lanes`]: AVX2's 4, AVX-512's 8),
//! once, and compiled for each instruction set.
//!
//! The Shoup products take the high half of y·w' from three of the four 32×32-bit partial
//! products ([`mul_shoup_lazy`]): the quotient is then short by at most 2 and a product lands in
//! [0, 4p) instead of [0, 2p), so the forward butterflies keep values in [0, 8p) (hence the
//! primes below [`Lanes::PRIME_LIMIT`]) and the inverse ones reduce each product once more. That
//! halves the time of a transform against the exact high product (which neither set has; the
//! compiler's vectorization of the portable loops computes it lane by lane with scalar `mulx`).
//! Outputs are fully reduced and equal the portable kernels' bit for bit (the test
//! `every_simd_level_computes_what_the_portable_kernel_does`).
//!
//! Stages whose butterflies span at least a vector read a broadcast twiddle; the stages of
//! shorter spans run together per group of two vectors, each stage splitting the group into its
//! butterflies' first and second values and merging them back ([`Groups`]: two-source
//! permutations on AVX-512, lane and 128-bit swaps on AVX2).

use std::arch::x86_64::*;

use super::NttTable;
use crate::backend::simd::{Avx2, Avx512, Lanes, mul_shoup_lazy};

/// Whether the kernels of lanes `L` take `table` and the window of `len` slots from `first`: a
/// prime below [`Lanes::PRIME_LIMIT`] and whole groups of two vectors; other tables and windows
/// stay with the portable kernels.
pub(super) fn takes<L: Lanes>(table: &NttTable, first: usize, len: usize) -> bool {
    let group = 2 * L::LEN;
    table.modulus.value() < L::PRIME_LIMIT && len >= group && first.is_multiple_of(group) && len.is_multiple_of(group)
}

/// The stages of spans below a vector, on a group of two vectors (v0, v1).
trait Groups: Lanes {
    /// The spans below `LEN`, widest first (the forward transform's order).
    const SPANS: &'static [usize];
    /// The same, narrowest first (the inverse's).
    const SPANS_UP: &'static [usize];
    /// What a stage's regrouping needs, set up once per transform.
    type Spread: Copy;
    /// The regrouping of the stage of span `span` (one of [`Groups::SPANS`]).
    unsafe fn spread(span: usize) -> Self::Spread;
    /// Each butterfly's first values and second values, lane for lane.
    unsafe fn split(s: Self::Spread, v: (Self, Self)) -> (Self, Self);
    /// The butterflies' outputs back in the group's order.
    unsafe fn merge(s: Self::Spread, x: Self, y: Self) -> (Self, Self);
    /// The group's `LEN / span` twiddles from `table[at..]`, each in the lanes of its
    /// butterflies as [`Groups::split`] orders them.
    ///
    /// # Safety
    /// Also: `table[at..at + LEN / span]` in bounds.
    unsafe fn twiddles(s: Self::Spread, table: &[u64], at: usize) -> Self;
}

/// Lane indices of AVX-512's spans-4, 2 and 1 stages: for a group of 16 values in (v0, v1), `lo`
/// picks each butterfly's first value and `hi` its second (for `_mm512_permutex2var_epi64`),
/// `back_lo` / `back_hi` put the butterflies' outputs (x', y') back into (v0, v1) order, and
/// `twiddle` spreads the group's twiddles over the lanes of their butterflies.
struct Spread {
    count: usize,
    lo: [i64; 8],
    hi: [i64; 8],
    back_lo: [i64; 8],
    back_hi: [i64; 8],
    twiddle: [i64; 8],
}

const SPAN4: Spread = Spread {
    count: 2,
    lo: [0, 1, 2, 3, 8, 9, 10, 11],
    hi: [4, 5, 6, 7, 12, 13, 14, 15],
    back_lo: [0, 1, 2, 3, 8, 9, 10, 11],
    back_hi: [4, 5, 6, 7, 12, 13, 14, 15],
    twiddle: [0, 0, 0, 0, 1, 1, 1, 1],
};

const SPAN2: Spread = Spread {
    count: 4,
    lo: [0, 1, 4, 5, 8, 9, 12, 13],
    hi: [2, 3, 6, 7, 10, 11, 14, 15],
    back_lo: [0, 1, 8, 9, 2, 3, 10, 11],
    back_hi: [4, 5, 12, 13, 6, 7, 14, 15],
    twiddle: [0, 0, 1, 1, 2, 2, 3, 3],
};

const SPAN1: Spread = Spread {
    count: 8,
    lo: [0, 2, 4, 6, 8, 10, 12, 14],
    hi: [1, 3, 5, 7, 9, 11, 13, 15],
    back_lo: [0, 8, 1, 9, 2, 10, 3, 11],
    back_hi: [4, 12, 5, 13, 6, 14, 7, 15],
    twiddle: [0, 1, 2, 3, 4, 5, 6, 7],
};

/// A [`Spread`] in registers.
#[derive(Clone, Copy)]
struct Indices {
    count: usize,
    lo: __m512i,
    hi: __m512i,
    back_lo: __m512i,
    back_hi: __m512i,
    twiddle: __m512i,
}

// SAFETY (every method of both impls): as [`Lanes`]' methods, the intrinsics need the
// implementation's instruction set, which the caller guarantees.
impl Groups for Avx512 {
    const SPANS: &'static [usize] = &[4, 2, 1];
    const SPANS_UP: &'static [usize] = &[1, 2, 4];
    type Spread = Indices;

    #[inline(always)]
    unsafe fn spread(span: usize) -> Indices {
        let s = match span {
            4 => &SPAN4,
            2 => &SPAN2,
            _ => &SPAN1,
        };
        // SAFETY: see the impl.
        unsafe {
            Indices {
                count: s.count,
                lo: _mm512_loadu_si512(s.lo.as_ptr().cast()),
                hi: _mm512_loadu_si512(s.hi.as_ptr().cast()),
                back_lo: _mm512_loadu_si512(s.back_lo.as_ptr().cast()),
                back_hi: _mm512_loadu_si512(s.back_hi.as_ptr().cast()),
                twiddle: _mm512_loadu_si512(s.twiddle.as_ptr().cast()),
            }
        }
    }
    #[inline(always)]
    unsafe fn split(s: Indices, v: (Self, Self)) -> (Self, Self) {
        // SAFETY: see the impl.
        unsafe {
            (
                Avx512(_mm512_permutex2var_epi64(v.0.0, s.lo, v.1.0)),
                Avx512(_mm512_permutex2var_epi64(v.0.0, s.hi, v.1.0)),
            )
        }
    }
    #[inline(always)]
    unsafe fn merge(s: Indices, x: Self, y: Self) -> (Self, Self) {
        // SAFETY: see the impl.
        unsafe {
            (
                Avx512(_mm512_permutex2var_epi64(x.0, s.back_lo, y.0)),
                Avx512(_mm512_permutex2var_epi64(x.0, s.back_hi, y.0)),
            )
        }
    }
    #[inline(always)]
    unsafe fn twiddles(s: Indices, table: &[u64], at: usize) -> Self {
        debug_assert!(at + s.count <= table.len());
        // SAFETY: the caller keeps at + count within the table; the masked load reads only those.
        unsafe {
            let loaded = _mm512_maskz_loadu_epi64(((1u16 << s.count) - 1) as u8, table.as_ptr().add(at).cast());
            Avx512(_mm512_permutexvar_epi64(s.twiddle, loaded))
        }
    }
}

/// AVX2's groups of 8 values a0..a7 in (v0, v1): the span-2 stage pairs (a0, a2), (a1, a3),
/// (a4, a6), (a5, a7), its halves swapped across 128-bit lanes (x = a0 a1 a4 a5); the span-1
/// stage pairs neighbours, unpacked within them (x = a0 a4 a2 a6, so its twiddles come as
/// t0 t2 t1 t3).
impl Groups for Avx2 {
    const SPANS: &'static [usize] = &[2, 1];
    const SPANS_UP: &'static [usize] = &[1, 2];
    type Spread = usize;

    #[inline(always)]
    unsafe fn spread(span: usize) -> usize {
        span
    }
    #[inline(always)]
    unsafe fn split(span: usize, v: (Self, Self)) -> (Self, Self) {
        // SAFETY: see the impl.
        unsafe {
            if span == 2 {
                (
                    Avx2(_mm256_permute2x128_si256::<0x20>(v.0.0, v.1.0)),
                    Avx2(_mm256_permute2x128_si256::<0x31>(v.0.0, v.1.0)),
                )
            } else {
                (Avx2(_mm256_unpacklo_epi64(v.0.0, v.1.0)), Avx2(_mm256_unpackhi_epi64(v.0.0, v.1.0)))
            }
        }
    }
    #[inline(always)]
    unsafe fn merge(span: usize, x: Self, y: Self) -> (Self, Self) {
        // SAFETY: see the impl.
        unsafe {
            if span == 2 {
                (Avx2(_mm256_permute2x128_si256::<0x20>(x.0, y.0)), Avx2(_mm256_permute2x128_si256::<0x31>(x.0, y.0)))
            } else {
                (Avx2(_mm256_unpacklo_epi64(x.0, y.0)), Avx2(_mm256_unpackhi_epi64(x.0, y.0)))
            }
        }
    }
    #[inline(always)]
    unsafe fn twiddles(span: usize, table: &[u64], at: usize) -> Self {
        debug_assert!(at + 4 / span <= table.len());
        // SAFETY: the caller keeps at + 4/span within the table; the loads read only those.
        unsafe {
            let from = table.as_ptr().add(at);
            if span == 2 {
                // t0 t0 t1 t1
                Avx2(_mm256_permute4x64_epi64::<0b01_01_00_00>(_mm256_castsi128_si256(_mm_loadu_si128(from.cast()))))
            } else {
                // t0 t2 t1 t3
                Avx2(_mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_loadu_si256(from.cast())))
            }
        }
    }
}

/// The prime's multiples in lanes.
#[derive(Clone, Copy)]
struct Prime<L> {
    p: L,
    two_p: L,
    four_p: L,
}

impl<L: Lanes> Prime<L> {
    #[inline(always)]
    unsafe fn of(p: u64) -> Prime<L> {
        // SAFETY: as every `Lanes` method.
        unsafe { Prime { p: L::splat(p), two_p: L::splat(2 * p), four_p: L::splat(4 * p) } }
    }
}

/// A stage's butterfly on lanes `L` (a type, not a closure: closures are not compiled for the
/// instruction set of the function that defines them, so their intrinsics would not inline).
trait Butterfly<L: Lanes>: Copy {
    /// The butterfly on (x, y) with twiddle w and its Shoup constant ws.
    unsafe fn apply(self, x: L, y: L, w: L, ws: L) -> (L, L);
    /// What the last stage of a group does to a vector before it is stored.
    unsafe fn finish(self, v: L) -> L;
}

/// Cooley–Tukey butterfly: (x, y) in [0, 8p) → (u + w·y, u − w·y + 4p) in [0, 8p), with
/// u = x mod 4p and w·y in [0, 4p); finished by the full reduction to [0, p).
#[derive(Clone, Copy)]
struct Forward<L>(Prime<L>);

impl<L: Lanes> Butterfly<L> for Forward<L> {
    #[inline(always)]
    unsafe fn apply(self, x: L, y: L, w: L, ws: L) -> (L, L) {
        let k = self.0;
        // SAFETY: as every `Lanes` method.
        unsafe {
            let u = x.reduce_once(k.four_p);
            let v = mul_shoup_lazy(y, w, ws, k.p);
            (u.add(v), u.add(k.four_p).sub(v))
        }
    }
    #[inline(always)]
    unsafe fn finish(self, v: L) -> L {
        let k = self.0;
        // SAFETY: as every `Lanes` method.
        unsafe { v.reduce_once(k.four_p).reduce_once(k.two_p).reduce_once(k.p) }
    }
}

/// Gentleman–Sande butterfly: (x, y) in [0, 2p) → ((x + y) mod 2p, w·(x − y + 2p) mod 2p),
/// both in [0, 2p); nothing to finish.
#[derive(Clone, Copy)]
struct Inverse<L>(Prime<L>);

impl<L: Lanes> Butterfly<L> for Inverse<L> {
    #[inline(always)]
    unsafe fn apply(self, x: L, y: L, w: L, ws: L) -> (L, L) {
        let k = self.0;
        // SAFETY: as every `Lanes` method.
        unsafe {
            let s = x.add(y).reduce_once(k.two_p);
            let d = x.add(k.two_p).sub(y);
            (s, mul_shoup_lazy(d, w, ws, k.p).reduce_once(k.two_p))
        }
    }
    #[inline(always)]
    unsafe fn finish(self, v: L) -> L {
        v
    }
}

/// The broadcast-twiddle stages: blocks of 2t values, t ≥ `LEN`, each with twiddle `tw[block]`.
#[inline(always)]
unsafe fn wide_stage<L: Lanes>(a: &mut [u64], t: usize, tw: (&[u64], &[u64]), butterfly: impl Butterfly<L>) {
    for (block, (&w, &ws)) in a.chunks_exact_mut(2 * t).zip(tw.0.iter().zip(tw.1)) {
        let ptr = block.as_mut_ptr();
        // SAFETY: i + LEN ≤ t and t + i + LEN ≤ 2t = the block's length (t a multiple of LEN);
        // the lanes' set as every `Lanes` method.
        unsafe {
            let (w, ws) = (L::splat(w), L::splat(ws));
            for i in (0..t).step_by(L::LEN) {
                let (x, y) = butterfly.apply(L::load(ptr.add(i)), L::load(ptr.add(t + i)), w, ws);
                x.store(ptr.add(i));
                y.store(ptr.add(t + i));
            }
        }
    }
}

/// The first stage of a forward transform whose input is a polynomial of support s = 2t
/// (t ≥ `LEN`) in `a[..s]`: every block of s values would hold a copy of it (the stages before
/// only copy), so each block's butterflies read the head and write the block, the head's own
/// block last. Whatever `a` held beyond s is overwritten.
#[inline(always)]
unsafe fn head_stage<L: Lanes>(a: &mut [u64], t: usize, tw: (&[u64], &[u64]), butterfly: impl Butterfly<L>) {
    let blocks = a.len() / (2 * t);
    let ptr = a.as_mut_ptr();
    for j in (0..blocks).rev() {
        // SAFETY: i + LEN ≤ t and the block j·2t + 2t ≤ a.len(); block 0 (the head) is written
        // last, after every other block has read it; the lanes' set as every `Lanes` method.
        unsafe {
            let (w, ws) = (L::splat(tw.0[j]), L::splat(tw.1[j]));
            for i in (0..t).step_by(L::LEN) {
                let (x, y) = butterfly.apply(L::load(ptr.add(i)), L::load(ptr.add(t + i)), w, ws);
                x.store(ptr.add(j * 2 * t + i));
                y.store(ptr.add(j * 2 * t + t + i));
            }
        }
    }
}

/// The stages of spans `spans` (below a vector) on every group of two vectors of `a`, the
/// window's groups numbered from `first_group`, with the twiddle table `tw` of the whole
/// transform of degree n; each vector [finished](Butterfly::finish) before it is stored.
#[inline(always)]
unsafe fn group_stages<L: Groups>(
    a: &mut [u64],
    n: usize,
    first_group: usize,
    spans: &[usize],
    tw: (&[u64], &[u64]),
    butterfly: impl Butterfly<L>,
) {
    // SAFETY (the block): the lanes' set as every `Lanes` method.
    let mut stages = [(1, unsafe { L::spread(1) }); 3];
    for (stage, &span) in stages.iter_mut().zip(spans) {
        // SAFETY: as above.
        *stage = (span, unsafe { L::spread(span) });
    }
    let stages = &stages[..spans.len().min(3)];
    for (g, group) in a.chunks_exact_mut(2 * L::LEN).enumerate() {
        let g = first_group + g;
        let ptr = group.as_mut_ptr();
        // SAFETY: a group is two vectors; the twiddles: the stage of span `span` has
        // m = n/(2·span) blocks and the group holds LEN/span of them, so m + (g + 1)·count ≤ 2m.
        unsafe {
            let mut v = (L::load(ptr), L::load(ptr.add(L::LEN)));
            for &(span, spread) in stages {
                let (m, count) = (n / (2 * span), L::LEN / span);
                let at = m + g * count;
                let (w, ws) = (L::twiddles(spread, tw.0, at), L::twiddles(spread, tw.1, at));
                let (x, y) = L::split(spread, v);
                let (x, y) = butterfly.apply(x, y, w, ws);
                v = L::merge(spread, x, y);
            }
            butterfly.finish(v.0).store(ptr);
            butterfly.finish(v.1).store(ptr.add(L::LEN));
        }
    }
}

/// Slots `first..first + a.len()` (a window the kernels [take](takes), whole blocks of s) of the
/// forward transform of the polynomial of support s (a power of two) in `a[..s]`, whatever
/// follows it: the stages of spans s/2 down to 1, then the reduction to [0, p).
#[inline(always)]
unsafe fn forward<L: Groups>(table: &NttTable, a: &mut [u64], s: usize, first: usize) {
    let n = table.n;
    debug_assert!(takes::<L>(table, first, a.len()) && s.is_power_of_two() && a.len().is_multiple_of(s));
    // SAFETY (the blocks): the lanes' set as every `Lanes` method.
    let k = unsafe { Prime::<L>::of(table.modulus.value()) };
    let bf = Forward(k);
    // the stage of span t has m = n/2t blocks, the window's from first/2t on
    let twiddles = |t: usize| {
        let (m, from) = (n / (2 * t), n / (2 * t) + first / (2 * t));
        (&table.psi[from..2 * m], &table.psi_shoup[from..2 * m])
    };
    let mut t = s / 2;
    // SAFETY: the lanes' set as above; the window is whole groups (`takes`), s a power of two.
    unsafe {
        if t >= L::LEN {
            head_stage(a, t, twiddles(t), bf);
            t /= 2;
        } else {
            NttTable::replicate(a, s);
        }
        while t >= L::LEN {
            wide_stage(a, t, twiddles(t), bf);
            t /= 2;
        }
        // the spans below a vector where the support reaches them (t is the first span left)
        let spans = &L::SPANS[L::SPANS.iter().take_while(|&&span| span > t).count()..];
        group_stages(a, n, first / (2 * L::LEN), spans, (&table.psi, &table.psi_shoup), bf);
    }
}

/// Inverse transform of `a` (a table the kernels [take](takes), bit-reversed input in [0, p)):
/// the spans below a vector per group, the wider stages, and the last stage with the scaling
/// by N^-1.
#[inline(always)]
unsafe fn inverse<L: Groups>(table: &NttTable, a: &mut [u64]) {
    let n = table.n;
    debug_assert!(takes::<L>(table, 0, n) && a.len() == n);
    // SAFETY (the blocks): the lanes' set as every `Lanes` method; the loads and stores of the
    // last stage: i + LEN ≤ n/2 and n/2 + i + LEN ≤ n.
    let k = unsafe { Prime::<L>::of(table.modulus.value()) };
    let bf = Inverse(k);
    unsafe {
        group_stages(a, n, 0, L::SPANS_UP, (&table.psi_inv, &table.psi_inv_shoup), bf);
        let (mut t, mut m) = (L::LEN, n / (2 * L::LEN));
        while m > 1 {
            wide_stage(a, t, (&table.psi_inv[m..2 * m], &table.psi_inv_shoup[m..2 * m]), bf);
            t *= 2;
            m /= 2;
        }
        // the last stage with N^-1 folded in: x' = (u + v)/N, y' = (u − v)·ψ^-1/N, reduced to [0, p)
        let (n_inv, n_inv_s) = (L::splat(table.n_inv), L::splat(table.n_inv_shoup));
        let (last, last_s) = (L::splat(table.last_inv), L::splat(table.last_inv_shoup));
        let ptr = a.as_mut_ptr();
        for i in (0..n / 2).step_by(L::LEN) {
            let (u, v) = (L::load(ptr.add(i)), L::load(ptr.add(n / 2 + i)));
            let x = mul_shoup_lazy(u.add(v), n_inv, n_inv_s, k.p);
            let y = mul_shoup_lazy(u.add(k.two_p).sub(v), last, last_s, k.p);
            x.reduce_once(k.two_p).reduce_once(k.p).store(ptr.add(i));
            y.reduce_once(k.two_p).reduce_once(k.p).store(ptr.add(n / 2 + i));
        }
    }
}

/// [`forward`] on AVX2.
#[target_feature(enable = "avx2,bmi2")]
pub(super) fn forward_avx2(table: &NttTable, a: &mut [u64], s: usize, first: usize) {
    // SAFETY: this function is compiled for AVX2, which its callers check at run time.
    unsafe { forward::<Avx2>(table, a, s, first) }
}

/// [`forward`] on AVX-512.
#[target_feature(enable = "avx512f,avx512dq")]
pub(super) fn forward_avx512(table: &NttTable, a: &mut [u64], s: usize, first: usize) {
    // SAFETY: this function is compiled for AVX-512, which its callers check at run time.
    unsafe { forward::<Avx512>(table, a, s, first) }
}

/// [`inverse`] on AVX2.
#[target_feature(enable = "avx2,bmi2")]
pub(super) fn inverse_avx2(table: &NttTable, a: &mut [u64]) {
    // SAFETY: as in `forward_avx2`.
    unsafe { inverse::<Avx2>(table, a) }
}

/// [`inverse`] on AVX-512.
#[target_feature(enable = "avx512f,avx512dq")]
pub(super) fn inverse_avx512(table: &NttTable, a: &mut [u64]) {
    // SAFETY: as in `forward_avx512`.
    unsafe { inverse::<Avx512>(table, a) }
}
