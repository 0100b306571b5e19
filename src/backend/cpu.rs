//! The CPU backend: rayon across chunks, AES-NI through `cryprot-core`.

use cryprot_core::aes_hash::FIXED_KEY_HASH;

use rayon::prelude::*;

use super::{Backend, BackendResult, Block, Buffer, Held, NttTable, Prepared, Tweaks, Workers};
use crate::ring::modp::Modulus;

/// Elements per parallel task; large enough to amortize scheduling, small enough to balance.
const CHUNK: usize = 1 << 14;

/// Values below which a call from outside any pool runs on the calling thread: a hand-off to the
/// backend's own pool costs tens of microseconds, about one N = 8192 transform.
const HAND_OFF: usize = 1 << 16;

/// Slots per block of the batched multiply-accumulate: a task's blocks of every input and
/// weight (2 KiB each) stay in L2 while the batch and the outputs pass over them, and the exact
/// sums of one block (6 KiB) in L1.
const MAC_BLOCK: usize = 256;

/// The CPU implementation of [`Backend`]. A call from a rayon worker (a session's
/// [`Workers`] inside [`Workers::compute`]) runs on that worker's pool, so per-ciphertext
/// pipelines and the operations inside them share one set of threads; a call from anywhere else
/// (async code, a test) runs on the backend's own pool, never on the global pool, where the OT
/// library parks workers while they wait for the network.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    own: Workers,
}

impl CpuBackend {
    /// A backend with `threads` threads of its own (0: one per core).
    pub fn new(threads: usize) -> Result<CpuBackend, rayon::ThreadPoolBuildError> {
        Ok(CpuBackend { own: Workers::new(threads, "secmoe-cpu")? })
    }

    /// Number of threads of its own.
    pub fn threads(&self) -> usize {
        self.own.threads()
    }

