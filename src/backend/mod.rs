//! The backend: one interface for the heavy, data-parallel operations, so that the same
//! protocols run on the CPU (rayon, SIMD) or on an NVIDIA GPU (`--features cuda`: the kernels of
//! `kernels/*.cu` through cudarc).
//!
//! It holds the bulk hashing that turns OT keys into pads, the batched NTT, the multiply-accumulate
//! of ct×pt products and selection sums, and the RNS base conversion. The kernels' per-element math
//! is one header shared with the CPU tests ([`kernels`](self) module docs).

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod kernels;
pub mod ntt;

pub use cpu::CpuBackend;
pub use cryprot_core::Block;
#[cfg(feature = "cuda")]
pub use cuda::{CudaBackend, CudaError, DeviceVec, HOST_BELOW};
pub use ntt::NttTable;

use crate::ring::modp::Modulus;

/// The server-heavy operations, batched.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Short name used in reports (`"cpu"`, `"cuda"`).
    fn name(&self) -> &'static str;

    /// Tweakable correlation-robust hash of many blocks: `out[i] = H(input[i], tweak_i)`, with H
    /// the fixed-key-AES TMMO construction of Guo et al. (ePrint 2019/074). Both OT parties must
    /// hash a key with the same tweak; a tweak is never reused within a session.
    ///
    /// Panics if `input`, `out` (and listed tweaks) differ in length: a caller bug, not input.
    fn hash_blocks(&self, input: &[Block], tweaks: Tweaks<'_>, out: &mut [Block]);

    /// Forward negacyclic NTT of every polynomial in `polys` (consecutive runs of N coefficients
    /// in [0, p), all modulo the table's prime), in place.
    ///
    /// Panics if `polys.len()` is not a multiple of N: a caller bug, not input.
    fn ntt_forward(&self, table: &NttTable, polys: &mut [u64]);

    /// [`Backend::ntt_forward`] of polynomials whose coefficients from `support` on are zero
    /// (weights packed into few low coefficients): the first stages reduce to copies.
    fn ntt_forward_sparse(&self, table: &NttTable, polys: &mut [u64], support: usize);

    /// Inverse of [`Backend::ntt_forward`], in place.
    fn ntt_inverse(&self, table: &NttTable, polys: &mut [u64]);

    /// Pointwise multiply-accumulate over one RNS limb in NTT form, for ct×pt products and for
    /// selection sums Σ_i W_i·[\[t_i\]]: `out[j] = Σ_i x[i] ⊙ w[j][i] mod p`, where `x` holds I
    /// polynomials, `w` holds J rows of I polynomials and `out` receives J polynomials, each of
    /// `n` values. One side carries Shoup constants ([`Prepared`]): the weights when they are
    /// prepared once per model, or the shared inputs when the weights are transformed on the fly.
    ///
    /// Panics if the lengths do not match I·n, J·I·n and J·n: a caller bug, not input.
    fn mul_acc(&self, modulus: &Modulus, n: usize, x: &[u64], w: &[u64], prepared: Prepared<'_>, out: &mut [u64]);

    /// The core of every RNS base conversion (basis extension, scale-and-round, modulus
    /// switching): `out[j] = Σ_i x[i]·c[i][j] mod m_j` for output moduli `moduli[j]`, where `x`
    /// holds I rows of `n` values (any u64: residues, small corrections, rounding terms), `consts`
    /// holds I·J pairs (c, Shoup constant of c mod m_j), row-major, and `out` J rows of `n`,
    /// reduced to [0, m_j).
    ///
    /// Panics if the lengths do not match: a caller bug, not input.
    fn base_convert(&self, moduli: &[Modulus], n: usize, x: &[u64], consts: &[(u64, u64)], out: &mut [u64]);

    /// Runs `task(i)` for every i in 0..count on the backend's host workers (the host-side
    /// share of protocol work: per-ciphertext pipelines whose inner steps call the methods
    /// above for one polynomial at a time).
    fn for_each(&self, count: usize, task: &(dyn Fn(usize) + Sync));
}

/// The shape contract of [`Backend::hash_blocks`], checked alike by every backend.
pub(crate) fn check_hash(input: &[Block], tweaks: Tweaks<'_>, out: &[Block]) {
    assert_eq!(input.len(), out.len(), "hash_blocks: input and output lengths differ");
    if let Tweaks::Listed(list) = tweaks {
        assert_eq!(list.len(), input.len(), "hash_blocks: one tweak per block");
    }
}

/// The shape contract of [`Backend::mul_acc`]; returns the number of inputs I.
pub(crate) fn check_mul_acc(n: usize, x: &[u64], w: &[u64], prepared: Prepared<'_>, out: &[u64]) -> usize {
    assert!(n > 0 && x.len().is_multiple_of(n) && out.len().is_multiple_of(n), "mul_acc: ragged polynomials");
    let inputs = x.len() / n;
    assert_eq!(w.len(), out.len() * inputs, "mul_acc: weights do not match inputs × outputs");
    match prepared {
        Prepared::W(c) => assert_eq!(c.len(), w.len(), "mul_acc: one Shoup constant per weight"),
        Prepared::X(c) => assert_eq!(c.len(), x.len(), "mul_acc: one Shoup constant per input"),
    }
    inputs
}

/// The shape contract of [`Backend::base_convert`]; returns the number of input rows I.
pub(crate) fn check_base_convert(moduli: &[Modulus], n: usize, x: &[u64], consts: &[(u64, u64)], out: &[u64]) -> usize {
    assert!(n > 0 && x.len().is_multiple_of(n), "base_convert: ragged rows");
    let inputs = x.len() / n;
    assert_eq!(out.len(), moduli.len() * n, "base_convert: one output row per modulus");
    assert_eq!(consts.len(), inputs * moduli.len(), "base_convert: one constant per input row and modulus");
    inputs
}

/// Which backend to run on (`--backend` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The GPU when this build has the CUDA backend and a device is present, else the CPU.
    #[default]
    Auto,
    /// The CPU backend (rayon).
    Cpu,
    /// The CUDA backend: an error where the build or the machine has none.
    Cuda,
}

