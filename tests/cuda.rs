//! The CUDA backend against the CPU backend, bit for bit, on seeded data: every kernel, a
//! selection sum over 128 experts, and experts spread over every GPU present plus the CPU.
//! Each test prints why and passes where this machine has no GPU (the kernels' per-element math
//! is checked on every machine by the `backend::kernels` unit tests).
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)]

use rand::{RngExt, SeedableRng, rngs::StdRng};
use secmoe::backend::{Backend, Block, CpuBackend, CudaBackend, NttTable, Prepared, Tweaks};
use secmoe::he::{HeParams, OperandBank, Plaintext, SecretKey, SelectionPart, Selectors, select, select_spread};
use secmoe::ring::modp::{Modulus, ntt_primes};

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0, 2) {
        Ok(gpu) => {
            eprintln!("device: {}", gpu.device());
            Some(gpu.offloading_everything())
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

fn prime(bits: u32, n: usize) -> Modulus {
    Modulus::new(ntt_primes(bits, n, 1).unwrap()[0]).unwrap()
}

#[test]
fn transforms_match_the_cpu_at_every_size_in_shared_and_global_memory() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(41);
    // 2^15 coefficients do not fit a block's shared memory: the global-memory path
    for (bits, n, count) in [(36, 16, 3), (50, 1024, 7), (60, 8192, 12), (61, 16384, 2), (59, 32768, 2)] {
        let table = NttTable::new(n, prime(bits, n)).unwrap();
        let p = table.modulus().value();
        for support in [n, 64] {
            let mut want: Vec<u64> =
                (0..count * n).map(|i| if i % n < support { rng.random_range(0..p) } else { 0 }).collect();
            let mut got = want.clone();
            cpu.ntt_forward_sparse(&table, &mut want, support);
            gpu.ntt_forward_sparse(&table, &mut got, support);
            assert_eq!(got, want, "forward, N = {n}, {bits}-bit prime, support {support}");
        }
        let mut want: Vec<u64> = (0..count * n).map(|_| rng.random_range(0..p)).collect();
        let mut got = want.clone();
        cpu.ntt_inverse(&table, &mut want);
        gpu.ntt_inverse(&table, &mut got);
        assert_eq!(got, want, "inverse, N = {n}, {bits}-bit prime");
    }
}

#[test]
fn multiply_accumulate_and_base_conversion_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    let m = prime(61, 8192);
    let (n, inputs, outputs) = (8192, 9, 4);
    let x: Vec<u64> = (0..inputs * n).map(|_| rng.random_range(0..m.value())).collect();
    let w: Vec<u64> = (0..outputs * inputs * n).map(|_| rng.random_range(0..m.value())).collect();
    let ws: Vec<u64> = w.iter().map(|&v| m.shoup(v)).collect();
    let xs: Vec<u64> = x.iter().map(|&v| m.shoup(v)).collect();
    for prepared in [Prepared::W(&ws), Prepared::X(&xs)] {
        let (mut want, mut got) = (vec![0u64; outputs * n], vec![0u64; outputs * n]);
        cpu.mul_acc(&m, n, &x, &w, prepared, &mut want);
        gpu.mul_acc(&m, n, &x, &w, prepared, &mut got);
        assert_eq!(got, want, "{prepared:?}");
    }
    let moduli: Vec<Modulus> = ntt_primes(61, 8192, 4).unwrap().into_iter().map(|p| Modulus::new(p).unwrap()).collect();
    let x: Vec<u64> = (0..3 * n).map(|_| rng.random()).collect();
    let consts: Vec<(u64, u64)> = (0..3 * moduli.len())
        .map(|k| {
            let m = &moduli[k % moduli.len()];
            let c = rng.random_range(0..m.value());
            (c, m.shoup(c))
        })
        .collect();
    let (mut want, mut got) = (vec![0u64; moduli.len() * n], vec![0u64; moduli.len() * n]);
    cpu.base_convert(&moduli, n, &x, &consts, &mut want);
    gpu.base_convert(&moduli, n, &x, &consts, &mut got);
    assert_eq!(got, want);
}