    /// Runs `f` on the caller's pool when it is a rayon worker, else on the backend's own.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if rayon::current_thread_index().is_some() { f() } else { self.own.pool.install(f) }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn hash_blocks(&self, input: &[Block], tweaks: Tweaks<'_>, out: &mut [Block]) -> BackendResult<()> {
        super::check_hash(input, tweaks, out)?;
        let run = |c: usize, o: &mut [Block], i: &[Block]| {
            o.copy_from_slice(i);
            FIXED_KEY_HASH.tccr_hash_slice_mut(o, |k| Block::from([tweaks.get(c * CHUNK + k), 0]));
        };
        if input.len() <= CHUNK {
            run(0, out, input);
        } else {
            self.run(|| {
                out.par_chunks_mut(CHUNK).zip(input.par_chunks(CHUNK)).enumerate().for_each(|(c, (o, i))| run(c, o, i))
            });
        }
        Ok(())
    }

    fn ntt_forward_sparse(&self, tables: &[NttTable], polys: &mut [u64], support: usize) -> BackendResult<()> {
        let (n, per_limb) = super::check_ntt("ntt_forward", tables, polys)?;
        self.per_run(n, polys, |r, a| tables[r / per_limb].forward_sparse(a, support));
        Ok(())
    }

    fn ntt_inverse(&self, tables: &[NttTable], polys: &mut [u64]) -> BackendResult<()> {
        let (n, per_limb) = super::check_ntt("ntt_inverse", tables, polys)?;
        self.per_run(n, polys, |r, a| tables[r / per_limb].inverse(a));
        Ok(())
    }

    fn mul_acc(
        &self,
        moduli: &[Modulus],
        n: usize,
        batch: usize,
        x: &[u64],
        w: &[u64],
        prepared: Prepared<'_>,
        out: &mut [u64],
    ) -> BackendResult<()> {
        let (constants, of) = prepared.constants(x, w);
        let shape = super::check_mul_acc(moduli, n, batch, x.len(), w.len(), constants.len(), of, out.len())?;
        self.mac_blocked(moduli, n, batch, shape, x, w, false, out);
        Ok(())
    }

    fn hold(&self, values: Vec<u64>) -> BackendResult<Buffer> {
        Ok(Buffer(Held::Host(values)))
    }

    fn mul_acc_held(
        &self,
        moduli: &[Modulus],
        n: usize,
        batch: usize,
        x: &[u64],
        w: &Buffer,
        w_shoup: &Buffer,
        out: &mut [u64],
    ) -> BackendResult<()> {
        match (&w.0, &w_shoup.0) {
            (Held::Host(w), Held::Host(c)) => {
                let shape = super::check_mul_acc(moduli, n, batch, x.len(), w.len(), c.len(), w.len(), out.len())?;
                self.mac_blocked(moduli, n, batch, shape, x, w, true, out);
                Ok(())
            }
            #[allow(unreachable_patterns)] // device buffers exist only with the CUDA backend
            _ => Err(super::foreign("cpu", if matches!(w.0, Held::Host(_)) { w_shoup } else { w })),
        }
    }

    fn base_convert(
        &self,
        moduli: &[Modulus],
        n: usize,
        x: &[u64],
        consts: &[(u64, u64)],
        out: &mut [u64],
    ) -> BackendResult<()> {
        let outputs = moduli.len();
        super::check_base_convert(moduli, n, x, consts, out)?;
        let one_output = |j: usize, acc: &mut [u64]| {
            let m = &moduli[j];
            acc.fill(0);
            for (i, row) in x.chunks_exact(n).enumerate() {
                let (c, shoup) = consts[i * outputs + j];
                accumulate_scalar(m, acc, row, c, shoup);
            }
            for a in acc.iter_mut() {
                *a = (*a).min(a.wrapping_sub(m.value()));
            }
        };
        if outputs == 1 || out.len() < CHUNK {
            out.chunks_exact_mut(n).enumerate().for_each(|(j, acc)| one_output(j, acc));
        } else {
            self.run(|| out.par_chunks_mut(n).enumerate().for_each(|(j, acc)| one_output(j, acc)));
        }
        Ok(())
    }

    fn automorphism(
        &self,
        moduli: &[Modulus],
        n: usize,
        element: usize,
        input: &[u64],
        out: &mut [u64],
    ) -> BackendResult<()> {
        let per_limb = super::check_automorphism(moduli, n, element, input, out)?;
        self.per_run(n, out, |r, dst| {
            automorphism_run(&input[r * n..][..n], dst, element, moduli[r / per_limb].value())
        });
        Ok(())
    }

    fn divide_by_prime(
        &self,
        moduli: &[Modulus],
        n: usize,
        low: &mut [u64],
        top: &[u64],
        p_top: &Modulus,
    ) -> BackendResult<()> {
        let polys = super::check_divide(moduli, n, low, top)?;
        let consts = super::divide_constants(moduli, p_top)?;
        self.per_run(n, low, |r, row| {
            let (m, top) = (&moduli[r / polys], &top[(r % polys) * n..][..n]);
            let [p_mod, inv, inv_shoup] = consts[r / polys];
            for (x, &v) in row.iter_mut().zip(top) {
                *x = divide_element(m, *x, v, p_top.value(), p_mod, inv, inv_shoup);
            }
        });
        Ok(())
    }
}

impl CpuBackend {
    /// [`Backend::mul_acc`] on host memory with (I, J) = `shape`, its sums written to `out`, or
    /// added to it when `add` ([`Backend::mul_acc_held`]). Blocked over coefficients: a task
    /// takes one limb's block of [`MAC_BLOCK`] slots of every input, weight and output, so that
    /// each block of either operand is read from memory once for the whole call and stays in
    /// cache while the other passes over it (the weights across the batch, an input across the
    /// outputs).
    #[allow(clippy::too_many_arguments)]
    fn mac_blocked(
        &self,
        moduli: &[Modulus],
        n: usize,
        batch: usize,
        (inputs, outputs): (usize, usize),
        x: &[u64],
        w: &[u64],
        add: bool,
        out: &mut [u64],
    ) {
        let limbs = moduli.len();
        let block = MAC_BLOCK.min(n).max(1);
        let blocks = n.div_ceil(block);
        let total = out.len();
        // task (l, k): block k of output j of limb l for every batch entry b, in order (b, j)
        let mut tasks: Vec<Vec<&mut [u64]>> =
            (0..limbs * blocks).map(|_| Vec::with_capacity(batch * outputs)).collect();
        for (c, run) in out.chunks_exact_mut(n).enumerate() {
            let l = (c / outputs) % limbs;
            for (k, piece) in run.chunks_mut(block).enumerate() {
                tasks[l * blocks + k].push(piece);
            }
        }
        let task = |t: usize, pieces: Vec<&mut [u64]>| {
            let (l, at) = (t / blocks, (t % blocks) * block);
            let modulus = &moduli[l];
            let folds = Folds::new(modulus);
            for (bj, acc) in pieces.into_iter().enumerate() {
                let (b, j) = (bj / outputs, bj % outputs);
                let x = &x[((b * limbs + l) * inputs) * n + at..];
                let w = &w[((l * outputs + j) * inputs) * n + at..];
                mac_block(&folds, acc, add, inputs, n, x, w);
            }
        };
        let on_worker = rayon::current_thread_index().is_some();
        if tasks.len() == 1 || (!on_worker && total < HAND_OFF) {
            tasks.into_iter().enumerate().for_each(|(t, pieces)| task(t, pieces));
        } else {
            self.run(|| tasks.into_par_iter().enumerate().for_each(|(t, pieces)| task(t, pieces)));
        }
    }

