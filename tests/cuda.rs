//! The CUDA backend against the CPU backend, bit for bit, on seeded data: every kernel, products
//! by weights given by their low coefficients as one device pipeline, key
//! switching with the key resident, sums of ciphertext tensors, ciphertext products kept on the
//! device from their lifted operands to their rounded results, packing, expansion and
//! relinearization with the keys held by the GPU, a selection sum over 128 experts, and experts
//! spread over every GPU present plus the CPU.
//! Each test prints why and passes where this machine has no GPU (the kernels' per-element math
//! is checked on every machine by the `backend::kernels` unit tests).
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)]

use rand::{RngExt, SeedableRng, rngs::StdRng};
use secmoe::backend::{
    Backend, Block, Buffer, CpuBackend, CudaBackend, NttTable, Offload, Prepared, SwitchKeyRows, Tweaks,
    input_constants,
};
use secmoe::he::{
    Ciphertext, GaloisKeys, HeParams, Lifted, OperandBank, Plaintext, ProductSum, RelinKey, SecretKey, SelectionPart,
    Selectors, select, select_spread,
};
use secmoe::ring::modp::{Modulus, ntt_primes};

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0, 2) {
        Ok(gpu) => {
            eprintln!("device: {}", gpu.device());
            Some(gpu.with_offload(Offload::Everything))
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

#[test]
fn transforms_match_the_cpu_at_every_size_in_shared_and_global_memory() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(41);
    // 2^15 coefficients do not fit a block's shared memory: the global-memory path; every call
    // covers `limbs` limbs of `count` polynomials each (limb-major)
    for (bits, n, count, limbs) in
        [(36, 16, 3, 1), (50, 1024, 7, 2), (60, 8192, 12, 3), (61, 16384, 2, 2), (59, 32768, 2, 1)]
    {
        let tables: Vec<NttTable> = ntt_primes(bits, n, limbs)
            .unwrap()
            .into_iter()
            .map(|q| NttTable::new(n, Modulus::new(q).unwrap()).unwrap())
            .collect();
        let draw = |rng: &mut StdRng, support: usize| -> Vec<u64> {
            tables
                .iter()
                .flat_map(|t| {
                    let p = t.modulus().value();
                    (0..count * n).map(|i| if i % n < support { rng.random_range(0..p) } else { 0 }).collect::<Vec<_>>()
                })
                .collect()
        };
        for support in [n, 64] {
            let mut want = draw(&mut rng, support);
            let mut got = want.clone();
            cpu.ntt_forward_sparse(&tables, &mut want, support).unwrap();
            gpu.ntt_forward_sparse(&tables, &mut got, support).unwrap();
            assert_eq!(got, want, "forward, N = {n}, {bits}-bit primes, support {support}");
        }
        let mut want = draw(&mut rng, n);
        let mut got = want.clone();
        cpu.ntt_inverse(&tables, &mut want).unwrap();
        gpu.ntt_inverse(&tables, &mut got).unwrap();
        assert_eq!(got, want, "inverse, N = {n}, {bits}-bit primes");
    }
}

#[test]
fn multiply_accumulate_and_base_conversion_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    let n = 8192;
    let moduli: Vec<Modulus> = ntt_primes(61, n, 3).unwrap().into_iter().map(|p| Modulus::new(p).unwrap()).collect();
    let (inputs, outputs, limbs) = (9, 4, moduli.len());
    let draw = |len: usize, rng: &mut StdRng| -> Vec<u64> {
        moduli.iter().flat_map(|m| (0..len).map(|_| rng.random_range(0..m.value())).collect::<Vec<_>>()).collect()
    };
    let (x, w) = (draw(inputs * n, &mut rng), draw(outputs * inputs * n, &mut rng));
    let shoup = |v: &[u64]| -> Vec<u64> {
        v.chunks_exact(v.len() / limbs).zip(&moduli).flat_map(|(b, m)| b.iter().map(|&v| m.shoup(v))).collect()
    };
    let (ws, xs) = (shoup(&w), shoup(&x));
    for prepared in [Prepared::W(&ws), Prepared::X(&xs)] {
        let (mut want, mut got) = (vec![0u64; limbs * outputs * n], vec![0u64; limbs * outputs * n]);
        cpu.mul_acc(&moduli, n, 1, &x, &w, prepared, &mut want).unwrap();
        gpu.mul_acc(&moduli, n, 1, &x, &w, prepared, &mut got).unwrap();
        assert_eq!(got, want, "{prepared:?}");
    }
    let x: Vec<u64> = (0..3 * n).map(|_| rng.random()).collect();
    let consts: Vec<(u64, u64)> = (0..3 * moduli.len())
        .map(|k| {
            let m = &moduli[k % moduli.len()];
            let c = rng.random_range(0..m.value());
            (c, m.shoup(c))
        })
        .collect();
    let (mut want, mut got) = (vec![0u64; moduli.len() * n], vec![0u64; moduli.len() * n]);
    cpu.base_convert(&moduli, n, &x, &consts, &mut want).unwrap();
    gpu.base_convert(&moduli, n, &x, &consts, &mut got).unwrap();
    assert_eq!(got, want);
}

