//! The CPU backend: rayon across chunks, AES-NI through `cryprot-core`.

use cryprot_core::aes_hash::FIXED_KEY_HASH;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::simd::{self, Avx2, Avx512, Lanes, Level, mul_shoup, mul_shoup_lazy};
use super::{Backend, BackendResult, Block, Buffer, Held, HeldRuns, NttTable, Prepared, Tweaks, Workers};
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

/// Bytes of transformed weight windows [`CpuBackend::mul_acc_sparse`] keeps at once (most of a
/// core's L2): the outputs they serve share one read of each batch entry's inputs.
const SPARSE_GROUP_BYTES: usize = 768 << 10;

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
        if matches!(prepared, Prepared::Neither) && !exact_sums(moduli, n) {
            return Err(super::shape("mul_acc", "no Shoup constants, and the products are not summed exactly here"));
        }
        self.mac_blocked(moduli, n, shape, x, w, prepared, false, out);
        Ok(())
    }

    /// Per task (a limb, a window of max(MAC_BLOCK, s) slots): for a group of outputs, the
    /// window of every input's weight is transformed from its head into a buffer that stays in
    /// cache (group × inputs × window values), then every batch entry's block is multiplied by
    /// each of the group's outputs in turn, its inputs read from memory once per group.
    fn mul_acc_sparse(
        &self,
        tables: &[NttTable],
        batch: usize,
        x: &[u64],
        heads: &[u64],
        support: usize,
        prepared: Prepared<'_>,
        out: &mut [u64],
    ) -> BackendResult<()> {
        let n = tables.first().map_or(1, NttTable::degree);
        let polys = super::check_sparse_heads(tables, heads, support, prepared)?;
        let moduli: Vec<Modulus> = tables.iter().map(|t| *t.modulus()).collect();
        let (constants, of) = prepared.constants(x, &[]);
        let (inputs, outputs) =
            super::check_mul_acc(&moduli, n, batch, x.len(), polys * n, constants.len(), of, out.len())?;
        if matches!(prepared, Prepared::Neither) && !exact_sums(&moduli, n) {
            return Err(super::shape(
                "mul_acc_sparse",
                "no Shoup constants, and the products are not summed exactly here",
            ));
        }
        let limbs = tables.len();
        let folds: Vec<Folds> = moduli.iter().map(Folds::new).collect();
        let window = MAC_BLOCK.max(support.next_power_of_two()).min(n);
        // outputs whose transformed windows fit the budget together: each batch entry's inputs
        // are read from memory once per group, and stay in cache while the group's outputs pass
        let group = (SPARSE_GROUP_BYTES / (inputs * window * 8).max(1)).clamp(1, outputs.max(1));
        self.per_block(n, limbs, outputs, window, out, |l, first, mut pieces| {
            let mut w = vec![0u64; group * inputs * window];
            for first_j in (0..outputs).step_by(group) {
                let js = first_j..(first_j + group).min(outputs);
                for (r, slots) in w[..js.len() * inputs * window].chunks_exact_mut(window).enumerate() {
                    let (j, i) = (first_j + r / inputs, r % inputs);
                    let head = &heads[((l * outputs + j) * inputs + i) * support..][..support];
                    tables[l].forward_sparse_slots(head, first, slots);
                }
                for b in 0..batch {
                    let xi = (b * limbs + l) * inputs * n + first;
                    for (jj, j) in js.clone().enumerate() {
                        let wj = &w[jj * inputs * window..];
                        for (c, acc) in pieces[b * outputs + j].chunks_mut(MAC_BLOCK).enumerate() {
                            let at = c * MAC_BLOCK;
                            let consts = match prepared {
                                Prepared::X(cs) => Prepared::X(&cs[xi + at..]),
                                _ => Prepared::Neither,
                            };
                            let ops = Operands {
                                x: &x[xi + at..],
                                w: &wj[at..],
                                prepared: consts,
                                inputs,
                                x_step: n,
                                w_step: window,
                                add: false,
                            };
                            mac_block(&folds[l], acc, ops);
                        }
                    }
                }
            }
        });
        Ok(())
    }

    fn exact_products(&self, moduli: &[Modulus], n: usize) -> bool {
        exact_sums(moduli, n)
    }

    fn hold(&self, values: Vec<u64>) -> BackendResult<Buffer> {
        Ok(Buffer(Held::Host(values.into())))
    }

    fn fetch(&self, buffer: Buffer) -> BackendResult<Vec<u64>> {
        match buffer.0 {
            Held::Host(values) => Ok(values.into_vec()),
            #[allow(unreachable_patterns)] // device buffers exist only with the CUDA backend
            _ => Err(super::foreign("cpu", &buffer)),
        }
    }

    fn mul_acc_held(
        &self,
        moduli: &[Modulus],
        n: usize,
        batch: usize,
        x: HeldRuns<'_>,
        w: &Buffer,
        w_shoup: &Buffer,
        out: &mut Buffer,
    ) -> BackendResult<()> {
        if let Some(buffer) = [x.values, w, w_shoup, &*out].into_iter().find(|b| !matches!(b.0, Held::Host(_))) {
            return Err(super::foreign("cpu", buffer));
        }
        match (&x.values.0, &w.0, &w_shoup.0, &mut out.0) {
            (Held::Host(xv), Held::Host(w), Held::Host(c), Held::Host(out)) => {
                x.check(n, moduli.len(), batch)?;
                let x = x.gather(xv, n, moduli.len(), batch);
                // weights held without constants where the products are summed exactly
                let prepared = if c.is_empty() && exact_sums(moduli, n) { Prepared::Neither } else { Prepared::W(c) };
                let (constants, of) = prepared.constants(&x, w);
                let shape = super::check_mul_acc(moduli, n, batch, x.len(), w.len(), constants.len(), of, out.len())?;
                self.mac_blocked(moduli, n, shape, &x, w, prepared, true, out);
                Ok(())
            }
            #[allow(unreachable_patterns)] // device buffers exist only with the CUDA backend
            _ => unreachable!("every buffer was checked to be in host memory"),
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
        #[cfg(target_arch = "x86_64")]
        if lazy_conversion(moduli, n) {
            // every output row cut into the same windows of slots; a task takes one window of all
            let (width, small) = (CONVERT_WINDOW.min(n), out.len() < CHUNK);
            let mut windows: Vec<Vec<&mut [u64]>> = (0..n.div_ceil(width)).map(|_| Vec::new()).collect();
            for row in out.chunks_exact_mut(n) {
                windows.iter_mut().zip(row.chunks_mut(width)).for_each(|(w, piece)| w.push(piece));
            }
            let convert = |w: usize, rows: Vec<&mut [u64]>| convert_window(moduli, n, x, consts, w * width, rows);
            if small {
                windows.into_iter().enumerate().for_each(|(w, rows)| convert(w, rows));
            } else {
                self.run(|| windows.into_par_iter().enumerate().for_each(|(w, rows)| convert(w, rows)));
            }
            return Ok(());
        }
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
            divide_row(m, row, top, p_top.value(), consts[r / polys]);
        });
        Ok(())
    }
}