    /// Runs `f(r, run)` on every run of `n` values of `data`: on the caller's pool from a
    /// worker; from elsewhere on the calling thread when the job is one run or below
    /// [`HAND_OFF`] values (waking the backend's own pool would cost more), else on that pool.
    fn per_run(&self, n: usize, data: &mut [u64], f: impl Fn(usize, &mut [u64]) + Sync) {
        let on_worker = rayon::current_thread_index().is_some();
        if data.len() <= n || (!on_worker && data.len() < HAND_OFF) {
            data.chunks_exact_mut(n.max(1)).enumerate().for_each(|(r, a)| f(r, a));
        } else {
            self.run(|| data.par_chunks_mut(n).enumerate().for_each(|(r, a)| f(r, a)));
        }
    }
}

/// σ_g on one run in coefficient form: X^i ↦ ±X^(i·g mod n), negated when i·g mod 2n ≥ n
/// (`sm_automorphism_element` of kernels/modarith.cuh, per source index).
fn automorphism_run(src: &[u64], dst: &mut [u64], element: usize, p: u64) {
    let n = src.len();
    let mask = 2 * n - 1;
    for (i, &v) in src.iter().enumerate() {
        let j = (i * element) & mask;
        if j < n {
            dst[j] = v;
        } else {
            dst[j - n] = if v == 0 { 0 } else { p - v };
        }
    }
}

/// One residue of [`Backend::divide_by_prime`]: (x − [v]) · p_top^-1 mod p, with v (a residue mod
/// p_top) centred (`sm_divide_element` of kernels/modarith.cuh).
#[inline(always)]
fn divide_element(m: &Modulus, x: u64, v: u64, p_top: u64, p_mod: u64, inv: u64, inv_shoup: u64) -> u64 {
    let v_mod = if v > p_top / 2 { m.sub(m.reduce(v), p_mod) } else { m.reduce(v) };
    m.mul_shoup(m.sub(x, v_mod), inv, inv_shoup)
}

/// `acc += y·c mod p` (lazily, acc stays in [0, 2p)) for a constant c < p with Shoup constant
/// `shoup` and any u64 values y, on the best instruction set of the machine.
fn accumulate_scalar(m: &Modulus, acc: &mut [u64], y: &[u64], c: u64, shoup: u64) {
    #[cfg(target_arch = "x86_64")]
    return accumulate_scalar_at(super::ntt::simd::level(), m, acc, y, c, shoup);
    #[cfg(not(target_arch = "x86_64"))]
    accumulate_scalar_kernel(m, acc, y, c, shoup)
}

/// [`accumulate_scalar`] at instruction-set `level`, which the CPU must support.
#[cfg(target_arch = "x86_64")]
fn accumulate_scalar_at(level: super::ntt::simd::Level, m: &Modulus, acc: &mut [u64], y: &[u64], c: u64, shoup: u64) {
    use super::ntt::simd::Level;
    match level {
        // SAFETY: the CPU supports the features this variant is compiled for (checked at run
        // time by `simd::level` / `simd::available`).
        Level::Avx512 => unsafe { accumulate_scalar_avx512(m, acc, y, c, shoup) },
        Level::Avx2 | Level::Baseline => accumulate_scalar_kernel(m, acc, y, c, shoup),
    }
}

