//! `secmoe bench --preset kernels`: the backend's kernels alone, as microseconds per operation —
//! batched NTTs per degree and limb count, the multiply-accumulate of ct×pt products, the same
//! with weights given by their low coefficients and transformed where they are used, the MoE
//! selection sum Σ_i W_i·[[t_i]] at E = 128, d = 768, d_ff = 3072, the sums of ciphertext
//! tensors of ciphertext products, a ciphertext product's conversions and tensor whole, a key
//! switch with the key held by the backend, and the OT hashing.
//!
//! The CPU backend always; with `--backend cuda` (or `auto` where a GPU starts) the GPU too, once
//! through the [`Backend`] methods (host slices: copies in and out included) and once on resident
//! buffers (copies excluded, as when a layer's weights and operands stay on the device). Every GPU
//! row is checked against the CPU backend's result, every CPU row by a property of its own
//! (round trip, plain sum).

use anyhow::{Result, ensure};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::backend::{
    Backend, Block, Buffer, CpuBackend, NttTable, Prepared, SwitchKeyRows, TensorBasis, Tweaks, input_constants,
};
use secmoe::ring::modp::{Modulus, ntt_primes};

use super::harness::{Row, op_row, reset_peak_rss, time_us};
use super::report::print_row;

/// (N, limbs) of the NTT rows; each limb transforms [`NTT_BATCH`] polynomials in one call.
const NTT_SHAPES: [(usize, usize); 4] = [(4096, 1), (8192, 1), (8192, 4), (16384, 1)];
const NTT_BATCH: usize = 64;
/// Polynomials per limb in the resident NTT rows: enough to fill a large GPU.
#[cfg(feature = "cuda")]
const RESIDENT_NTT_BATCH: usize = 1024;
/// The selection sum's shape: E selectors, J = d·d_ff/N outputs, ciphertexts of [`SELECT_LIMBS`]
/// limbs and two halves.
const SELECT_E: usize = 128;
const SELECT_J: usize = 768 * 3072 / 8192;
const SELECT_LIMBS: usize = 3;
/// Outputs timed on the CPU (the per-term time does not depend on J; the full sum would take
/// minutes and 14 GB here), scaled to J.
const CPU_SELECT_J: usize = 4;
/// The key-switch row: the selected products' set (N = 16384, six primes and a special one), at
/// the full level.
const SWITCH_N: usize = 16384;
const SWITCH_DIGITS: usize = 6;
/// The product row's extension basis P: seven 61-bit primes, as the selected products' set
/// takes at its full level.
const PRODUCT_EXTENSION: usize = 7;
/// Blocks in the hashing row.
const HASH_BLOCKS: usize = 1 << 20;

/// Runs the preset on the CPU and, where `backend` is the GPU, on the GPU as well.
pub(crate) fn run(backend: &dyn Backend, threads: usize, only: Option<&str>, rows: &mut Vec<Row>) -> Result<()> {
    let cpu = CpuBackend::new(threads)?;
    let mut bench = Bench { only, rows, rng: StdRng::seed_from_u64(17) };
    bench.run_on(&cpu, None)?;
    if backend.name() == "cuda" {
        #[cfg(feature = "cuda")]
        {
            let gpu = secmoe::backend::CudaBackend::new(0, threads)?.with_offload(secmoe::backend::Offload::Everything);
            println!("GPU: {}", gpu.device());
            bench.run_on(&gpu, Some(&cpu))?;
            bench.resident(&gpu, &cpu)?;
        }
    }
    Ok(())
}

struct Bench<'a> {
    only: Option<&'a str>,
    rows: &'a mut Vec<Row>,
    rng: StdRng,
}