impl CpuBackend {
    /// [`Backend::mul_acc`] on host memory with (I, J) = `shape`, its sums written to `out`, or
    /// added to it when `add` ([`Backend::mul_acc_held`]). With exact sums ([`exact_sums`]) it
    /// is blocked over coefficients: a task takes one limb's block of [`MAC_BLOCK`] slots of
    /// every input, weight and output, so that each block of either operand is read from memory
    /// once for the whole call and stays in cache while the other passes over it (the weights
    /// across the batch, an input across the outputs). Shoup products go one output run per
    /// task instead, each input one long sequential stream.
    #[allow(clippy::too_many_arguments)]
    fn mac_blocked(
        &self,
        moduli: &[Modulus],
        n: usize,
        (inputs, outputs): (usize, usize),
        x: &[u64],
        w: &[u64],
        prepared: Prepared<'_>,
        add: bool,
        out: &mut [u64],
    ) {
        let limbs = moduli.len();
        let folds: Vec<Folds> = moduli.iter().map(Folds::new).collect();
        // output j of limb l for batch entry b, from slot `at` on
        let one = |b: usize, l: usize, j: usize, at: usize, acc: &mut [u64]| {
            let (xi, wi) = (((b * limbs + l) * inputs) * n + at, ((l * outputs + j) * inputs) * n + at);
            let consts = match prepared {
                Prepared::W(c) => Prepared::W(&c[wi..]),
                Prepared::X(c) => Prepared::X(&c[xi..]),
                Prepared::Neither => Prepared::Neither,
            };
            let ops = Operands { x: &x[xi..], w: &w[wi..], prepared: consts, inputs, x_step: n, w_step: n, add };
            mac_block(&folds[l], acc, ops);
        };
        if !exact_sums(moduli, n) {
            self.per_run(n, out, |r, acc| one(r / (limbs * outputs), (r / outputs) % limbs, r % outputs, 0, acc));
            return;
        }
        let block = MAC_BLOCK.min(n).max(1);
        self.per_block(n, limbs, outputs, block, out, |l, at, pieces| {
            for (bj, acc) in pieces.into_iter().enumerate() {
                one(bj / outputs, l, bj % outputs, at, acc);
            }
        });
    }