#[test]
fn products_by_weights_given_by_their_low_coefficients_run_on_the_device_and_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(47);
    let n = 8192;
    let tables: Vec<NttTable> = ntt_primes(58, n, 3)
        .unwrap()
        .into_iter()
        .map(|q| NttTable::new(n, Modulus::new(q).unwrap()).unwrap())
        .collect();
    let moduli: Vec<Modulus> = tables.iter().map(|t| *t.modulus()).collect();
    let (batch, inputs, outputs, limbs, support) = (2, 6, 5, tables.len(), 512);
    let draw = |per_limb: usize, rng: &mut StdRng| -> Vec<u64> {
        moduli.iter().flat_map(|m| (0..per_limb).map(|_| rng.random_range(0..m.value())).collect::<Vec<_>>()).collect()
    };
    let x: Vec<u64> = (0..batch).flat_map(|_| draw(inputs * n, &mut rng)).collect();
    let xs = input_constants(&moduli, n, inputs, &x);
    let heads = draw(outputs * inputs * support, &mut rng);
    let mut want = vec![0u64; batch * limbs * outputs * n];
    cpu.mul_acc_sparse(&tables, batch, &x, &heads, support, Prepared::X(&xs), &mut want).unwrap();
    // the trait method under both policies that offload it, and the pipeline in groups of two
    // outputs (a budget of two outputs' transformed weights)
    for offload in [Offload::Pipelines, Offload::Everything] {
        let gpu = CudaBackend::new(0, 2).unwrap().with_offload(offload);
        assert!(!gpu.exact_products(&moduli, n), "{offload:?}: the device reads the inputs' constants");
        let mut got = vec![0u64; want.len()];
        gpu.mul_acc_sparse(&tables, batch, &x, &heads, support, Prepared::X(&xs), &mut got).unwrap();
        assert_eq!(got, want, "{offload:?}");
        let err = gpu.mul_acc_sparse(&tables, batch, &x, &heads, support, Prepared::Neither, &mut got).err();
        assert!(err.is_some_and(|e| e.to_string().contains("Shoup constants")), "{offload:?}");
    }
    let mut got = vec![0u64; want.len()];
    let budget = 2 * limbs * inputs * n * 8;
    gpu.mul_acc_sparse_on_device(&tables, batch, (&x, &xs), &heads, support, &mut got, budget).unwrap();
    assert_eq!(got, want, "in groups of two outputs");
}