impl Bench<'_> {
    fn wanted(&self, name: &str) -> bool {
        self.only.is_none_or(|o| o == name)
    }

    fn push(&mut self, row: Row) {
        print_row(&row);
        self.rows.push(row);
    }

    fn random(&mut self, len: usize, below: u64) -> Vec<u64> {
        (0..len).map(|_| self.rng.random_range(0..below)).collect()
    }

    /// The rows through the [`Backend`] methods on `be`; with `cpu` given, each result is checked
    /// against it.
    fn run_on(&mut self, be: &dyn Backend, cpu: Option<&CpuBackend>) -> Result<()> {
        let label = if cpu.is_some() { format!("{} with copies", be.name()) } else { be.name().to_string() };
        if self.wanted("ntt") {
            for (n, limbs) in NTT_SHAPES {
                reset_peak_rss();
                let tables = tables(60, n, limbs)?;
                // limb-major: NTT_BATCH polynomials per limb, one call for all
                let data: Vec<u64> =
                    tables.iter().flat_map(|t| self.random(NTT_BATCH * n, t.modulus().value())).collect();
                let mut out = data.clone();
                be.ntt_forward(&tables, &mut out)?;
                let ok = match cpu {
                    Some(cpu) => {
                        let mut want = data.clone();
                        cpu.ntt_forward(&tables, &mut want)?;
                        want == out
                    }
                    None => {
                        be.ntt_inverse(&tables, &mut out)?;
                        data == out
                    }
                };
                let mut work = data.clone();
                let mut result = Ok(());
                let us = time_us(10, || result = be.ntt_forward(&tables, &mut work)) / (limbs * NTT_BATCH) as f64;
                result?;
                let shape = format!("N={n}, {limbs} limb(s) × {NTT_BATCH}");
                self.push(with_method(op_row("ntt", be.name(), shape, us, ok), &label));
            }
        }
        if self.wanted("mul-acc") {
            reset_peak_rss();
            let (n, inputs, outputs) = (8192, 128, 8);
            let m = product_prime(n)?;
            let (x, w) = (self.random(inputs * n, m.value()), self.random(outputs * inputs * n, m.value()));
            let ws: Vec<u64> = w.iter().map(|&v| m.shoup(v)).collect();
            let mut out = vec![0u64; outputs * n];
            let m = [m];
            be.mul_acc(&m, n, 1, &x, &w, Prepared::W(&ws), &mut out)?;
            let ok = match cpu {
                Some(cpu) => {
                    let mut want = vec![0u64; outputs * n];
                    cpu.mul_acc(&m, n, 1, &x, &w, Prepared::W(&ws), &mut want)?;
                    want == out
                }
                None => (0..n).step_by(997).all(|k| {
                    out[k] == (0..inputs).fold(0, |acc, i| m[0].add(acc, m[0].mul(x[i * n + k], w[i * n + k])))
                }),
            };
            let mut result = Ok(());
            let us = time_us(10, || result = be.mul_acc(&m, n, 1, &x, &w, Prepared::W(&ws), &mut out))
                / (inputs * outputs) as f64;
            result?;
            let shape = format!("N={n}, {inputs} in × {outputs} out, per term");
            self.push(with_method(op_row("mul-acc", be.name(), shape, us, ok), &label));
        }
        if self.wanted("mul-acc-sparse") {
            reset_peak_rss();
            // one group of a linear layer's products: weights of 512 coefficients (Cheetah's
            // tiles of B), transformed where they are used, against two halves of 16 encrypted
            // input polynomials over three 58-bit limbs
            let (n, limbs, batch, inputs, outputs, support) = (8192, 3, 2, 16, 32, 512);
            let tables = tables(58, n, limbs)?;
            let moduli: Vec<Modulus> = tables.iter().map(|t| *t.modulus()).collect();
            let draw = |this: &mut Self, per_limb: usize| -> Vec<u64> {
                moduli.iter().flat_map(|m| this.random(per_limb, m.value())).collect()
            };
            let x: Vec<u64> = (0..batch).flat_map(|_| draw(self, inputs * n)).collect();
            let xs = input_constants(&moduli, n, inputs, &x);
            let heads = draw(self, outputs * inputs * support);
            let mut out = vec![0u64; batch * limbs * outputs * n];
            be.mul_acc_sparse(&tables, batch, &x, &heads, support, Prepared::X(&xs), &mut out)?;
            // against the CPU, or the heads transformed whole and multiplied
            let mut want = vec![0u64; out.len()];
            match cpu {
                Some(cpu) => cpu.mul_acc_sparse(&tables, batch, &x, &heads, support, Prepared::X(&xs), &mut want)?,
                None => {
                    let mut w = vec![0u64; limbs * outputs * inputs * n];
                    for (run, head) in w.chunks_exact_mut(n).zip(heads.chunks_exact(support)) {
                        run[..support].copy_from_slice(head);
                    }
                    be.ntt_forward(&tables, &mut w)?;
                    be.mul_acc(&moduli, n, batch, &x, &w, Prepared::X(&xs), &mut want)?;
                }
            }
            let ok = want == out;
            let mut result = Ok(());
            let us = time_us(5, || {
                result = be.mul_acc_sparse(&tables, batch, &x, &heads, support, Prepared::X(&xs), &mut out);
            }) / (batch * inputs * outputs * limbs) as f64;
            result?;
            let shape = format!("N={n}, support {support}, {batch}×{inputs} in × {outputs} out, per term and limb");
            self.push(with_method(op_row("mul-acc-sparse", be.name(), shape, us, ok), &label));
        }
        if self.wanted("select") {
            reset_peak_rss();
            let j = if cpu.is_some() { SELECT_J } else { CPU_SELECT_J };
            let (us, ok) = self.selection(be, cpu, j)?;
            let mut row = op_row("select", be.name(), select_shape(j), us, ok);
            row.wall_s = us * 1e-6 * (SELECT_J * SELECT_E * SELECT_LIMBS * 2) as f64;
            self.push(with_method(row, &label));
        }
        if self.wanted("tensor-sum") {
            reset_peak_rss();
            // a sum of products' shape in the selected products' extended basis (N = 16384, 13 limbs)
            let (n, limbs, terms) = (SWITCH_N, 13, 8);
            let moduli: Vec<Modulus> =
                ntt_primes(58, n, limbs)?.into_iter().map(Modulus::new).collect::<Result<_, _>>()?;
            ensure!(moduli.len() == limbs, "{limbs} primes for N = {n}");
            let draw = |this: &mut Self| -> Vec<u64> {
                (0..2 * terms)
                    .flat_map(|_| moduli.iter().flat_map(|m| this.random(n, m.value())).collect::<Vec<_>>())
                    .collect()
            };
            let (a, b) = (draw(self), draw(self));
            // the operands and sums held by the backend, as a sum of products keeps them
            let (ha, hb) = (be.hold(a.clone())?, be.hold(b.clone())?);
            let mut sums = be.hold(vec![0u64; 3 * limbs * n])?;
            be.tensor_sum(&moduli, n, terms, (&ha, 0), (&hb, 0), false, &mut sums)?;
            let out = be.fetch(sums)?;
            let ok = match cpu {
                Some(cpu) => {
                    let mut want = Buffer::host(vec![0u64; out.len()]);
                    let (ca, cb) = (Buffer::host(a.clone()), Buffer::host(b.clone()));
                    cpu.tensor_sum(&moduli, n, terms, (&ca, 0), (&cb, 0), false, &mut want)?;
                    want.host_values() == Some(&out[..])
                }
                // part 0 of limb 0 at a few slots: Σ_t a0·b0
                None => (0..n).step_by(997).all(|j| {
                    let m = &moduli[0];
                    let at = |t: usize| 2 * t * limbs * n + j;
                    out[j] == (0..terms).fold(0, |acc, t| m.add(acc, m.mul(a[at(t)], b[at(t)])))
                }),
            };
            let mut sums = be.hold(out)?;
            let mut result = Ok(());
            let us = time_us(10, || result = be.tensor_sum(&moduli, n, terms, (&ha, 0), (&hb, 0), false, &mut sums))
                / terms as f64;
            result?;
            let shape = format!("N={n}, {limbs} limbs, {terms} pairs, per pair");
            self.push(with_method(op_row("tensor-sum", be.name(), shape, us, ok), &label));
        }
        if self.wanted("ct-product") {
            reset_peak_rss();
            let (us, ok) = self.product(be, cpu)?;
            let shape =
                format!("N={SWITCH_N}, {SWITCH_DIGITS} primes, {PRODUCT_EXTENSION} more: lift 2, tensor, round");
            self.push(with_method(op_row("ct-product", be.name(), shape, us, ok), &label));
        }
        if self.wanted("key-switch") {
            reset_peak_rss();
            let (us, ok) = self.key_switch(be, cpu)?;
            let shape = format!("N={SWITCH_N}, {SWITCH_DIGITS} digits + P, key held");
            self.push(with_method(op_row("key-switch", be.name(), shape, us, ok), &label));
        }
        if self.wanted("ot-hash") {
            reset_peak_rss();
            let input: Vec<Block> =
                (0..HASH_BLOCKS).map(|_| Block::from([self.rng.random::<u64>(), self.rng.random::<u64>()])).collect();
            let mut out = vec![Block::from([0u64, 0]); HASH_BLOCKS];
            be.hash_blocks(&input, Tweaks::Sequential(1), &mut out)?;
            let ok = match cpu {
                Some(cpu) => {
                    let mut want = out.clone();
                    cpu.hash_blocks(&input, Tweaks::Sequential(1), &mut want)?;
                    want == out
                }
                None => out.iter().zip(&input).all(|(o, i)| o != i),
            };
            let mut result = Ok(());
            let us =
                time_us(10, || result = be.hash_blocks(&input, Tweaks::Sequential(1), &mut out)) / HASH_BLOCKS as f64;
            result?;
            let shape = format!("{HASH_BLOCKS} blocks, per block");
            self.push(with_method(op_row("ot-hash", be.name(), shape, us, ok), &label));
        }
        Ok(())
    }

    /// µs per key switch of one polynomial with a key `be` holds (c in, the sums out), and
    /// whether it is right: against `cpu`, else zero switched to zero and every sum a residue.
    fn key_switch(&mut self, be: &dyn Backend, cpu: Option<&CpuBackend>) -> Result<(f64, bool)> {
        let n = SWITCH_N;
        let all = ntt_primes(58, n, SWITCH_DIGITS + 1)?;
        ensure!(all.len() == SWITCH_DIGITS + 1, "{} primes for N = {n}", SWITCH_DIGITS + 1);
        let tables: Vec<NttTable> =
            all.iter().map(|&p| Ok(NttTable::new(n, Modulus::new(p)?)?)).collect::<Result<_>>()?;
        let (q, special) = (&tables[..SWITCH_DIGITS], &tables[SWITCH_DIGITS]);
        let (mut rows, mut shoup) = (Vec::new(), Vec::new());
        for t in &tables {
            let m = t.modulus();
            let part = self.random(2 * SWITCH_DIGITS * n, m.value());
            shoup.extend(part.iter().map(|&v| m.shoup(v)));
            rows.extend(part);
        }
        let check = cpu.map(|_| (Buffer::host(rows.clone()), Buffer::host(shoup.clone())));
        let (rows, shoup) = (be.hold(rows)?, be.hold(shoup)?);
        let key = SwitchKeyRows { rows: &rows, shoup: &shoup, digits: SWITCH_DIGITS };
        let c: Vec<u64> = q.iter().flat_map(|t| self.random(n, t.modulus().value())).collect();
        let mut out = vec![0u64; 2 * SWITCH_DIGITS * n];
        be.key_switch(q, Some(special), key, &c, true, &mut out)?;
        let ok = match (cpu, &check) {
            (Some(cpu), Some((rows, shoup))) => {
                let mut want = vec![0u64; out.len()];
                cpu.key_switch(
                    q,
                    Some(special),
                    SwitchKeyRows { rows, shoup, digits: SWITCH_DIGITS },
                    &c,
                    true,
                    &mut want,
                )?;
                want == out
            }
            _ => {
                let mut zero = vec![1u64; out.len()];
                be.key_switch(q, Some(special), key, &vec![0; c.len()], true, &mut zero)?;
                let below = out.chunks_exact(2 * n).zip(q).all(|(l, t)| l.iter().all(|&v| v < t.modulus().value()));
                below && zero.iter().all(|&v| v == 0)
            }
        };
        let mut result = Ok(());
        let us = time_us(10, || result = be.key_switch(q, Some(special), key, &c, true, &mut out));
        result?;
        Ok((us, ok))
    }

    /// µs per ciphertext product's conversions and tensor (two ciphertexts in NTT form lifted to
    /// Q∪P in one call, their tensor, the three parts rounded back to Q) at the selected products'
    /// full level, and whether it is right: against `cpu`, or on the CPU a lift of small
    /// coefficients (their residues mod P) and a rounding of zero (zero).
    fn product(&mut self, be: &dyn Backend, cpu: Option<&CpuBackend>) -> Result<(f64, bool)> {
        let n = SWITCH_N;
        let q: Vec<NttTable> = ntt_primes(58, n, SWITCH_DIGITS)?
            .into_iter()
            .map(|p| Ok(NttTable::new(n, Modulus::new(p)?)?))
            .collect::<Result<_>>()?;
        let p: Vec<Modulus> =
            ntt_primes(61, n, PRODUCT_EXTENSION)?.into_iter().map(Modulus::new).collect::<Result<_, _>>()?;
        ensure!(q.len() == SWITCH_DIGITS && p.len() == PRODUCT_EXTENSION, "primes for N = {n}");
        let basis = TensorBasis::new(&q, &p, 84)?;
        let (k, width) = (q.len(), basis.len());
        let x: Vec<u64> = (0..4)
            .flat_map(|_| q.iter().flat_map(|t| self.random(n, t.modulus().value())).collect::<Vec<_>>())
            .collect();
        let product = |be: &dyn Backend| -> Result<Vec<u64>> {
            let lifted = be.extend_basis(&basis, &x, true)?;
            let mut sums = Buffer::host(vec![0u64; 3 * width * n]);
            be.tensor_sum(basis.moduli(), n, 1, (&lifted, 0), (&lifted, 1), false, &mut sums)?;
            let mut out = vec![0u64; 3 * k * n];
            be.scale_down(&basis, sums, &mut out)?;
            Ok(out)
        };
        let out = product(be)?;
        let ok = match cpu {
            Some(cpu) => product(cpu)? == out,
            None => {
                // coefficients in [−3, 3], in coefficient form: the same small values mod each P prime
                let small: Vec<i64> = (0..n).map(|_| self.rng.random_range(-3i64..=3)).collect();
                let x: Vec<u64> = q.iter().flat_map(|t| small.iter().map(|&v| t.modulus().reduce_signed(v))).collect();
                let lifted = be.fetch(be.extend_basis(&basis, &x, false)?)?;
                let mut want: Vec<u64> =
                    basis.moduli().iter().flat_map(|m| small.iter().map(|&v| m.reduce_signed(v))).collect();
                let mut tables = q.clone();
                tables.extend(p.iter().map(|&m| NttTable::new(n, m)).collect::<Result<Vec<_>, _>>()?);
                be.ntt_forward(&tables, &mut want)?;
                let mut zero = vec![1u64; k * n];
                be.scale_down(&basis, Buffer::host(vec![0u64; width * n]), &mut zero)?;
                lifted == want && zero.iter().all(|&v| v == 0)
            }
        };
        let mut result = Ok(());
        let us = time_us(10, || result = product(be).map(drop));
        result?;
        Ok((us, ok))
    }

    /// µs per term of one limb's and half's selection sum with `j` outputs, and whether it is
    /// right (against `cpu`, or the sum on one coefficient).
    fn selection(&mut self, be: &dyn Backend, cpu: Option<&CpuBackend>, j: usize) -> Result<(f64, bool)> {
        let n = 8192;
        let m = product_prime(n)?;
        let x = self.random(SELECT_E * n, m.value());
        let w = self.random(j * SELECT_E * n, m.value());
        let ws: Vec<u64> = w.iter().map(|&v| m.shoup(v)).collect();
        let mut out = vec![0u64; j * n];
        let m = [m];
        be.mul_acc(&m, n, 1, &x, &w, Prepared::W(&ws), &mut out)?;
        let ok = match cpu {
            Some(cpu) => {
                let mut want = vec![0u64; j * n];
                cpu.mul_acc(&m, n, 1, &x, &w, Prepared::W(&ws), &mut want)?;
                want == out
            }
            None => out[5] == (0..SELECT_E).fold(0, |acc, i| m[0].add(acc, m[0].mul(x[i * n + 5], w[i * n + 5]))),
        };
        let mut result = Ok(());
        let us =
            time_us(5, || result = be.mul_acc(&m, n, 1, &x, &w, Prepared::W(&ws), &mut out)) / (j * SELECT_E) as f64;
        result?;
        Ok((us, ok))
    }

    /// The GPU rows on resident buffers: uploads before the clock, one synchronization per batch.
    #[cfg(feature = "cuda")]
    fn resident(&mut self, gpu: &secmoe::backend::CudaBackend, cpu: &CpuBackend) -> Result<()> {
        let label = "cuda resident";
        let sync = |r: Result<(), secmoe::backend::CudaError>| r.and_then(|()| gpu.synchronize());
        if self.wanted("ntt") {
            for (n, limbs) in NTT_SHAPES {
                let tables = tables(60, n, limbs)?;
                let data: Vec<u64> =
                    tables.iter().flat_map(|t| self.random(RESIDENT_NTT_BATCH * n, t.modulus().value())).collect();
                let mut dev = gpu.upload(&data)?;
                let mut result = Ok(());
                let us = time_us(50, || result = sync(gpu.ntt_forward_on_device(&tables, &mut dev, n)))
                    / (limbs * RESIDENT_NTT_BATCH) as f64;
                result?;
                // one more forward transform of fresh data, checked
                let mut fresh = gpu.upload(&data)?;
                gpu.ntt_forward_on_device(&tables, &mut fresh, n)?;
                let (mut got, mut want) = (vec![0u64; data.len()], data.clone());
                gpu.download(&fresh, &mut got)?;
                cpu.ntt_forward(&tables, &mut want)?;
                let shape = format!("N={n}, {limbs} limb(s) × {RESIDENT_NTT_BATCH}");
                self.push(with_method(op_row("ntt", "cuda", shape, us, got == want), label));
            }
        }
        if self.wanted("select") {
            let n = 8192;
            let m = product_prime(n)?;
            let x = self.random(SELECT_E * n, m.value());
            let w = self.random(SELECT_J * SELECT_E * n, m.value());
            let ws: Vec<u64> = w.iter().map(|&v| m.shoup(v)).collect();
            let (dx, dw, dws) = (gpu.upload(&x)?, gpu.upload(&w)?, gpu.upload(&ws)?);
            let mut dout = gpu.zeros(SELECT_J * n)?;
            let mut result = Ok(());
            let m = [m];
            let us = time_us(10, || result = sync(gpu.mul_acc_on_device(&m, n, &dx, &dw, &dws, true, &mut dout)))
                / (SELECT_J * SELECT_E) as f64;
            result?;
            let mut got = vec![0u64; SELECT_J * n];
            gpu.download(&dout, &mut got)?;
            let mut want = vec![0u64; n];
            cpu.mul_acc(&m, n, 1, &x, &w[..SELECT_E * n], Prepared::W(&ws[..SELECT_E * n]), &mut want)?;
            let ok = got[..n] == want[..];
            let mut row = op_row("select", "cuda", select_shape(SELECT_J), us, ok);
            row.wall_s = us * 1e-6 * (SELECT_J * SELECT_E * SELECT_LIMBS * 2) as f64;
            self.push(with_method(row, label));
            // the weights resident (as the server keeps them across queries), the selectors
            // copied in and the sums copied out in every call
            let mut result = Ok(());
            let us = time_us(10, || {
                result = (|| {
                    let dx = gpu.upload(&x)?;
                    let mut dout = gpu.zeros(SELECT_J * n)?;
                    gpu.mul_acc_on_device(&m, n, &dx, &dw, &dws, true, &mut dout)?;
                    gpu.download(&dout, &mut got)
                })()
            }) / (SELECT_J * SELECT_E) as f64;
            result?;
            let mut row = op_row("select", "cuda", select_shape(SELECT_J), us, ok && got[..n] == want[..]);
            row.wall_s = us * 1e-6 * (SELECT_J * SELECT_E * SELECT_LIMBS * 2) as f64;
            self.push(with_method(row, "cuda weights resident"));
        }
        if self.wanted("ot-hash") {
            let words: Vec<u64> = self.random(2 * HASH_BLOCKS, u64::MAX);
            let mut dev = gpu.upload(&words)?;
            let mut result = Ok(());
            let us = time_us(10, || result = sync(gpu.hash_on_device(&mut dev, 1))) / HASH_BLOCKS as f64;
            result?;
            let mut fresh = gpu.upload(&words)?;
            gpu.hash_on_device(&mut fresh, 1)?;
            let mut got = vec![0u64; words.len()];
            gpu.download(&fresh, &mut got)?;
            let input: Vec<Block> = words.chunks_exact(2).map(|w| Block::from([w[0], w[1]])).collect();
            let mut want = vec![Block::from([0u64, 0]); HASH_BLOCKS];
            cpu.hash_blocks(&input, Tweaks::Sequential(1), &mut want)?;
            let ok = want.iter().zip(got.chunks_exact(2)).all(|(b, w)| *b == Block::from([w[0], w[1]]));
            let shape = format!("{HASH_BLOCKS} blocks, per block");
            self.push(with_method(op_row("ot-hash", "cuda", shape, us, ok), label));
        }
        Ok(())
    }
}

fn select_shape(j: usize) -> String {
    let scaled = if j == SELECT_J { String::new() } else { format!(", timed at J={j}") };
    format!("E={SELECT_E}, J={SELECT_J}, per term{scaled}")
}

fn with_method(mut row: Row, label: &str) -> Row {
    row.method = Some(label.to_string());
    row
}

/// A prime of the size the HE sets' products run over (58 bits: the linear and selection sets),
/// where the CPU's multiply-accumulate sums exactly.
fn product_prime(n: usize) -> Result<Modulus> {
    Ok(Modulus::new(ntt_primes(58, n, 1)?[0])?)
}

fn tables(bits: u32, n: usize, limbs: usize) -> Result<Vec<NttTable>> {
    let primes = ntt_primes(bits, n, limbs)?;
    ensure!(primes.len() == limbs, "{limbs} primes for N = {n}");
    primes.into_iter().map(|p| Ok(NttTable::new(n, Modulus::new(p)?)?)).collect()
}