    /// Runs `task(l, at, pieces)` for every limb l and block of `block` slots from `at`, with
    /// `pieces` that block of every output run of limb l in `out` (laid out [b][l][j], J =
    /// `outputs`, runs of `n`), in order (b, j); tasks in parallel as [`CpuBackend::per_run`].
    fn per_block(
        &self,
        n: usize,
        limbs: usize,
        outputs: usize,
        block: usize,
        out: &mut [u64],
        task: impl Fn(usize, usize, Vec<&mut [u64]>) + Sync,
    ) {
        let blocks = n.div_ceil(block);
        let total = out.len();
        let mut tasks: Vec<Vec<&mut [u64]>> =
            (0..limbs * blocks).map(|_| Vec::with_capacity(total / (n * limbs).max(1))).collect();
        for (c, run) in out.chunks_exact_mut(n).enumerate() {
            let l = (c / outputs) % limbs;
            for (k, piece) in run.chunks_mut(block).enumerate() {
                tasks[l * blocks + k].push(piece);
            }
        }
        let task = |t: usize, pieces: Vec<&mut [u64]>| task(t / blocks, (t % blocks) * block, pieces);
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

/// [`divide_element`] over a row, on the best instruction set of the machine.
fn divide_row(m: &Modulus, row: &mut [u64], top: &[u64], p_top: u64, consts: [u64; 3]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2(m: &Modulus, row: &mut [u64], top: &[u64], p_top: u64, consts: [u64; 3]) {
            // SAFETY: compiled for AVX2, called at that level only.
            unsafe { divide_row_lanes::<Avx2>(m, row, top, p_top, consts) }
        }
        #[target_feature(enable = "avx512f,avx512dq")]
        fn avx512(m: &Modulus, row: &mut [u64], top: &[u64], p_top: u64, consts: [u64; 3]) {
            // SAFETY: compiled for AVX-512, called at that level only.
            unsafe { divide_row_lanes::<Avx512>(m, row, top, p_top, consts) }
        }
        let below = |limit: u64| p_top < m.value() && m.value() < limit;
        match simd::level() {
            // SAFETY: the CPU supports the level's features (`simd::level`).
            Level::Avx512 if below(Avx512::PRIME_LIMIT) => return unsafe { avx512(m, row, top, p_top, consts) },
            // SAFETY: as above.
            Level::Avx2 if below(Avx2::PRIME_LIMIT) => return unsafe { avx2(m, row, top, p_top, consts) },
            _ => {}
        }
    }
    divide_row_kernel(m, row, top, p_top, consts)
}

/// The portable [`divide_row`].
fn divide_row_kernel(m: &Modulus, row: &mut [u64], top: &[u64], p_top: u64, [p_mod, inv, inv_shoup]: [u64; 3]) {
    for (x, &v) in row.iter_mut().zip(top) {
        *x = divide_element(m, *x, v, p_top, p_mod, inv, inv_shoup);
    }
}

/// [`divide_row`] on lanes `L` for a top prime below p (v needs no reduction, and its centred
/// value is v, or v − p_top ≡ v + p − p_top above p_top/2); the tail through the kernel.
///
/// # Safety
/// The CPU has `L`'s instruction set; p_top < p < [`Lanes::PRIME_LIMIT`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn divide_row_lanes<L: Lanes>(m: &Modulus, row: &mut [u64], top: &[u64], p_top: u64, consts: [u64; 3]) {
    debug_assert!(p_top < m.value() && top.len() >= row.len());
    let [_, inv, inv_shoup] = consts;
    let body = row.len() - row.len() % L::LEN;
    // SAFETY: the caller's contract; i + LEN ≤ body ≤ the length of row and of top.
    unsafe {
        let (p, half, lift) = (L::splat(m.value()), L::splat(p_top / 2), L::splat(m.value() - p_top));
        let (inv, inv_shoup) = (L::splat(inv), L::splat(inv_shoup));
        for i in (0..body).step_by(L::LEN) {
            let (x, v) = (L::load(row.as_ptr().add(i)), L::load(top.as_ptr().add(i)));
            // x − centred + p in [1, 2p), then [0, p)
            let d = x.add(p).sub(v).sub(v.above(half).and(lift)).reduce_once(p);
            mul_shoup(d, inv, inv_shoup, p).reduce_once(p).store(row.as_mut_ptr().add(i));
        }
    }
    divide_row_kernel(m, &mut row[body..], &top[body..], p_top, consts)
}

/// Slots per task of a vectorized base conversion (a multiple of 8): every input row's window
/// and the outputs' stay in L2.
#[cfg(target_arch = "x86_64")]
const CONVERT_WINDOW: usize = 1 << 10;

/// Whether [`convert_window`] takes a conversion into `moduli` of rows of `n` slots at the
/// machine's level: a vector set, moduli below its [`Lanes::PRIME_LIMIT`] (sums of two lazy
/// products below 8p), whole vectors.
#[cfg(target_arch = "x86_64")]
fn lazy_conversion(moduli: &[Modulus], n: usize) -> bool {
    fn takes<L: Lanes>(moduli: &[Modulus], n: usize) -> bool {
        moduli.iter().all(|m| m.value() < L::PRIME_LIMIT) && n.is_multiple_of(L::LEN)
    }
    match simd::level() {
        Level::Avx512 => takes::<Avx512>(moduli, n),
        Level::Avx2 => takes::<Avx2>(moduli, n),
        Level::Baseline => false,
    }
}