#[test]
fn automorphisms_and_modulus_switching_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(45);
    let n = 8192;
    let moduli: Vec<Modulus> = ntt_primes(58, n, 4).unwrap().into_iter().map(|p| Modulus::new(p).unwrap()).collect();
    let (low, top) = (&moduli[..3], &moduli[3]);
    let polys = 6;
    let input: Vec<u64> =
        low.iter().flat_map(|m| (0..polys * n).map(|_| rng.random_range(0..m.value())).collect::<Vec<_>>()).collect();
    for g in [3, n + 1, 2 * n - 1] {
        let (mut want, mut got) = (vec![0u64; input.len()], vec![0u64; input.len()]);
        cpu.automorphism(low, n, g, &input, &mut want).unwrap();
        gpu.automorphism(low, n, g, &input, &mut got).unwrap();
        assert_eq!(got, want, "σ_{g}");
    }
    let tops: Vec<u64> = (0..polys * n).map(|_| rng.random_range(0..top.value())).collect();
    let (mut want, mut got) = (input.clone(), input.clone());
    cpu.divide_by_prime(low, n, &mut want, &tops, top).unwrap();
    gpu.divide_by_prime(low, n, &mut got, &tops, top).unwrap();
    assert_eq!(got, want, "modulus switch");
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
        cpu.hash_blocks(&input, tweaks, &mut want).unwrap();
        gpu.hash_blocks(&input, tweaks, &mut got).unwrap();
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
    let sk = SecretKey::generate(&p, &cpu, &mut rng).unwrap();
    let (experts, outputs, chosen) = (128usize, 3usize, 77usize);
    let weights: Vec<Vec<Vec<u64>>> = (0..outputs)
        .map(|_| (0..experts).map(|_| (0..256).map(|_| rng.random_range(-1000i64..1000) as u64).collect()).collect())
        .collect();
    let rows = |range: std::ops::Range<usize>| -> Vec<Vec<&[u64]>> {
        weights.iter().map(|r| r[range.clone()].iter().map(Vec::as_slice).collect()).collect()
    };
    let cts: Vec<Ciphertext> = (0..experts)
        .map(|i| sk.encrypt(&Plaintext::new(&p, vec![u64::from(i == chosen)]).unwrap(), &cpu, &mut rng).unwrap())
        .collect();
    let sel = Selectors::new(&p, std::slice::from_ref(&cts), &cpu).unwrap();
    let on_cpu = select(&p, &sel, 0, &OperandBank::new(&p, &rows(0..experts), &cpu).unwrap(), &cpu).unwrap().remove(0);
    let held = OperandBank::new(&p, &rows(0..experts), &gpu).unwrap();
    // selectors in host memory (copied in for the call), and resident with the sums
    let on_gpu = select(&p, &sel, 0, &held, &gpu).unwrap().remove(0);
    // under the default policy too, where host-slice products may be exact on the host but the
    // held bank's products run on the device and read its Shoup constants
    let default = CudaBackend::new(0, 2).unwrap();
    let bank = OperandBank::new(&p, &rows(0..experts), &default).unwrap();
    assert!(select(&p, &sel, 0, &bank, &default).unwrap().remove(0) == on_gpu, "under Offload::Held");
    let sel_gpu = Selectors::new(&p, std::slice::from_ref(&cts), &gpu).unwrap();
    let resident = select(&p, &sel_gpu, 0, &held, &gpu).unwrap().remove(0);
    assert!(resident == on_gpu, "resident selectors give other sums");
    // a range of the resident selectors against a bank of those experts
    let part = OperandBank::new(&p, &rows(64..experts), &gpu).unwrap();
    let upper = select(&p, &sel_gpu, 64, &part, &gpu).unwrap().remove(0);
    let upper_cpu = select(&p, &sel, 64, &OperandBank::new(&p, &rows(64..experts), &cpu).unwrap(), &cpu).unwrap();
    assert!(upper == upper_cpu[0], "a range of resident selectors");
    // the bank and the selectors live in device memory: the CPU backend cannot read them
    let err = select(&p, &sel, 0, &held, &cpu).err().map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("cannot read a buffer held in CUDA device 0")), "{err:?}");
    let bank_cpu = OperandBank::new(&p, &rows(0..experts), &cpu).unwrap();
    let err = select(&p, &sel_gpu, 0, &bank_cpu, &cpu).err().map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("cannot read a buffer held in CUDA device 0")), "{err:?}");
    for (j, (a, b)) in on_cpu.iter().zip(&on_gpu).enumerate() {
        let (da, db) = (sk.decrypt(a, &cpu).unwrap(), sk.decrypt(b, &cpu).unwrap());
        assert_eq!(da, db, "output {j}");
        assert_eq!(&da.coeffs()[..256], &weights[j][chosen][..], "output {j}");
    }
    // every device plus the CPU, experts split evenly
    let devices: Vec<CudaBackend> =
        CudaBackend::all(2).unwrap().into_iter().map(|gpu| gpu.with_offload(Offload::Everything)).collect();
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
    let selectors: Vec<Selectors> =
        backends.iter().map(|b| Selectors::new(&p, std::slice::from_ref(&cts), *b).unwrap()).collect();
    let parts: Vec<SelectionPart<'_>> = banks
        .iter()
        .zip(&backends)
        .zip(&selectors)
        .map(|(((first, bank), backend), selectors)| SelectionPart {
            selectors,
            first: *first,
            bank,
            backend: *backend,
        })
        .collect();
    let spread = select_spread(&p, &parts).unwrap().remove(0);
    for (j, (a, b)) in on_cpu.iter().zip(&spread).enumerate() {
        assert_eq!(sk.decrypt(a, &cpu).unwrap(), sk.decrypt(b, &cpu).unwrap(), "spread, output {j}");
    }
}