#[test]
fn ot_hashing_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(43);
    let count = 100_003;
    let input: Vec<Block> = (0..count).map(|_| Block::from([rng.random::<u64>(), rng.random::<u64>()])).collect();
    let listed: Vec<u64> = (0..count).map(|_| rng.random()).collect();
    for tweaks in [Tweaks::Sequential(u64::MAX - 5), Tweaks::Listed(&listed)] {
        let (mut want, mut got) = (vec![Block::from([0u64, 0]); count], vec![Block::from([0u64, 0]); count]);
        cpu.hash_blocks(&input, tweaks, &mut want);
        gpu.hash_blocks(&input, tweaks, &mut got);
        assert!(got == want, "{tweaks:?}");
    }
}

/// The MoE selection sum Σ_i W_i·[[t_i]] over 128 experts with the bank on the GPU, and with the
/// experts spread over every GPU and the CPU: the same ciphertexts as on the CPU alone.
#[test]
fn selection_sums_over_128_experts_match_the_cpu_on_one_and_on_every_device() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let p = HeParams::linear().unwrap();
    let mut rng = StdRng::seed_from_u64(44);
    let sk = SecretKey::generate(&p, &cpu, &mut rng);
    let (experts, outputs, chosen) = (128usize, 3usize, 77usize);
    let weights: Vec<Vec<Vec<u64>>> = (0..outputs)
        .map(|_| (0..experts).map(|_| (0..256).map(|_| rng.random_range(-1000i64..1000) as u64).collect()).collect())
        .collect();
    let rows = |range: std::ops::Range<usize>| -> Vec<Vec<&[u64]>> {
        weights.iter().map(|r| r[range.clone()].iter().map(Vec::as_slice).collect()).collect()
    };
    let cts = (0..experts)
        .map(|i| sk.encrypt(&Plaintext::new(&p, vec![u64::from(i == chosen)]).unwrap(), &cpu, &mut rng))
        .collect();
    let sel = Selectors::new(&p, cts, &cpu).unwrap();
    let on_cpu = select(&p, &sel, 0, &OperandBank::new(&p, &rows(0..experts), &cpu).unwrap(), &cpu).unwrap();
    let on_gpu = select(&p, &sel, 0, &OperandBank::new(&p, &rows(0..experts), &gpu).unwrap(), &gpu).unwrap();
    for (j, (a, b)) in on_cpu.iter().zip(&on_gpu).enumerate() {
        let (da, db) = (sk.decrypt(a, &cpu), sk.decrypt(b, &cpu));
        assert_eq!(da, db, "output {j}");
        assert_eq!(&da.coeffs()[..256], &weights[j][chosen][..], "output {j}");
    }
    // every device plus the CPU, experts split evenly
    let devices: Vec<CudaBackend> =
        CudaBackend::all(2).unwrap().into_iter().map(CudaBackend::offloading_everything).collect();
    eprintln!("{} device(s)", devices.len());
    let mut backends: Vec<&dyn Backend> = devices.iter().map(|d| d as &dyn Backend).collect();
    backends.push(&cpu);
    let per = experts.div_ceil(backends.len());
    let banks: Vec<(usize, OperandBank)> = (0..backends.len())
        .map(|k| {
            let range = (k * per).min(experts)..((k + 1) * per).min(experts);
            (range.start, OperandBank::new(&p, &rows(range), backends[k]).unwrap())
        })
        .collect();
    let parts: Vec<SelectionPart<'_>> = banks
        .iter()
        .zip(&backends)
        .map(|((first, bank), backend)| SelectionPart { first: *first, bank, backend: *backend })
        .collect();
    let spread = select_spread(&p, &sel, &parts).unwrap();
    for (j, (a, b)) in on_cpu.iter().zip(&spread).enumerate() {
        assert_eq!(sk.decrypt(a, &cpu), sk.decrypt(b, &cpu), "spread, output {j}");
    }
}