/// The window of slots from `first` of a base conversion, `out[j] = Σ_i x[i]·c[i][j] mod m_j`
/// for the output rows' pieces `out`, at the machine's level (one [`lazy_conversion`] takes):
/// per vector of slots, each output's sum stays in a register over all input rows (the inputs'
/// vectors are read from L1 once per output), each product Shoup's with the shortened quotient
/// of the NTT (in [0, 4p)), the sum kept in [0, 4p) by one conditional subtraction per term and
/// fully reduced once at the end.
#[cfg(target_arch = "x86_64")]
fn convert_window(moduli: &[Modulus], n: usize, x: &[u64], consts: &[(u64, u64)], first: usize, out: Vec<&mut [u64]>) {
    #[target_feature(enable = "avx2")]
    fn avx2(moduli: &[Modulus], n: usize, x: &[u64], consts: &[(u64, u64)], first: usize, out: Vec<&mut [u64]>) {
        // SAFETY: compiled for AVX2, called at that level only.
        unsafe { convert_window_lanes::<Avx2>(moduli, n, x, consts, first, out) }
    }
    #[target_feature(enable = "avx512f,avx512dq")]
    fn avx512(moduli: &[Modulus], n: usize, x: &[u64], consts: &[(u64, u64)], first: usize, out: Vec<&mut [u64]>) {
        // SAFETY: compiled for AVX-512, called at that level only.
        unsafe { convert_window_lanes::<Avx512>(moduli, n, x, consts, first, out) }
    }
    debug_assert!(lazy_conversion(moduli, n));
    match simd::level() {
        // SAFETY: the CPU supports the level's features (`simd::level`).
        Level::Avx512 => unsafe { avx512(moduli, n, x, consts, first, out) },
        // SAFETY: as above.
        Level::Avx2 => unsafe { avx2(moduli, n, x, consts, first, out) },
        Level::Baseline => unreachable!("no vector conversion at the portable level (`lazy_conversion`)"),
    }
}

/// [`convert_window`] on lanes `L`.
///
/// # Safety
/// The CPU has `L`'s instruction set; x holds the rows of n slots, first + each piece's length
/// ≤ n, pieces of whole vectors.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn convert_window_lanes<L: Lanes>(
    moduli: &[Modulus],
    n: usize,
    x: &[u64],
    consts: &[(u64, u64)],
    first: usize,
    mut out: Vec<&mut [u64]>,
) {
    let (inputs, outputs) = (x.len() / n, moduli.len());
    let len = out.first().map_or(0, |row| row.len());
    // SAFETY: the caller's contract: the set, and first + s + LEN ≤ n (windows of whole
    // vectors), so every load stays in row i, and s + LEN ≤ the window's length.
    unsafe {
        for s in (0..len).step_by(L::LEN) {
            for (j, row) in out.iter_mut().enumerate() {
                let p = moduli[j].value();
                let (p, two_p, four_p) = (L::splat(p), L::splat(2 * p), L::splat(4 * p));
                let mut acc = L::splat(0);
                for i in 0..inputs {
                    let (c, shoup) = consts[i * outputs + j];
                    let y = L::load(x.as_ptr().add(i * n + first + s));
                    acc = acc.add(mul_shoup_lazy(y, L::splat(c), L::splat(shoup), p)).reduce_once(four_p);
                }
                acc.reduce_once(two_p).reduce_once(p).store(row.as_mut_ptr().add(s));
            }
        }
    }
}

/// `acc += y·c mod p` (lazily, acc stays in [0, 2p)) for a constant c < p with Shoup constant
/// `shoup` and any u64 values y, on the best instruction set of the machine.
fn accumulate_scalar(m: &Modulus, acc: &mut [u64], y: &[u64], c: u64, shoup: u64) {
    #[cfg(target_arch = "x86_64")]
    return accumulate_scalar_at(simd::level(), m, acc, y, c, shoup);
    #[cfg(not(target_arch = "x86_64"))]
    accumulate_scalar_kernel(m, acc, y, c, shoup)
}

/// [`accumulate_scalar`] at instruction-set `level`, which the CPU must support.
#[cfg(target_arch = "x86_64")]
fn accumulate_scalar_at(level: Level, m: &Modulus, acc: &mut [u64], y: &[u64], c: u64, shoup: u64) {
    #[target_feature(enable = "avx2")]
    fn avx2(m: &Modulus, acc: &mut [u64], y: &[u64], c: u64, shoup: u64) {
        // SAFETY: compiled for AVX2, called at that level only.
        unsafe { accumulate_scalar_lanes::<Avx2>(m, acc, y, c, shoup) }
    }
    #[target_feature(enable = "avx512f,avx512dq")]
    fn avx512(m: &Modulus, acc: &mut [u64], y: &[u64], c: u64, shoup: u64) {
        // SAFETY: compiled for AVX-512, called at that level only.
        unsafe { accumulate_scalar_lanes::<Avx512>(m, acc, y, c, shoup) }
    }
    match level {
        // SAFETY: the CPU supports the features these variants are compiled for (checked at run
        // time by `simd::level` / `simd::available`).
        Level::Avx512 if m.value() < Avx512::PRIME_LIMIT => unsafe { avx512(m, acc, y, c, shoup) },
        // SAFETY: as above.
        Level::Avx2 if m.value() < Avx2::PRIME_LIMIT => unsafe { avx2(m, acc, y, c, shoup) },
        _ => accumulate_scalar_kernel(m, acc, y, c, shoup),
    }
}