#[test]
fn key_switches_match_the_cpu_with_the_key_resident_or_staged() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(47);
    let n = 4096;
    let all: Vec<Modulus> = ntt_primes(55, n, 4).unwrap().into_iter().map(|q| Modulus::new(q).unwrap()).collect();
    let tables: Vec<NttTable> = all.iter().map(|&m| NttTable::new(n, m).unwrap()).collect();
    let digits = 3;
    for special in [None, Some(&tables[3])] {
        let rows_of = &all[..digits + usize::from(special.is_some())];
        let (mut rows, mut shoup) = (Vec::new(), Vec::new());
        for m in rows_of {
            for _ in 0..2 * digits * n {
                let v = rng.random_range(0..m.value());
                rows.push(v);
                shoup.push(m.shoup(v));
            }
        }
        let on_host = (Buffer::host(rows.clone()), Buffer::host(shoup.clone()));
        let held = (gpu.hold(rows).unwrap(), gpu.hold(shoup).unwrap());
        for k in [3, 2] {
            let c: Vec<u64> = all[..k]
                .iter()
                .flat_map(|m| (0..n).map(|_| rng.random_range(0..m.value())).collect::<Vec<_>>())
                .collect();
            for coeff_out in [true, false] {
                let mut want = vec![0u64; 2 * k * n];
                let key = SwitchKeyRows { rows: &on_host.0, shoup: &on_host.1, digits };
                cpu.key_switch(&tables[..k], special, key, &c, coeff_out, &mut want).unwrap();
                for (key, place) in
                    [(key, "staged"), (SwitchKeyRows { rows: &held.0, shoup: &held.1, digits }, "resident")]
                {
                    let mut got = vec![0u64; 2 * k * n];
                    gpu.key_switch(&tables[..k], special, key, &c, coeff_out, &mut got).unwrap();
                    assert_eq!(
                        got,
                        want,
                        "P {}, level {k}, coefficient form {coeff_out}, key {place}",
                        special.is_some()
                    );
                }
            }
        }
    }
}