/// AVX-512 version: 8 lanes at a time; the tail goes through the kernel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,bmi2")]
fn accumulate_scalar_avx512(m: &Modulus, acc: &mut [u64], y: &[u64], c: u64, shoup: u64) {
    use std::arch::x86_64::*;
    let len = acc.len().min(y.len());
    let body = len - len % 8;
    let p = _mm512_set1_epi64(m.value() as i64);
    let two_p = _mm512_set1_epi64(2 * m.value() as i64);
    let (cv, sv) = (_mm512_set1_epi64(c as i64), _mm512_set1_epi64(shoup as i64));
    for i in (0..body).step_by(8) {
        // SAFETY: i + 8 ≤ body ≤ the length of both slices; unaligned loads and stores.
        unsafe {
            let ya = _mm512_loadu_si512(y.as_ptr().add(i).cast());
            let aa = _mm512_loadu_si512(acc.as_ptr().add(i).cast());
            let q = super::ntt::mulhi_avx512(ya, sv);
            let r = _mm512_sub_epi64(_mm512_mullo_epi64(ya, cv), _mm512_mullo_epi64(q, p));
            let s = _mm512_add_epi64(aa, r);
            let s = _mm512_min_epu64(s, _mm512_sub_epi64(s, two_p));
            _mm512_storeu_si512(acc.as_mut_ptr().add(i).cast(), s);
        }
    }
    accumulate_scalar_kernel(m, &mut acc[body..len], &y[body..len], c, shoup)
}

/// The scalar multiply-accumulate loop (Shoup, lazy).
#[inline(always)]
fn accumulate_scalar_kernel(m: &Modulus, acc: &mut [u64], y: &[u64], c: u64, shoup: u64) {
    let (p, two_p) = (m.value(), 2 * m.value());
    for (a, &y) in acc.iter_mut().zip(y) {
        let q = ((y as u128 * shoup as u128) >> 64) as u64;
        let s = *a + y.wrapping_mul(c).wrapping_sub(q.wrapping_mul(p));
        *a = s.min(s.wrapping_sub(two_p));
    }
}

/// The constants that fold exact sums of products back to residues mod p: (c, Shoup constant
/// of c) for c = 1, 2^29, 2^58 and 2^64 mod p.
struct Folds {
    m: Modulus,
    one: (u64, u64),
    at29: (u64, u64),
    at58: (u64, u64),
    at64: (u64, u64),
}

impl Folds {
    fn new(m: &Modulus) -> Folds {
        let pair = |bits: u32| {
            let c = m.reduce_u128(1u128 << bits);
            (c, m.shoup(c))
        };
        Folds { m: *m, one: pair(0), at29: pair(29), at58: pair(58), at64: pair(64) }
    }

    /// Inputs per exact u128 sum: products of residues are below 2^(2k) for a k-bit prime.
    fn u128_terms(&self) -> usize {
        1 << (128 - 2 * self.m.bits()).min(20)
    }

    /// `s mod p` for any u128 s = hi·2^64 + lo.
    #[inline(always)]
    fn fold_u128(&self, s: u128) -> u64 {
        let m = &self.m;
        let (hi, lo) = ((s >> 64) as u64, s as u64);
        let r = m.mul_shoup_lazy(lo, self.one.0, self.one.1) + m.mul_shoup_lazy(hi, self.at64.0, self.at64.1);
        m.reduce(r)
    }
}

/// The multiply-accumulate of one block: `acc[c] = Σ_i x[i·n + c] · w[i·n + c] mod p` over
/// `inputs` inputs (plus acc's residues when `add`), for c < acc.len(). Products are summed
/// exactly and reduced once per run of inputs, so no product pays a modular reduction.
fn mac_block(folds: &Folds, acc: &mut [u64], add: bool, inputs: usize, n: usize, x: &[u64], w: &[u64]) {
    #[cfg(target_arch = "x86_64")]
    return mac_block_at(super::ntt::simd::level(), folds, acc, add, inputs, n, x, w);
    #[cfg(not(target_arch = "x86_64"))]
    mac_block_portable(folds, acc, add, inputs, n, x, w)
}

/// [`mac_block`] at instruction-set `level`, which the CPU must support.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn mac_block_at(
    level: super::ntt::simd::Level,
    folds: &Folds,
    acc: &mut [u64],
    add: bool,
    inputs: usize,
    n: usize,
    x: &[u64],
    w: &[u64],
) {
    use super::ntt::simd::Level;
    let len = acc.len();
    if inputs == 0 || len == 0 {
        if !add {
            acc.fill(0);
        }
        return;
    }
    let reach = (inputs - 1) * n + len;
    let (x, w) = (&x[..reach], &w[..reach]);
    match level {
        // SAFETY: the CPU supports the features this variant is compiled for (checked at run
        // time by `simd::level` / `simd::available`); x and w hold `reach` values (sliced above).
        Level::Avx512 if folds.m.bits() <= 58 => unsafe { mac_block_avx512(folds, acc, add, inputs, n, x, w) },
        _ => mac_block_portable(folds, acc, add, inputs, n, x, w),
    }
}