/// [`accumulate_scalar`] on lanes `L`, the tail through the kernel.
///
/// # Safety
/// The CPU has `L`'s instruction set; p below its [`Lanes::PRIME_LIMIT`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn accumulate_scalar_lanes<L: Lanes>(m: &Modulus, acc: &mut [u64], y: &[u64], c: u64, shoup: u64) {
    let len = acc.len().min(y.len());
    let body = len - len % L::LEN;
    // SAFETY: the caller's contract; i + LEN ≤ body ≤ the length of both slices.
    unsafe {
        let (p, two_p) = (L::splat(m.value()), L::splat(2 * m.value()));
        let (cv, sv) = (L::splat(c), L::splat(shoup));
        for i in (0..body).step_by(L::LEN) {
            let r = mul_shoup(L::load(y.as_ptr().add(i)), cv, sv, p);
            L::load(acc.as_ptr().add(i)).add(r).reduce_once(two_p).store(acc.as_mut_ptr().add(i));
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
/// of c) for c = 1, 2^29 and 2^58 mod p; `exact` when p < 2^58 (residues split into 29-bit
/// halves).
struct Folds {
    m: Modulus,
    exact: bool,
    one: (u64, u64),
    at29: (u64, u64),
    at58: (u64, u64),
}

impl Folds {
    fn new(m: &Modulus) -> Folds {
        let pair = |bits: u32| {
            let c = m.reduce_u128(1u128 << bits);
            (c, m.shoup(c))
        };
        Folds { m: *m, exact: m.bits() <= 58, one: pair(0), at29: pair(29), at58: pair(58) }
    }
}

/// Whether [`mac_block`] sums the products of every limb exactly, on every block of
/// polynomials of `n` values: a vector set, primes below 2^58, whole vectors.
fn exact_sums(moduli: &[Modulus], n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return moduli.iter().all(|m| m.bits() <= 58)
        && match simd::level() {
            Level::Avx512 => n.is_multiple_of(Avx512::LEN),
            Level::Avx2 => n.is_multiple_of(Avx2::LEN),
            Level::Baseline => false,
        };
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The operands of one block of a multiply-accumulate: input i's slots from `x[i·x_step]` and
/// `w[i·w_step]` on (the constants of `prepared` at the same offsets as their operand), `inputs`
/// of them, added to the block's residues when `add`.
#[derive(Debug, Clone, Copy)]
struct Operands<'a> {
    x: &'a [u64],
    w: &'a [u64],
    prepared: Prepared<'a>,
    inputs: usize,
    /// Values from one input to the next in `x` (and its constants).
    x_step: usize,
    /// Values from one input to the next in `w` (and its constants).
    w_step: usize,
    add: bool,
}

/// The multiply-accumulate of one block: `acc[c] = Σ_i x[i·x_step + c] · w[i·w_step + c] mod p` over the
/// inputs of `ops`, for c < acc.len(). On a vector set with p < 2^58 the products are summed
/// exactly and reduced once per run of inputs (no product pays a reduction, and the constants
/// are not read); otherwise each product is a lazy Shoup product.
fn mac_block(folds: &Folds, acc: &mut [u64], ops: Operands<'_>) {
    #[cfg(target_arch = "x86_64")]
    return mac_block_at(simd::level(), folds, acc, ops);
    #[cfg(not(target_arch = "x86_64"))]
    mac_block_shoup(&folds.m, acc, ops, accumulate_kernel)
}

/// [`mac_block`] at instruction-set `level`, which the CPU must support.
#[cfg(target_arch = "x86_64")]
fn mac_block_at(level: Level, folds: &Folds, acc: &mut [u64], ops: Operands<'_>) {
    #[target_feature(enable = "avx2")]
    fn avx2(folds: &Folds, acc: &mut [u64], ops: Operands<'_>) {
        // SAFETY: compiled for AVX2, called at that level only; the rest as `mac_block_exact`'s.
        unsafe { mac_block_exact::<Avx2>(folds, acc, ops) }
    }
    #[target_feature(enable = "avx512f,avx512dq")]
    fn avx512(folds: &Folds, acc: &mut [u64], ops: Operands<'_>) {
        // SAFETY: compiled for AVX-512, called at that level only; the rest as above.
        unsafe { mac_block_exact::<Avx512>(folds, acc, ops) }
    }
    let len = acc.len();
    let exact = folds.exact && len <= MAC_BLOCK && exact_pays(&ops);
    let reach = |step: usize| (ops.inputs - 1) * step + len;
    match level {
        // SAFETY: the CPU supports the features these variants are compiled for (checked at
        // run time by `simd::level` / `simd::available`); x and w hold every input's block.
        Level::Avx512 if exact && len.is_multiple_of(Avx512::LEN) => unsafe {
            avx512(folds, acc, Operands { x: &ops.x[..reach(ops.x_step)], w: &ops.w[..reach(ops.w_step)], ..ops })
        },
        // SAFETY: as above.
        Level::Avx2 if exact && len.is_multiple_of(Avx2::LEN) => unsafe {
            avx2(folds, acc, Operands { x: &ops.x[..reach(ops.x_step)], w: &ops.w[..reach(ops.w_step)], ..ops })
        },
        _ => mac_block_shoup(&folds.m, acc, ops, |m, a, y, v, c| accumulate_at(level, m, a, y, v, c)),
    }
}

/// Whether a block's products are better summed exactly than by Shoup products: always where
/// no constants came ([`Prepared::Neither`]), else from [`EXACT_FROM`] inputs on, since the
/// fold of an exact sum costs about three Shoup products per slot (one ct×pt product pays
/// three times what a Shoup product costs).
#[cfg(target_arch = "x86_64")]
fn exact_pays(ops: &Operands<'_>) -> bool {
    ops.inputs > 0 && (ops.inputs >= EXACT_FROM || matches!(ops.prepared, Prepared::Neither))
}

/// Inputs from which [`exact_pays`] where Shoup constants are at hand.
#[cfg(target_arch = "x86_64")]
const EXACT_FROM: usize = 4;

/// The exact multiply-accumulate on lanes `L`, for primes below 2^58 and blocks of whole
/// vectors: each residue splits into 29-bit halves (x = x1·2^29 + x0), whose 32×32-bit
/// products are summed exactly in three 64-bit lanes (low, middle, high: kept in L1 for the
/// block, in registers across 8 inputs at a time) for up to 32 inputs before one fold into
/// `acc`.
///
/// # Safety
/// The CPU has `L`'s instruction set; acc.len() ≤ [`MAC_BLOCK`] and a multiple of `LEN`; x and
/// w hold (inputs − 1)·step + acc.len() values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn mac_block_exact<L: Lanes>(folds: &Folds, acc: &mut [u64], ops: Operands<'_>) {
    let Operands { x, w, inputs, x_step, w_step, add, .. } = ops;
    /// Inputs per exact sum: a middle term x0·w1 + x1·w0 is below 2^59.
    const RUN: usize = 32;
    /// Inputs per pass over the block: the sums stay in registers across them.
    const PASS: usize = 8;
    let len = acc.len();
    debug_assert!(len <= MAC_BLOCK && len.is_multiple_of(L::LEN));
    debug_assert!(inputs == 0 || (x.len() >= (inputs - 1) * x_step + len && w.len() >= (inputs - 1) * w_step + len));
    let (mut lo, mut mid, mut hi) = ([0u64; MAC_BLOCK], [0u64; MAC_BLOCK], [0u64; MAC_BLOCK]);
    let (lo, mid, hi) = (&mut lo[..len], &mut mid[..len], &mut hi[..len]);
    if !add {
        acc.fill(0);
    }
    // SAFETY: the caller's contract: the set; every c + LEN ≤ len, the length of acc and of
    // the sums, and input i's slots c..c + LEN lie below (inputs − 1)·step + len.
    unsafe {
        let p = folds.m.value();
        let (pv, two_pv, four_pv, low29) = (L::splat(p), L::splat(2 * p), L::splat(4 * p), L::splat((1 << 29) - 1));
        let (one, at29, at58) = (folds.one, folds.at29, folds.at58);
        let one = (L::splat(one.0), L::splat(one.1));
        let at29 = (L::splat(at29.0), L::splat(at29.1));
        let at58 = (L::splat(at58.0), L::splat(at58.1));
        for first in (0..inputs).step_by(RUN) {
            let last = (first + RUN).min(inputs);
            for (from, to) in (first..last).step_by(PASS).map(|from| (from, (from + PASS).min(last))) {
                for c in (0..len).step_by(L::LEN) {
                    let (mut s_lo, mut s_mid, mut s_hi) = if from == first {
                        (L::splat(0), L::splat(0), L::splat(0))
                    } else {
                        (L::load(lo.as_ptr().add(c)), L::load(mid.as_ptr().add(c)), L::load(hi.as_ptr().add(c)))
                    };
                    for i in from..to {
                        let xv = L::load(x.as_ptr().add(i * x_step + c));
                        let wv = L::load(w.as_ptr().add(i * w_step + c));
                        let (x0, x1) = (xv.and(low29), xv.shr29());
                        let (w0, w1) = (wv.and(low29), wv.shr29());
                        s_lo = s_lo.add(x0.mul32(w0));
                        s_mid = s_mid.add(x0.mul32(w1).add(x1.mul32(w0)));
                        s_hi = s_hi.add(x1.mul32(w1));
                    }
                    s_lo.store(lo.as_mut_ptr().add(c));
                    s_mid.store(mid.as_mut_ptr().add(c));
                    s_hi.store(hi.as_mut_ptr().add(c));
                }
            }
            // acc + low + middle·2^29 + high·2^58 mod p, lazily in [0, 2p)
            for c in (0..len).step_by(L::LEN) {
                let (a, l) = (L::load(acc.as_ptr().add(c)), L::load(lo.as_ptr().add(c)));
                let (m, h) = (L::load(mid.as_ptr().add(c)), L::load(hi.as_ptr().add(c)));
                let r = a
                    .add(mul_shoup(l, one.0, one.1, pv))
                    .add(mul_shoup(m, at29.0, at29.1, pv).add(mul_shoup(h, at58.0, at58.1, pv)));
                r.reduce_once(four_pv).reduce_once(two_pv).store(acc.as_mut_ptr().add(c));
            }
        }
        for c in (0..len).step_by(L::LEN) {
            L::load(acc.as_ptr().add(c)).reduce_once(pv).store(acc.as_mut_ptr().add(c));
        }
    }
}

/// [`mac_block`] by lazy Shoup products with the constants of `ops.prepared`, each input
/// through `accumulate` (`acc += y ⊙ v` with the constants of v).
fn mac_block_shoup(
    m: &Modulus,
    acc: &mut [u64],
    ops: Operands<'_>,
    accumulate: impl Fn(&Modulus, &mut [u64], &[u64], &[u64], &[u64]),
) {
    let Operands { x, w, prepared, inputs, x_step, w_step, add } = ops;
    let len = acc.len();
    if !add {
        acc.fill(0);
    }
    for i in 0..inputs {
        let (xi, wi) = (&x[i * x_step..][..len], &w[i * w_step..][..len]);
        // (raw, constant-carrying, constants)
        match prepared {
            Prepared::W(c) => accumulate(m, acc, xi, wi, &c[i * w_step..][..len]),
            Prepared::X(c) => accumulate(m, acc, wi, xi, &c[i * x_step..][..len]),
            // refused before any block (`exact_sums`)
            Prepared::Neither => unreachable!("a Shoup product without constants"),
        }
    }
    for a in acc.iter_mut() {
        *a = (*a).min(a.wrapping_sub(m.value()));
    }
}

/// The lazy Shoup multiply-accumulate `acc += y ⊙ v mod p` (acc in [0, 2p)) with the constants
/// `consts` of v, at instruction-set `level`, which the CPU must support.
#[cfg(target_arch = "x86_64")]
fn accumulate_at(level: Level, m: &Modulus, acc: &mut [u64], y: &[u64], v: &[u64], consts: &[u64]) {
    #[target_feature(enable = "avx2")]
    fn avx2(m: &Modulus, acc: &mut [u64], y: &[u64], v: &[u64], consts: &[u64]) {
        // SAFETY: compiled for AVX2, called at that level only.
        unsafe { accumulate_lanes::<Avx2>(m, acc, y, v, consts) }
    }
    #[target_feature(enable = "avx512f,avx512dq")]
    fn avx512(m: &Modulus, acc: &mut [u64], y: &[u64], v: &[u64], consts: &[u64]) {
        // SAFETY: compiled for AVX-512, called at that level only.
        unsafe { accumulate_lanes::<Avx512>(m, acc, y, v, consts) }
    }
    match level {
        // SAFETY: the CPU supports the features these variants are compiled for (checked at run
        // time by `simd::level` / `simd::available`).
        Level::Avx512 if m.value() < Avx512::PRIME_LIMIT => unsafe { avx512(m, acc, y, v, consts) },
        // SAFETY: as above.
        Level::Avx2 if m.value() < Avx2::PRIME_LIMIT => unsafe { avx2(m, acc, y, v, consts) },
        _ => accumulate_kernel(m, acc, y, v, consts),
    }
}

/// [`accumulate_at`] on lanes `L`, the tail through the kernel.
///
/// # Safety
/// The CPU has `L`'s instruction set; p below its [`Lanes::PRIME_LIMIT`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn accumulate_lanes<L: Lanes>(m: &Modulus, acc: &mut [u64], y: &[u64], v: &[u64], consts: &[u64]) {
    let len = acc.len().min(y.len()).min(v.len()).min(consts.len());
    let body = len - len % L::LEN;
    // SAFETY: the caller's contract; i + LEN ≤ body ≤ the length of every slice.
    unsafe {
        let (p, two_p) = (L::splat(m.value()), L::splat(2 * m.value()));
        for i in (0..body).step_by(L::LEN) {
            let (yv, vv, sv) =
                (L::load(y.as_ptr().add(i)), L::load(v.as_ptr().add(i)), L::load(consts.as_ptr().add(i)));
            let r = mul_shoup(yv, vv, sv, p);
            L::load(acc.as_ptr().add(i)).add(r).reduce_once(two_p).store(acc.as_mut_ptr().add(i));
        }
    }
    accumulate_kernel(m, &mut acc[body..len], &y[body..len], &v[body..len], &consts[body..len])
}