/// The server's configuration: keys held by the GPU when they arrive, everything else on the
/// host; packing, expansion and relinearization give the CPU's ciphertexts bit for bit.
#[test]
fn packing_expansion_and_relinearization_with_keys_on_the_gpu_match_the_cpu() {
    let gpu = match CudaBackend::new(0, 2) {
        Ok(gpu) => gpu,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(48);
    let p = HeParams::select().unwrap();
    let sk = SecretKey::generate(&p, &cpu, &mut rng).unwrap();
    let galois = sk.galois_keys(3, &cpu, &mut rng).unwrap();
    let mut held = GaloisKeys::from_bytes(&p, &galois.to_bytes(&p).unwrap()).unwrap();
    held.hold(&gpu).unwrap();
    let rlk = sk.relin_key(&cpu, &mut rng).unwrap();
    let mut held_rlk = RelinKey::from_bytes(&p, &rlk.to_bytes(&p)).unwrap();
    held_rlk.hold(&gpu).unwrap();
    let encrypt = |rng: &mut StdRng| {
        let pt = Plaintext::new(&p, (0..p.degree()).map(|_| rng.random::<u64>()).collect()).unwrap();
        sk.encrypt(&pt, &cpu, rng).unwrap()
    };
    let cts: Vec<Ciphertext> = (0..4).map(|_| encrypt(&mut rng)).collect();
    let packed =
        |keys: &GaloisKeys, be: &dyn Backend| keys.pack(&p, cts.iter().cloned().map(Some).collect(), be).unwrap();
    assert_eq!(packed(&held, &gpu), packed(&galois, &cpu), "packing");
    assert_eq!(held.expand(&p, &cts[0], 3, &gpu).unwrap(), galois.expand(&p, &cts[0], 3, &cpu).unwrap(), "expansion");
    assert_eq!(
        cts[0].mul(&cts[1], &p, &held_rlk, &gpu).unwrap(),
        cts[0].mul(&cts[1], &p, &rlk, &cpu).unwrap(),
        "product"
    );
    assert!(held.to_bytes(&p).is_err(), "keys a device holds are not serialized");
}

#[test]
fn tensor_sums_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(49);
    let n = 8192;
    let moduli: Vec<Modulus> =
        [61, 58, 50].iter().map(|&bits| Modulus::new(ntt_primes(bits, n, 1).unwrap()[0]).unwrap()).collect();
    let draw = |rng: &mut StdRng, count: usize| -> Vec<u64> {
        (0..count)
            .flat_map(|_| {
                moduli
                    .iter()
                    .flat_map(|m| (0..n).map(|_| rng.random_range(0..m.value())).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    for terms in [1, 24] {
        // b read from its third operand on; a on the device, b and the sums staged from the host
        let (a, b, old) = (draw(&mut rng, 2 * terms), draw(&mut rng, 2 * (terms + 2)), draw(&mut rng, 3));
        let (host_a, host_b) = (Buffer::host(a.clone()), Buffer::host(b.clone()));
        let held_a = gpu.hold(a).unwrap();
        for add in [false, true] {
            let (mut want, mut got) = (Buffer::host(old.clone()), Buffer::host(old.clone()));
            cpu.tensor_sum(&moduli, n, terms, (&host_a, 0), (&host_b, 2), add, &mut want).unwrap();
            gpu.tensor_sum(&moduli, n, terms, (&held_a, 0), (&host_b, 2), add, &mut got).unwrap();
            assert!(!got.is_host(), "the sums stay on the device");
            assert_eq!(gpu.fetch(got).unwrap(), cpu.fetch(want).unwrap(), "{terms} terms, added {add}");
        }
    }
}

/// Ciphertext products with every step on the device — both operands lifted there, the tensors
/// summed where they are, rounded back and downloaded once — give the CPU's ciphertexts bit for
/// bit: a product, a square and a sum of products, at the full level and one below, with every
/// call offloaded and with the pipelines only (`cuda:pipelines`, single kernels on the host).
#[test]
fn ciphertext_products_kept_on_the_device_match_the_cpu() {
    let Some(everything) = gpu() else { return };
    for gpu in [everything, CudaBackend::new(0, 2).unwrap().with_offload(Offload::Pipelines)] {
        products_match_the_cpu(&gpu);
    }
}

fn products_match_the_cpu(gpu: &CudaBackend) {
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = StdRng::seed_from_u64(50);
    let p = HeParams::select().unwrap();
    let sk = SecretKey::generate(&p, &cpu, &mut rng).unwrap();
    let rlk = sk.relin_key(&cpu, &mut rng).unwrap();
    let encrypt = |rng: &mut StdRng| {
        let pt = Plaintext::new(&p, (0..p.degree()).map(|_| rng.random::<u64>()).collect()).unwrap();
        sk.encrypt(&pt, &cpu, rng).unwrap()
    };
    let mut cts: Vec<Ciphertext> = (0..4).map(|_| encrypt(&mut rng)).collect();
    for level in [p.moduli().len(), p.moduli().len() - 1] {
        if level < p.moduli().len() {
            for ct in &mut cts {
                ct.drop_last_modulus(&p, &cpu).unwrap();
            }
        }
        let product = |be: &dyn Backend| cts[0].mul(&cts[1], &p, &rlk, be).unwrap();
        assert_eq!(product(gpu), product(&cpu), "product at {level} limbs");
        let square = |be: &dyn Backend| cts[2].tensor(&cts[2], &p, be).unwrap();
        assert_eq!(square(gpu), square(&cpu), "square at {level} limbs");
        let inner = |be: &dyn Backend| {
            let (a, b) = (Lifted::of(&cts[..2], &p, be).unwrap(), Lifted::of(&cts, &p, be).unwrap());
            let mut sum = ProductSum::new(&p, level).unwrap();
            sum.add_from(&p, &a, (&b, 2), be).unwrap();
            sum.add_from(&p, &a, (&b, 0), be).unwrap();
            sum.finish_coeff(&p, be).unwrap()
        };
        assert_eq!(inner(gpu), inner(&cpu), "sum of products at {level} limbs");
    }
}