/// AVX-512 version for primes below 2^58: each residue splits into 29-bit halves (x = x1·2^29 +
/// x0), whose 32×32-bit products are summed exactly in three 64-bit lanes (low, middle, high,
/// kept in L1 for [`MAC_BLOCK`] slots) for up to 32 inputs before one fold into `acc`; the tail
/// of fewer than 8 slots through the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,bmi2")]
fn mac_block_avx512(folds: &Folds, acc: &mut [u64], add: bool, inputs: usize, n: usize, x: &[u64], w: &[u64]) {
    use std::arch::x86_64::*;
    /// Inputs per exact sum: a middle term x0·w1 + x1·w0 is below 2^59.
    const RUN: usize = 32;
    if acc.len() > MAC_BLOCK {
        for (k, part) in acc.chunks_mut(MAC_BLOCK).enumerate() {
            let at = k * MAC_BLOCK;
            mac_block_avx512(folds, part, add, inputs, n, &x[at..], &w[at..]);
        }
        return;
    }
    let len = acc.len();
    let body = len - len % 8;
    let (p, two_p, four_p) = (folds.m.value(), 2 * folds.m.value(), 4 * folds.m.value());
    let splat = |v: u64| _mm512_set1_epi64(v as i64);
    let (pv, two_pv, four_pv, low29) = (splat(p), splat(two_p), splat(four_p), splat((1 << 29) - 1));
    let pairs = [folds.one, folds.at29, folds.at58].map(|(c, s)| (splat(c), splat(s)));
    // y·c mod p in [0, 2p) for any u64 lanes y (Shoup)
    let times = |y: __m512i, (c, s): (__m512i, __m512i)| {
        let q = super::ntt::mulhi_avx512(y, s);
        _mm512_sub_epi64(_mm512_mullo_epi64(y, c), _mm512_mullo_epi64(q, pv))
    };
    let (mut lo, mut mid, mut hi) = ([0u64; MAC_BLOCK], [0u64; MAC_BLOCK], [0u64; MAC_BLOCK]);
    let mut sums = [&mut lo[..body], &mut mid[..body], &mut hi[..body]];
    if !add {
        acc[..body].fill(0);
    }
    let mut first = 0;
    while first < inputs {
        sums.iter_mut().for_each(|s| s.fill(0));
        let [lo, mid, hi] = &mut sums;
        for i in first..(first + RUN).min(inputs) {
            let (xi, wi) = (&x[i * n..][..body], &w[i * n..][..body]);
            for c in (0..body).step_by(8) {
                // SAFETY: c + 8 ≤ body, the length of xi, wi and the sums; unaligned loads and
                // stores.
                unsafe {
                    let load = |v: &[u64]| _mm512_loadu_si512(v.as_ptr().add(c).cast());
                    let store = |v: &mut [u64], s: __m512i| _mm512_storeu_si512(v.as_mut_ptr().add(c).cast(), s);
                    let (xv, wv) = (load(xi), load(wi));
                    let (x0, x1) = (_mm512_and_si512(xv, low29), _mm512_srli_epi64(xv, 29));
                    let (w0, w1) = (_mm512_and_si512(wv, low29), _mm512_srli_epi64(wv, 29));
                    store(lo, _mm512_add_epi64(load(lo), _mm512_mul_epu32(x0, w0)));
                    let m = _mm512_add_epi64(_mm512_mul_epu32(x0, w1), _mm512_mul_epu32(x1, w0));
                    store(mid, _mm512_add_epi64(load(mid), m));
                    store(hi, _mm512_add_epi64(load(hi), _mm512_mul_epu32(x1, w1)));
                }
            }
        }
        // acc + low + middle·2^29 + high·2^58 mod p, lazily in [0, 2p)
        for c in (0..body).step_by(8) {
            // SAFETY: c + 8 ≤ body, the length of acc's body and the sums.
            unsafe {
                let load = |v: &[u64]| _mm512_loadu_si512(v.as_ptr().add(c).cast());
                let r = _mm512_add_epi64(
                    _mm512_add_epi64(load(acc), times(load(lo), pairs[0])),
                    _mm512_add_epi64(times(load(mid), pairs[1]), times(load(hi), pairs[2])),
                );
                let r = _mm512_min_epu64(r, _mm512_sub_epi64(r, four_pv));
                let r = _mm512_min_epu64(r, _mm512_sub_epi64(r, two_pv));
                _mm512_storeu_si512(acc.as_mut_ptr().add(c).cast(), r);
            }
        }
        first += RUN;
    }
    for c in (0..body).step_by(8) {
        // SAFETY: as above.
        unsafe {
            let a = _mm512_loadu_si512(acc.as_ptr().add(c).cast());
            _mm512_storeu_si512(acc.as_mut_ptr().add(c).cast(), _mm512_min_epu64(a, _mm512_sub_epi64(a, pv)));
        }
    }
    if body < len {
        mac_block_portable(folds, &mut acc[body..], add, inputs, n, &x[body..], &w[body..]);
    }
}