impl std::str::FromStr for BackendChoice {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            other => Err(BackendError::Unknown(other.to_string())),
        }
    }
}

/// Errors choosing or starting a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A name that is not a backend.
    #[error("unknown backend `{0}` (expected auto, cpu or cuda)")]
    Unknown(String),
    /// The CUDA backend was asked for and this build has none.
    #[error("the CUDA backend is not available: {0}")]
    NoCuda(&'static str),
    /// The CUDA backend was asked for and cannot start on this machine.
    #[cfg(feature = "cuda")]
    #[error("the CUDA backend is not available: {0}")]
    Cuda(#[from] CudaError),
    /// The CPU worker pool could not start.
    #[error("starting the CPU backend: {0}")]
    Pool(#[from] rayon::ThreadPoolBuildError),
}

/// Starts the backend `choice` with `threads` host workers (0: one per core). `Auto` takes the
/// first GPU when this build has the CUDA backend and it starts (driver, device and kernels
/// there), else the CPU, and logs which and why.
pub fn start(choice: BackendChoice, threads: usize) -> Result<std::sync::Arc<dyn Backend>, BackendError> {
    let cpu = |reason: &dyn std::fmt::Display| -> Result<std::sync::Arc<dyn Backend>, BackendError> {
        tracing::info!(reason = %reason, "backend: cpu");
        Ok(std::sync::Arc::new(CpuBackend::new(threads)?))
    };
    #[cfg(feature = "cuda")]
    match choice {
        BackendChoice::Cpu => cpu(&"asked for"),
        BackendChoice::Cuda => Ok(std::sync::Arc::new(CudaBackend::new(0, threads)?)),
        BackendChoice::Auto => match CudaBackend::new(0, threads) {
            Ok(gpu) => {
                tracing::info!(device = gpu.device(), "backend: cuda");
                Ok(std::sync::Arc::new(gpu))
            }
            Err(why) => cpu(&why),
        },
    }
    #[cfg(not(feature = "cuda"))]
    {
        const WHY: &str = "this build has no CUDA backend (rebuild with --features cuda)";
        match choice {
            BackendChoice::Cuda => Err(BackendError::NoCuda(WHY)),
            BackendChoice::Cpu => cpu(&"asked for"),
            BackendChoice::Auto => cpu(&WHY),
        }
    }
}

/// Runs `task` for 0..count on the backend's workers and collects the results in order.
pub fn map_indexed<T: Send>(backend: &dyn Backend, count: usize, task: impl Fn(usize) -> T + Sync) -> Vec<T> {
    use std::sync::Mutex;
    let slots: Vec<Mutex<Option<T>>> = (0..count).map(|_| Mutex::new(None)).collect();
    backend.for_each(count, &|i| {
        let value = task(i);
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    });
    slots
        .into_iter()
        .map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(|| unreachable!("every task ran")))
        .collect()
}

/// The Shoup constants of one operand of [`Backend::mul_acc`], as long as that operand.
#[derive(Debug, Clone, Copy)]
pub enum Prepared<'a> {
    /// Constants of `w` (J·I·n values).
    W(&'a [u64]),
    /// Constants of `x` (I·n values).
    X(&'a [u64]),
}

/// The tweaks of a [`Backend::hash_blocks`] batch.
#[derive(Debug, Clone, Copy)]
pub enum Tweaks<'a> {
    /// `tweak_i = base + i`.
    Sequential(u64),
    /// `tweak_i = list[i]`.
    Listed(&'a [u64]),
}

impl Tweaks<'_> {
    /// The tweak of element `i`.
    pub fn get(&self, i: usize) -> u64 {
        match self {
            Tweaks::Sequential(base) => base.wrapping_add(i as u64),
            Tweaks::Listed(list) => list[i],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::modp::ntt_primes;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    #[test]
    fn mul_acc_matches_the_plain_sum_of_products() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let m = Modulus::new(ntt_primes(55, 64, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(8);
        let (n, i_count, j_count) = (64, 300, 5);
        let x: Vec<u64> = (0..i_count * n).map(|_| rng.random_range(0..m.value())).collect();
        let w: Vec<u64> = (0..j_count * i_count * n).map(|_| rng.random_range(0..m.value())).collect();
        let ws: Vec<u64> = w.iter().map(|&v| m.shoup(v)).collect();
        let xs: Vec<u64> = x.iter().map(|&v| m.shoup(v)).collect();
        for prepared in [Prepared::W(&ws), Prepared::X(&xs)] {
            let mut out = vec![0u64; j_count * n];
            be.mul_acc(&m, n, &x, &w, prepared, &mut out);
            for j in 0..j_count {
                for k in 0..n {
                    let expect =
                        (0..i_count).fold(0, |acc, i| m.add(acc, m.mul(x[i * n + k], w[(j * i_count + i) * n + k])));
                    assert_eq!(out[j * n + k], expect, "{prepared:?}: output {j}, slot {k}");
                }
            }
        }
    }

    #[test]
    fn backend_choices_parse_and_cuda_is_a_clear_error_where_there_is_none() {
        assert_eq!("CPU".parse::<BackendChoice>().ok(), Some(BackendChoice::Cpu));
        assert!(matches!("tpu".parse::<BackendChoice>(), Err(BackendError::Unknown(n)) if n == "tpu"));
        let cpu = start(BackendChoice::Cpu, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cpu.name(), "cpu");
        let auto = start(BackendChoice::Auto, 1).unwrap_or_else(|e| panic!("{e}"));
        let cuda = start(BackendChoice::Cuda, 1).map(|b| b.name());
        #[cfg(not(feature = "cuda"))]
        assert!(matches!(&cuda, Err(BackendError::NoCuda(_))), "{cuda:?}");
        #[cfg(feature = "cuda")]
        if CudaBackend::device_count() == 0 {
            assert!(matches!(&cuda, Err(BackendError::Cuda(_))), "{cuda:?}");
        }
        // auto takes the GPU exactly when one starts
        assert_eq!(auto.name(), if cuda.is_ok() { "cuda" } else { "cpu" });
    }

    #[test]
    fn base_convert_matches_the_plain_sum_of_products() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let moduli: Vec<Modulus> = [61, 58, 40]
            .iter()
            .map(|&b| Modulus::new(ntt_primes(b, 64, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let mut rng = StdRng::seed_from_u64(9);
        let (n, rows) = (1003, 7);
        let x: Vec<u64> = (0..rows * n).map(|_| rng.random()).collect();
        let consts: Vec<(u64, u64)> = (0..rows)
            .flat_map(|_| moduli.iter().map(|m| m.value()).collect::<Vec<_>>())
            .enumerate()
            .map(|(at, p)| {
                let m = moduli[at % moduli.len()];
                let c = rng.random_range(0..p);
                (c, m.shoup(c))
            })
            .collect();
        let mut out = vec![0u64; moduli.len() * n];
        be.base_convert(&moduli, n, &x, &consts, &mut out);
        for (j, m) in moduli.iter().enumerate() {
            for c in 0..n {
                let want = (0..rows).fold(0, |acc, i| m.add(acc, m.mul(x[i * n + c], consts[i * moduli.len() + j].0)));
                assert_eq!(out[j * n + c], want, "modulus {j}, value {c}");
            }
        }
    }

    #[test]
    fn hashing_is_deterministic_and_separates_inputs_and_tweaks() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        // Pairs of equal inputs: 0,0,1,1,2,2,...
        let input: Vec<Block> = (0..10_000usize).map(|i| Block::from(i / 2)).collect();
        let mut a = vec![Block::ZERO; input.len()];
        let mut b = vec![Block::ZERO; input.len()];
        be.hash_blocks(&input, Tweaks::Sequential(0), &mut a);
        be.hash_blocks(&input, Tweaks::Sequential(0), &mut b);
        assert_eq!(a, b);
        // Equal inputs at different tweaks hash differently.
        assert!(a.chunks(2).all(|p| p[0] != p[1]));
        // The tweak of element i is tweak_base + i, whatever the batch split.
        be.hash_blocks(&input[1..], Tweaks::Sequential(1), &mut b[..input.len() - 1]);
        assert_eq!(a[1..], b[..input.len() - 1]);
        let listed: Vec<u64> = (0..input.len() as u64).collect();
        be.hash_blocks(&input, Tweaks::Listed(&listed), &mut b);
        assert_eq!(a, b);
    }
}
