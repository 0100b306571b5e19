//! The negacyclic number-theoretic transform over Z_p\[X\]/(X^N + 1): precomputed tables and the
//! per-limb kernels every backend shares (the CUDA kernels will mirror these loops).
//!
//! Forward: Cooley–Tukey on natural-order input with the powers of a primitive 2N-th root ψ in
//! bit-reversed order, so the negacyclic twist is folded into the twiddles; output in bit-reversed
//! order. Inverse: Gentleman–Sande with ψ^-1, then a scaling by N^-1. Harvey's lazy reduction keeps
//! values in [0, 4p) inside the loops (p < 2^62) and reduces once at the end; every twiddle
//! product is a Shoup product (no division).
//!
//! Pointwise products of transformed polynomials are negacyclic convolutions of the originals.

use crate::ring::RingError;
use crate::ring::modp::Modulus;

#[cfg(target_arch = "x86_64")]
mod vector;
#[cfg(target_arch = "x86_64")]
use super::simd;

/// Twiddle tables for one (N, p).
#[derive(Debug, Clone)]
pub struct NttTable {
    n: usize,
    modulus: Modulus,
    /// ψ^bitrev(k), and their Shoup constants.
    psi: Vec<u64>,
    psi_shoup: Vec<u64>,
    /// ψ^-bitrev(k), and their Shoup constants.
    psi_inv: Vec<u64>,
    psi_inv_shoup: Vec<u64>,
    n_inv: u64,
    n_inv_shoup: u64,
    /// ψ^-bitrev(1)·N^-1 (the last inverse stage's twiddle with the scaling folded in) and its
    /// Shoup constant.
    last_inv: u64,
    last_inv_shoup: u64,
}

/// An [`NttTable`]'s values with their Shoup constants, for the kernels of `kernels/ntt.cu`.
#[cfg(any(test, feature = "cuda"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Twiddles<'a> {
    /// ψ^bitrev(k).
    pub psi: &'a [u64],
    pub psi_shoup: &'a [u64],
    /// ψ^-bitrev(k).
    pub psi_inv: &'a [u64],
    pub psi_inv_shoup: &'a [u64],
    /// N^-1 and its Shoup constant.
    pub n_inv: (u64, u64),
    /// ψ^-bitrev(1)·N^-1 and its Shoup constant.
    pub last_inv: (u64, u64),
}

fn bit_reverse(x: usize, bits: u32) -> usize {
    if bits == 0 { 0 } else { x.reverse_bits() >> (usize::BITS - bits) }
}

impl NttTable {
    /// Tables for degree `n` (a power of two, 2..=2^17) and the prime `modulus` ≡ 1 (mod 2n).
    pub fn new(n: usize, modulus: Modulus) -> Result<NttTable, RingError> {
        let p = modulus.value();
        if !n.is_power_of_two() || !(2..=1 << 17).contains(&n) || !(p - 1).is_multiple_of(2 * n as u64) {
            return Err(RingError::NoPrimes { bits: modulus.bits(), n, count: 1 });
        }
        let psi_root = modulus.primitive_root(2 * n as u64).ok_or(RingError::BadModulus(p))?;
        let psi_root_inv = modulus.inv(psi_root).ok_or(RingError::BadModulus(p))?;
        let log_n = n.trailing_zeros();
        let mut psi = vec![0u64; n];
        let mut psi_inv = vec![0u64; n];
        let (mut pw, mut pw_inv) = (1u64, 1u64);
        for k in 0..n {
            let r = bit_reverse(k, log_n);
            psi[r] = pw;
            psi_inv[r] = pw_inv;
            pw = modulus.mul(pw, psi_root);
            pw_inv = modulus.mul(pw_inv, psi_root_inv);
        }
        let psi_shoup = psi.iter().map(|&w| modulus.shoup(w)).collect();
        let psi_inv_shoup = psi_inv.iter().map(|&w| modulus.shoup(w)).collect();
        let n_inv = modulus.inv(n as u64).ok_or(RingError::BadModulus(p))?;
        let last_inv = modulus.mul(psi_inv[1], n_inv);
        Ok(NttTable {
            n,
            modulus,
            psi,
            psi_shoup,
            psi_inv,
            psi_inv_shoup,
            n_inv,
            n_inv_shoup: modulus.shoup(n_inv),
            last_inv,
            last_inv_shoup: modulus.shoup(last_inv),
        })
    }