/// The portable [`mac_block`]: exact u128 sums, folded once per run of inputs they hold.
fn mac_block_portable(folds: &Folds, acc: &mut [u64], add: bool, inputs: usize, n: usize, x: &[u64], w: &[u64]) {
    let (m, run) = (&folds.m, folds.u128_terms());
    for (c, a) in acc.iter_mut().enumerate() {
        let mut r = if add { *a } else { 0 };
        let mut first = 0;
        while first < inputs {
            let s =
                (first..(first + run).min(inputs)).map(|i| x[i * n + c] as u128 * w[i * n + c] as u128).sum::<u128>();
            r = m.add(r, folds.fold_u128(s));
            first += run;
        }
        *a = r;
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::ring::modp::ntt_primes;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    /// The multiply-accumulate at every instruction set this CPU has equals the plain sum of
    /// products, for input counts across the fold boundaries and lengths that leave a tail.
    /// Also the product by a constant.
    #[test]
    fn every_simd_level_accumulates_the_exact_sum_of_products() {
        let mut rng = StdRng::seed_from_u64(12);
        for bits in [55, 58, 60, 61, 36] {
            let m = Modulus::new(ntt_primes(bits, 64, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}"));
            let folds = Folds::new(&m);
            let (n, len) = (40, 37);
            for inputs in [0, 1, 31, 32, 33, 70] {
                let draw = |rng: &mut StdRng| -> Vec<u64> {
                    (0..inputs.max(1) * n).map(|_| rng.random_range(0..m.value())).collect()
                };
                let (x, w) = (draw(&mut rng), draw(&mut rng));
                let start: Vec<u64> = (0..len).map(|_| rng.random_range(0..m.value())).collect();
                for add in [false, true] {
                    let want: Vec<u64> = (0..len)
                        .map(|c| {
                            let base = if add { start[c] } else { 0 };
                            (0..inputs).fold(base, |a, i| m.add(a, m.mul(x[i * n + c], w[i * n + c])))
                        })
                        .collect();
                    for level in super::super::ntt::simd::available() {
                        let mut got = start.clone();
                        mac_block_at(level, &folds, &mut got, add, inputs, n, &x, &w);
                        assert_eq!(got, want, "{level:?}, {bits}-bit prime, {inputs} inputs, add {add}");
                    }
                }
            }
            let len = 1000 + 5;
            let draw = |rng: &mut StdRng| -> Vec<u64> { (0..len).map(|_| rng.random_range(0..m.value())).collect() };
            let v = draw(&mut rng);
            // acc may hold lazy values in [0, 2p)
            let acc: Vec<u64> = (0..len).map(|_| rng.random_range(0..2 * m.value())).collect();
            let consts: Vec<u64> = v.iter().map(|&x| m.shoup(x)).collect();
            // by a constant, with inputs that are any u64 (corrections, rounding terms)
            let any: Vec<u64> = (0..len).map(|_| rng.random()).collect();
            let mut want = acc.clone();
            accumulate_scalar_kernel(&m, &mut want, &any, v[0], consts[0]);
            for level in super::super::ntt::simd::available() {
                let mut got = acc.clone();
                accumulate_scalar_at(level, &m, &mut got, &any, v[0], consts[0]);
                assert_eq!(got, want, "by a constant: {level:?}, {bits}-bit prime");
            }
        }
    }
}