/// The multiply-accumulate loop (the portable level, and the tails of the vector ones).
#[inline(always)]
fn accumulate_kernel(m: &Modulus, acc: &mut [u64], y: &[u64], v: &[u64], consts: &[u64]) {
    let (p, two_p) = (m.value(), 2 * m.value());
    for (((a, &y), &v), &sv) in acc.iter_mut().zip(y).zip(v).zip(consts) {
        // Shoup: q = ⌊y·v'/2^64⌋, y·v − q·p in [0, 2p); a < 2p, so the sum stays below 4p < 2^64.
        let q = ((y as u128 * sv as u128) >> 64) as u64;
        let s = *a + y.wrapping_mul(v).wrapping_sub(q.wrapping_mul(p));
        *a = s.min(s.wrapping_sub(two_p));
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::ring::modp::ntt_primes;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    /// The multiply-accumulate of a block at every instruction set this CPU has equals the plain
    /// sum of products, exact or by Shoup products with the constants on either side, for input
    /// counts across the fold boundaries and blocks of whole vectors or not. Also the lazy Shoup
    /// product of each level against the portable one, and the product by a constant.
    /// The vector division by the top prime equals the element function the CUDA kernels
    /// share, for tops around the centring threshold, rows of whole vectors or not.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn dividing_a_row_by_the_top_prime_is_the_element_function_at_every_level() {
        let mut rng = StdRng::seed_from_u64(13);
        let p_top = Modulus::new(ntt_primes(45, 64, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}"));
        for bits in [58, 55, 50] {
            let m = Modulus::new(ntt_primes(bits, 64, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}"));
            let consts =
                super::super::divide_constants(std::slice::from_ref(&m), &p_top).unwrap_or_else(|e| panic!("{e}"))[0];
            let len = 77;
            let x: Vec<u64> = (0..len).map(|_| rng.random_range(0..m.value())).collect();
            let half = p_top.value() / 2;
            let top: Vec<u64> = (0..len)
                .map(|i| match i % 4 {
                    0 => half,
                    1 => half + 1,
                    _ => rng.random_range(0..p_top.value()),
                })
                .collect();
            let [p_mod, inv, inv_shoup] = consts;
            let want: Vec<u64> = x
                .iter()
                .zip(&top)
                .map(|(&x, &v)| divide_element(&m, x, v, p_top.value(), p_mod, inv, inv_shoup))
                .collect();
            let mut got = x.clone();
            divide_row(&m, &mut got, &top, p_top.value(), consts);
            assert_eq!(got, want, "{bits}-bit prime");
        }
    }

    #[test]
    fn every_simd_level_accumulates_the_exact_sum_of_products() {
        let mut rng = StdRng::seed_from_u64(12);
        for bits in [55, 58, 60, 61, 36] {
            let m = Modulus::new(ntt_primes(bits, 64, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}"));
            let folds = Folds::new(&m);
            let n = 40;
            for (inputs, len) in [(0, 40), (1, 40), (31, 40), (32, 40), (33, 40), (70, 40), (33, 37), (70, 37)] {
                let draw = |rng: &mut StdRng| -> Vec<u64> {
                    (0..inputs.max(1) * n).map(|_| rng.random_range(0..m.value())).collect()
                };
                let (x, w) = (draw(&mut rng), draw(&mut rng));
                let shoup = |v: &[u64]| -> Vec<u64> { v.iter().map(|&v| m.shoup(v)).collect() };
                let (xs, ws) = (shoup(&x), shoup(&w));
                let start: Vec<u64> = (0..len).map(|_| rng.random_range(0..m.value())).collect();
                for add in [false, true] {
                    let want: Vec<u64> = (0..len)
                        .map(|c| {
                            let base = if add { start[c] } else { 0 };
                            (0..inputs).fold(base, |a, i| m.add(a, m.mul(x[i * n + c], w[i * n + c])))
                        })
                        .collect();
                    for level in super::super::simd::available() {
                        for prepared in [Prepared::W(&ws), Prepared::X(&xs)] {
                            let mut got = start.clone();
                            let ops = Operands { x: &x, w: &w, prepared, inputs, x_step: n, w_step: n, add };
                            mac_block_at(level, &folds, &mut got, ops);
                            assert_eq!(got, want, "{level:?}, {bits}-bit prime, {inputs}×{len}, add {add}");
                        }
                    }
                }
            }
            let len = 1000 + 5;
            let draw = |rng: &mut StdRng| -> Vec<u64> { (0..len).map(|_| rng.random_range(0..m.value())).collect() };
            let (y, v) = (draw(&mut rng), draw(&mut rng));
            // acc may hold lazy values in [0, 2p)
            let acc: Vec<u64> = (0..len).map(|_| rng.random_range(0..2 * m.value())).collect();
            let consts: Vec<u64> = v.iter().map(|&x| m.shoup(x)).collect();
            let mut want = acc.clone();
            accumulate_kernel(&m, &mut want, &y, &v, &consts);
            for level in super::super::simd::available() {
                let mut got = acc.clone();
                accumulate_at(level, &m, &mut got, &y, &v, &consts);
                assert_eq!(got, want, "{level:?}, {bits}-bit prime");
            }
            // by a constant, with inputs that are any u64 (corrections, rounding terms)
            let any: Vec<u64> = (0..len).map(|_| rng.random()).collect();
            let mut want = acc.clone();
            accumulate_scalar_kernel(&m, &mut want, &any, v[0], consts[0]);
            for level in super::super::simd::available() {
                let mut got = acc.clone();
                accumulate_scalar_at(level, &m, &mut got, &any, v[0], consts[0]);
                assert_eq!(got, want, "by a constant: {level:?}, {bits}-bit prime");
            }
        }
    }
}