    /// Degree N.
    pub fn degree(&self) -> usize {
        self.n
    }

    /// The prime.
    pub fn modulus(&self) -> &Modulus {
        &self.modulus
    }

    /// The tables as the kernels take them (the GPU backend uploads them once per (N, p)).
    #[cfg(any(test, feature = "cuda"))]
    pub(crate) fn twiddles(&self) -> Twiddles<'_> {
        Twiddles {
            psi: &self.psi,
            psi_shoup: &self.psi_shoup,
            psi_inv: &self.psi_inv,
            psi_inv_shoup: &self.psi_inv_shoup,
            n_inv: (self.n_inv, self.n_inv_shoup),
            last_inv: (self.last_inv, self.last_inv_shoup),
        }
    }

    /// In-place forward transform of one polynomial with coefficients in [0, p).
    pub fn forward(&self, a: &mut [u64]) {
        self.forward_sparse(a, self.n)
    }

    /// Forward transform of the polynomial `a[..support]` (a's later values are ignored and
    /// overwritten): the first log2(N/s) stages, s = support rounded up to a power of two, only
    /// copy each value to its partner (x ± w·0), so they become one replication of the first s
    /// coefficients.
    pub fn forward_sparse(&self, a: &mut [u64], support: usize) {
        assert_eq!(a.len(), self.n, "NTT input has the wrong degree");
        let s = support.clamp(1, self.n).next_power_of_two();
        a[support.min(self.n)..s].fill(0);
        self.forward_window(a, s, 0)
    }

    /// Slots `first..first + out.len()` of the forward transform of the polynomial `head`: past
    /// the first log2(N/s) stages (copies, s = head.len() rounded up to a power of two) every
    /// block of s slots is transformed on its own from the s coefficients, so a window of whole
    /// blocks is computed without the rest of the transform. `first` and `out.len()` must be
    /// multiples of s.
    pub fn forward_sparse_slots(&self, head: &[u64], first: usize, out: &mut [u64]) {
        let s = head.len().clamp(1, self.n).next_power_of_two();
        assert!(
            head.len() <= self.n
                && first.is_multiple_of(s)
                && out.len().is_multiple_of(s)
                && first + out.len() <= self.n,
            "NTT window {first}..{} of a polynomial of {} coefficients is not whole blocks of {s} slots within {}",
            first + out.len(),
            head.len(),
            self.n
        );
        out[..head.len()].copy_from_slice(head);
        out[head.len()..s].fill(0);
        self.forward_window(out, s, first)
    }

    /// Slots `first..first + a.len()` of the forward transform of the polynomial of support s
    /// in `a[..s]` (whole blocks of s; later values of `a` ignored and overwritten).
    fn forward_window(&self, a: &mut [u64], s: usize, first: usize) {
        #[cfg(target_arch = "x86_64")]
        return self.forward_at(simd::level(), a, s, first);
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self::replicate(a, s);
            self.forward_kernel(a, s, first)
        }
    }

    /// Copies the first s values over every later block of s: what the first log2(N/s) stages
    /// of a transform of a polynomial of support s do.
    fn replicate(a: &mut [u64], s: usize) {
        let (head, rest) = a.split_at_mut(s);
        for block in rest.chunks_exact_mut(s) {
            block.copy_from_slice(head);
        }
    }

    /// [`NttTable::forward_window`] at instruction-set `level`, which the CPU must support (a
    /// level from [`simd::level`] or [`simd::available`]).
    #[cfg(target_arch = "x86_64")]
    fn forward_at(&self, level: simd::Level, a: &mut [u64], s: usize, first: usize) {
        use simd::{Avx2, Avx512, Level};
        match level {
            // SAFETY: the CPU supports the features these variants are compiled for (checked at
            // run time by `simd::level` / `simd::available`).
            Level::Avx512 if vector::takes::<Avx512>(self, first, a.len()) => unsafe {
                vector::forward_avx512(self, a, s, first)
            },
            // SAFETY: as above.
            Level::Avx2 if vector::takes::<Avx2>(self, first, a.len()) => unsafe {
                vector::forward_avx2(self, a, s, first)
            },
            _ => {
                Self::replicate(a, s);
                match level {
                    // SAFETY: as above.
                    Level::Avx512 => unsafe { self.forward_kernel_avx512(a, s, first) },
                    // SAFETY: as above.
                    Level::Avx2 => unsafe { self.forward_kernel_avx2(a, s, first) },
                    Level::Baseline => self.forward_kernel(a, s, first),
                }
            }
        }
    }

    /// The inverse transform at instruction-set `level` (as [`NttTable::forward_at`]).
    #[cfg(target_arch = "x86_64")]
    fn inverse_at(&self, level: simd::Level, a: &mut [u64]) {
        use simd::{Avx2, Avx512, Level};
        match level {
            // SAFETY: as in `forward_at`.
            Level::Avx512 if vector::takes::<Avx512>(self, 0, self.n) => unsafe { vector::inverse_avx512(self, a) },
            // SAFETY: as above.
            Level::Avx2 if vector::takes::<Avx2>(self, 0, self.n) => unsafe { vector::inverse_avx2(self, a) },
            // SAFETY: as above.
            Level::Avx512 => unsafe { self.inverse_kernel_avx512(a) },
            // SAFETY: as above.
            Level::Avx2 => unsafe { self.inverse_kernel_avx2(a) },
            Level::Baseline => self.inverse_kernel(a),
        }
    }

    /// In-place inverse transform (input in bit-reversed order, values in [0, p)).
    pub fn inverse(&self, a: &mut [u64]) {
        assert_eq!(a.len(), self.n, "NTT input has the wrong degree");
        #[cfg(target_arch = "x86_64")]
        return self.inverse_at(simd::level(), a);
        #[cfg(not(target_arch = "x86_64"))]
        self.inverse_kernel(a)
    }

    /// The portable kernel compiled for AVX-512 (for the tables and windows the explicit
    /// kernels do not take).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,bmi2")]
    fn forward_kernel_avx512(&self, a: &mut [u64], s: usize, first: usize) {
        self.forward_kernel(a, s, first)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi2")]
    fn forward_kernel_avx2(&self, a: &mut [u64], s: usize, first: usize) {
        self.forward_kernel(a, s, first)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,bmi2")]
    fn inverse_kernel_avx512(&self, a: &mut [u64]) {
        self.inverse_kernel(a)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi2")]
    fn inverse_kernel_avx2(&self, a: &mut [u64]) {
        self.inverse_kernel(a)
    }

    // Conditional subtractions are written `x.min(x - c)` (wrapping): branch-free, and they
    // vectorize.

    /// The forward butterflies from the stage of half-size s/2 on (s = N: all of them) on the
    /// slots `first..first + a.len()` (whole blocks of s); inlined into each instruction-set
    /// variant, which the compiler vectorizes for that set.
    #[inline(always)]
    fn forward_kernel(&self, a: &mut [u64], s: usize, first: usize) {
        let m_ = self.modulus;
        let p = m_.value();
        let two_p = 2 * p;
        let mut t = s;
        let mut m = self.n / s;
        while m < self.n {
            t >>= 1;
            // the stage's m blocks of 2t slots; the window starts at block first/2t
            let from = m + first / (2 * t);
            let tw = self.psi[from..2 * m].iter().zip(&self.psi_shoup[from..2 * m]);
            for (block, (&w, &ws)) in a.chunks_exact_mut(2 * t).zip(tw) {
                let (lo, hi) = block.split_at_mut(t);
                for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
                    // x, y in [0, 4p) → outputs in [0, 4p)
                    let u = (*x).min(x.wrapping_sub(two_p));
                    let v = m_.mul_shoup_lazy(*y, w, ws);
                    *x = u + v;
                    *y = u + two_p - v;
                }
            }
            m <<= 1;
        }
        for x in a.iter_mut() {
            let v = (*x).min(x.wrapping_sub(two_p));
            *x = v.min(v.wrapping_sub(p));
        }
    }

    /// The inverse butterflies and scaling; inlined like [`Self::forward_kernel`].
    #[inline(always)]
    fn inverse_kernel(&self, a: &mut [u64]) {
        let m_ = self.modulus;
        let two_p = 2 * m_.value();
        let mut t = 1;
        let mut m = self.n >> 1;
        while m > 1 {
            let tw = self.psi_inv[m..2 * m].iter().zip(&self.psi_inv_shoup[m..2 * m]);
            for (block, (&w, &ws)) in a.chunks_exact_mut(2 * t).zip(tw) {
                let (lo, hi) = block.split_at_mut(t);
                for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
                    // x, y in [0, 2p) → outputs in [0, 2p)
                    let (u, v) = (*x, *y);
                    let s = u + v;
                    *x = s.min(s.wrapping_sub(two_p));
                    *y = m_.mul_shoup_lazy(u + two_p - v, w, ws);
                }
            }
            t <<= 1;
            m >>= 1;
        }
        // the last stage with the scaling by N^-1 folded in: x' = (u + v)/N, y' = (u − v)·ψ^-1/N
        let (lo, hi) = a.split_at_mut(self.n / 2);
        for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
            let (u, v) = (*x, *y);
            *x = m_.mul_shoup(u + v, self.n_inv, self.n_inv_shoup);
            *y = m_.mul_shoup(u + two_p - v, self.last_inv, self.last_inv_shoup);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::modp::ntt_primes;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn table(bits: u32, n: usize) -> NttTable {
        let p = ntt_primes(bits, n, 1).unwrap_or_default()[0];
        NttTable::new(n, Modulus::new(p).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"))
    }

    fn naive_negacyclic(a: &[u64], b: &[u64], m: &Modulus) -> Vec<u64> {
        let n = a.len();
        let mut c = vec![0u64; n];
        for (i, &ai) in a.iter().enumerate() {
            for (j, &bj) in b.iter().enumerate() {
                let prod = m.mul(ai, bj);
                let k = i + j;
                if k < n { c[k] = m.add(c[k], prod) } else { c[k - n] = m.sub(c[k - n], prod) }
            }
        }
        c
    }

    fn random_poly(n: usize, p: u64, rng: &mut StdRng) -> Vec<u64> {
        (0..n).map(|_| rng.random_range(0..p)).collect()
    }

    #[test]
    /// A sparse transform reads only the support: what follows it may hold anything.
    fn sparse_inputs_transform_like_dense_ones() {
        let t = table(55, 1024);
        let mut rng = StdRng::seed_from_u64(4);
        for support in [0, 1, 3, 8, 16, 17, 64, 100, 512, 1024] {
            let mut dense = vec![0u64; 1024];
            dense[..support].iter_mut().for_each(|v| *v = rng.random_range(0..t.modulus().value()));
            let mut a = dense.clone();
            a[support..].iter_mut().for_each(|v| *v = rng.random());
            let head = dense[..support].to_vec();
            t.forward(&mut dense);
            t.forward_sparse(&mut a, support);
            assert_eq!(a, dense, "support {support}");
            // any window of whole blocks, alone
            let s = support.max(1).next_power_of_two();
            for window in [s, s.max(128)] {
                for first in (0..1024).step_by(window).step_by(3) {
                    let mut out = vec![u64::MAX; window];
                    t.forward_sparse_slots(&head, first, &mut out);
                    assert_eq!(out, dense[first..first + window], "support {support}, slots {first}..");
                }
            }
        }
    }

    #[test]
    fn forward_then_inverse_is_identity() {
        let mut rng = StdRng::seed_from_u64(1);
        for (bits, n) in [(60, 8192), (49, 4096), (36, 4096), (61, 16), (30, 2)] {
            let t = table(bits, n);
            let a = random_poly(n, t.modulus().value(), &mut rng);
            let mut b = a.clone();
            t.forward(&mut b);
            assert_ne!(a, b);
            t.inverse(&mut b);
            assert_eq!(a, b, "N={n}, {bits}-bit prime");
        }
    }

    #[test]
    fn pointwise_product_is_negacyclic_convolution() {
        let mut rng = StdRng::seed_from_u64(2);
        for (bits, n) in [(60, 1024), (49, 2048), (61, 8), (36, 4096)] {
            let t = table(bits, n);
            let m = *t.modulus();
            let (a, b) = (random_poly(n, m.value(), &mut rng), random_poly(n, m.value(), &mut rng));
            let expect = naive_negacyclic(&a, &b, &m);
            let (mut fa, mut fb) = (a.clone(), b.clone());
            t.forward(&mut fa);
            t.forward(&mut fb);
            let mut c: Vec<u64> = fa.iter().zip(&fb).map(|(x, y)| m.mul(*x, *y)).collect();
            t.inverse(&mut c);
            assert_eq!(c, expect, "N={n}, {bits}-bit prime");
        }
    }

    /// Every instruction set this CPU has gives the portable kernel's results, bit for bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_simd_level_computes_what_the_portable_kernel_does() {
        let mut rng = StdRng::seed_from_u64(3);
        let levels = simd::available();
        println!("SIMD levels tested: {levels:?}");
        for (bits, n) in [(60, 8192), (58, 8192), (55, 4096), (61, 64), (36, 16), (40, 8)] {
            let t = table(bits, n);
            for support in [n, n / 2, 64, 16, 8, 4, 2, 1].into_iter().filter(|&s| s <= n) {
                // a polynomial of that support, anything after it
                let mut a = random_poly(support, t.modulus().value(), &mut rng);
                a.extend((support..n).map(|_| rng.random::<u64>()));
                let mut want = a.clone();
                t.forward_at(simd::Level::Baseline, &mut want, support, 0);
                for &level in &levels {
                    let mut got = a.clone();
                    t.forward_at(level, &mut got, support, 0);
                    assert_eq!(got, want, "forward at {level:?}, N={n}, support {support}");
                }
                // and every window of whole blocks of it, at every level
                for window in [support, 16, 64].into_iter().filter(|&w| w >= support && w <= n) {
                    for first in (0..n).step_by(window).filter(|f| f % (n / 4).max(window) < 2 * window) {
                        for &level in &levels {
                            let mut got = a.clone();
                            got.truncate(window);
                            t.forward_at(level, &mut got, support, first);
                            assert_eq!(
                                got,
                                want[first..first + window],
                                "{level:?}, N={n}, support {support}, slots {first}.."
                            );
                        }
                    }
                }
                if support == n {
                    for &level in &levels {
                        let mut got = want.clone();
                        t.inverse_at(level, &mut got);
                        assert_eq!(got, a, "inverse at {level:?}, N={n}");
                    }
                }
            }
        }
    }

    #[test]
    fn x_times_x_to_the_n_minus_1_wraps_to_minus_one() {
        let t = table(50, 64);
        let m = *t.modulus();
        let mut x = vec![0u64; 64];
        x[1] = 1;
        let mut xn1 = vec![0u64; 64];
        xn1[63] = 1;
        t.forward(&mut x);
        t.forward(&mut xn1);
        let mut c: Vec<u64> = x.iter().zip(&xn1).map(|(a, b)| m.mul(*a, *b)).collect();
        t.inverse(&mut c);
        let mut expect = vec![0u64; 64];
        expect[0] = m.value() - 1;
        assert_eq!(c, expect);
    }

    #[test]
    fn rejects_mismatched_degree_and_prime() {
        let p = ntt_primes(40, 1024, 1).unwrap_or_default()[0];
        let m = Modulus::new(p).unwrap_or_else(|e| panic!("{e}"));
        assert!(NttTable::new(1000, m).is_err());
        // p ≡ 1 mod 2048 is not guaranteed ≡ 1 mod 2^18
        assert!(NttTable::new(1 << 17, m).is_err() || (p - 1).is_multiple_of(1 << 18));
    }
}
