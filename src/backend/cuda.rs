//! The CUDA backend: the kernels of `kernels/*.cu` on one NVIDIA GPU, through `cudarc` with the
//! driver and NVRTC loaded at run time (the crate builds and runs where neither exists).
//!
//! Kernels: PTX built by nvcc at compile time when build.rs found it; else, or when this machine's
//! driver does not accept that PTX (it is newer than the driver), the embedded sources are
//! compiled with NVRTC at start (cached in memory and under `$XDG_CACHE_HOME/secmoe/ptx`). The
//! per-element math is `kernels/modarith.cuh`, checked against the CPU backend on every machine
//! (`backend::kernels` tests); `tests/cuda.rs` compares every launch with the CPU bit for bit where
//! a device exists.
//!
//! Data: most [`Backend`] methods take host slices; on the GPU each such call would copy in, run
//! and copy out, and measured on an H200 beside 16 host cores (2026-12-04, `secmoe bench --preset
//! kernels`) every kernel is then slower than the host: an NTT at N = 8192 11.9 µs against 3.5 µs,
//! a multiply-accumulate term 10.3 µs against 0.57 µs (its weights cross the bus every call), OT
//! hashing 2.1 ns a block against 0.47 ns — and on this project's 2-core machine at best even. So
//! by default ([`Offload::Held`]) host-slice calls run on the host workers, bit for bit the same,
//! and the GPU takes the work on values it holds; [`Offload::Pipelines`] also sends it the
//! pipelines that start from host slices and keep their intermediates there (ciphertext
//! products, and products by weights given by their low coefficients: spread, transformed and
//! multiplied on the device, [`CudaBackend::mul_acc_sparse_on_device`]), and
//! [`Offload::Everything`] every call (tests, kernel benchmarks;
//! [`CudaBackend::with_offload`], `--backend cuda:pipelines|everything`). [`Backend::hold`] keeps values in device memory and
//! [`Backend::mul_acc_held`] reads and writes them there: a selection sum's weight banks, its
//! encrypted selectors and its running sums stay on the device while the banks of experts
//! stream past (one `mul_acc_into` launch per row, half and limb on views of the held buffers,
//! nothing copied), and [`Backend::fetch`] brings the sums back once. Ciphertext products keep
//! their lifted operands and their sums in device memory alike when their calls are offloaded
//! ([`Backend::extend_basis`] returns a device buffer, [`Backend::tensor_sum`] adds there and
//! [`Backend::scale_down`] downloads the rounded parts once). [`DeviceVec`] and the
//! `*_on_device` methods run the kernels on resident buffers directly (benchmarks).
//!
//! Several GPUs: [`CudaBackend::all`] starts one backend per device; a selection sum is additive
//! over experts, so [`crate::he::select_spread`] gives each device its experts' bank and adds the
//! partial sums. Across hosts the same split applies, with each host's partial sums (ciphertexts)
//! sent to the one that answers the client over an existing RPC or collective layer (e.g. NCCL or
//! gRPC streams); not built. A driver error inside a [`Backend`] method (the device lost, out of
//! memory) is returned as [`BackendError::Cuda`]; everything that can fail before any work (no
//! driver, no device, no compiler, a kernel that does not load) is a [`CudaError`] from
//! [`CudaBackend::new`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg, sys,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::kernels::{KernelSource, MODULES};
use super::rns::HatConstants;
use super::{
    Backend, BackendError, BackendResult, Block, Buffer, CpuBackend, Held, HeldRuns, NttTable, Offload, Prepared,
    SwitchKeyRows, TensorBasis, Tweaks,
};
use crate::ring::modp::Modulus;

/// Why the CUDA backend cannot start or run.
#[derive(Debug, Error)]
pub enum CudaError {
    /// No CUDA driver library on this machine.
    #[error("no CUDA driver library (libcuda) can be loaded on this machine")]
    NoDriver,
    /// The driver is there but reports no device (or not the one asked for).
    #[error("no CUDA device {ordinal} (the driver reports {count})")]
    NoDevice {
        /// The device asked for.
        ordinal: usize,
        /// Devices present.
        count: usize,
    },
    /// A driver call failed.
    #[error("CUDA device {ordinal}: {step}: {source}")]
    Driver {
        /// The device.
        ordinal: usize,
        /// What was being done.
        step: &'static str,
        /// The driver's error.
        #[source]
        source: DriverError,
    },
    /// No build-time PTX for a kernel module and no NVRTC to compile it.
    #[error("kernel module `{module}`: no PTX from build time and NVRTC (libnvrtc) cannot be loaded")]
    NoCompiler {
        /// The module (`kernels/<module>.cu`).
        module: &'static str,
    },
    /// NVRTC rejected a kernel module.
    #[error("kernel module `{module}` does not compile with NVRTC: {reason}")]
    Compile {
        /// The module.
        module: &'static str,
        /// NVRTC's log.
        reason: String,
    },
    /// The host worker pool could not start.
    #[error("starting the host workers: {0}")]
    Pool(#[from] rayon::ThreadPoolBuildError),
}

/// The most streams a backend opens (one per host worker up to this).
const MAX_STREAMS: usize = 32;
/// Device memory for the transformed weights of one group of [`Backend::mul_acc_sparse`]'s
/// outputs.
const SPARSE_DEVICE_BYTES: usize = 1 << 30;
/// Threads per block of the element-wise kernels.
const BLOCK: u32 = 256;
/// Shared memory every device gives a block without opting in.
const DEFAULT_SHARED: usize = 48 << 10;

/// The kernels, loaded into one context.
#[derive(Debug)]
struct Kernels {
    ntt_forward: CudaFunction,
    ntt_inverse: CudaFunction,
    mul_acc: CudaFunction,
    mul_acc_into: CudaFunction,
    base_convert: CudaFunction,
    automorphism: CudaFunction,
    divide_by_prime: CudaFunction,
    lift_digits: CudaFunction,
    tensor_sum: CudaFunction,
    hat_rows: CudaFunction,
    transpose_runs: CudaFunction,
    spread_heads: CudaFunction,
    hash_blocks: CudaFunction,
}

/// Twiddle tables resident on the device.
#[derive(Debug)]
struct DeviceTwiddles {
    psi: CudaSlice<u64>,
    psi_shoup: CudaSlice<u64>,
    psi_inv: CudaSlice<u64>,
    psi_inv_shoup: CudaSlice<u64>,
}

/// A buffer of u64 values resident on the backend's device.
#[derive(Debug)]
pub struct DeviceVec(CudaSlice<u64>);

impl DeviceVec {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

/// The CUDA implementation of [`Backend`] on one device.
pub struct CudaBackend {
    ordinal: usize,
    device: String,
    /// One stream per host worker ([`CudaBackend::stream`]).
    streams: Vec<Arc<CudaStream>>,
    kernels: Kernels,
    twiddles: Mutex<HashMap<(u64, usize), Arc<DeviceTwiddles>>>,
    /// The prime lists the kernels were given, resident (a list serves every later call).
    primes: Mutex<HashMap<Vec<u64>, Arc<DeviceVec>>>,
    /// The constants of the product conversions, resident ([`CudaBackend::conversion_constants`]).
    conversions: Mutex<HashMap<Vec<u64>, Arc<[DeviceVec; 4]>>>,
    /// Largest dynamic shared memory a block may use on this device (opt-in included).
    max_shared: usize,
    /// Dynamic shared memory the NTT kernels are currently allowed.
    ntt_shared: Mutex<usize>,
    host: CpuBackend,
    offload: Offload,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.ordinal)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl CudaBackend {
    /// Number of CUDA devices on this machine (0 where there is no driver).
    pub fn device_count() -> usize {
        if !driver_present() {
            return 0;
        }
        CudaContext::device_count().map_or(0, |n| usize::try_from(n).unwrap_or(0))
    }

    /// The backend on device `ordinal`, with `threads` host workers for the protocols' host-side
    /// work (0: one per core).
    pub fn new(ordinal: usize, threads: usize) -> Result<CudaBackend, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let count = Self::device_count();
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let fail = |step| move |source| CudaError::Driver { ordinal, step, source };
        let ctx = CudaContext::new(ordinal).map_err(fail("creating a context"))?;
        let device = ctx.name().map_err(fail("reading the device name"))?;
        let optin = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(fail("reading the shared memory limit"))?;
        let host = CpuBackend::new(threads)?;
        let streams = (0..host.threads().clamp(1, MAX_STREAMS))
            .map(|_| ctx.new_stream().map_err(fail("creating a stream")))
            .collect::<Result<_, _>>()?;
        let mut modules = HashMap::new();
        for source in &MODULES {
            modules.insert(source.name, load_module(&ctx, source, ordinal)?);
        }
        let function = |module: &str, name: &'static str| {
            modules[module].load_function(name).map_err(fail("finding a kernel in its module"))
        };
        let kernels = Kernels {
            ntt_forward: function("ntt", "ntt_forward")?,
            ntt_inverse: function("ntt", "ntt_inverse")?,
            mul_acc: function("mac", "mul_acc")?,
            mul_acc_into: function("mac", "mul_acc_into")?,
            base_convert: function("mac", "base_convert")?,
            automorphism: function("mac", "automorphism")?,
            divide_by_prime: function("mac", "divide_by_prime")?,
            lift_digits: function("mac", "lift_digits")?,
            tensor_sum: function("mac", "tensor_sum")?,
            hat_rows: function("mac", "hat_rows")?,
            transpose_runs: function("mac", "transpose_runs")?,
            spread_heads: function("mac", "spread_heads")?,
            hash_blocks: function("hash", "hash_blocks")?,
        };
        tracing::info!(ordinal, device = %device, "CUDA backend started");
        Ok(CudaBackend {
            ordinal,
            device,
            streams,
            kernels,
            twiddles: Mutex::new(HashMap::new()),
            primes: Mutex::new(HashMap::new()),
            conversions: Mutex::new(HashMap::new()),
            max_shared: usize::try_from(optin).unwrap_or(0).max(DEFAULT_SHARED),
            ntt_shared: Mutex::new(DEFAULT_SHARED),
            host,
            offload: Offload::Held,
        })
    }

    /// This backend under the offload policy `offload` ([`Offload::Held`] when it starts;
    /// [`Offload::Everything`] for tests and kernel benchmarks).
    pub fn with_offload(mut self, offload: Offload) -> CudaBackend {
        self.offload = offload;
        self
    }

    /// Whether a single kernel's host-slice call on these (possibly empty) values runs on the
    /// host: unless every call is offloaded, and where there is nothing to copy (the driver
    /// allocates no empty buffer).
    fn on_host(&self, values: &[u64]) -> bool {
        self.offload != Offload::Everything || values.is_empty()
    }

    /// One backend per device present (experts can be spread over them: selection sums are
    /// additive over experts, see [`crate::he::select_spread`]).
    pub fn all(threads: usize) -> Result<Vec<CudaBackend>, CudaError> {
        (0..Self::device_count()).map(|ordinal| CudaBackend::new(ordinal, threads)).collect()
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The calling host thread's stream: one per worker of the pool it runs on (by its index),
    /// so that the pipelines of different workers queue, copy and wait independently — one
    /// worker's download waits for its own work only, and the device overlaps one's copies with
    /// another's kernels. cudarc orders the uses of a buffer across streams with events.
    fn stream(&self) -> &Arc<CudaStream> {
        &self.streams[rayon::current_thread_index().unwrap_or(0) % self.streams.len()]
    }

    fn fail(&self, step: &'static str) -> impl Fn(DriverError) -> CudaError + '_ {
        move |source| CudaError::Driver { ordinal: self.ordinal, step, source }
    }

    /// Copies `host` to a new device buffer.
    pub fn upload(&self, host: &[u64]) -> Result<DeviceVec, CudaError> {
        self.stream().clone_htod(host).map(DeviceVec).map_err(self.fail("copying to the device"))
    }

    /// A device buffer of `len` zeros.
    pub fn zeros(&self, len: usize) -> Result<DeviceVec, CudaError> {
        self.stream().alloc_zeros(len).map(DeviceVec).map_err(self.fail("allocating device memory"))
    }

    /// Copies `dev` into `host` (same length) and waits for it.
    pub fn download(&self, dev: &DeviceVec, host: &mut [u64]) -> Result<(), CudaError> {
        self.stream().memcpy_dtoh(&dev.0, host).map_err(self.fail("copying from the device"))?;
        self.synchronize()
    }

    /// Waits until every kernel and copy the calling thread queued has finished.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream().synchronize().map_err(self.fail("waiting for the device"))
    }

    fn twiddles_of(&self, table: &NttTable) -> Result<Arc<DeviceTwiddles>, CudaError> {
        let key = (table.modulus().value(), table.degree());
        let mut cache = self.twiddles.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.get(&key) {
            return Ok(t.clone());
        }
        let tw = table.twiddles();
        let up = |v: &[u64]| self.stream().clone_htod(v).map_err(self.fail("uploading twiddles"));
        let t = Arc::new(DeviceTwiddles {
            psi: up(tw.psi)?,
            psi_shoup: up(tw.psi_shoup)?,
            psi_inv: up(tw.psi_inv)?,
            psi_inv_shoup: up(tw.psi_inv_shoup)?,
        });
        cache.insert(key, t.clone());
        Ok(t)
    }

    /// The launch shape of a transform of degree `n` over `count` polynomials, and whether the
    /// polynomial fits in shared memory (allowing the kernels that much when it needs opting in).
    fn ntt_launch(&self, n: usize, count: usize) -> Result<(LaunchConfig, i32), CudaError> {
        let bytes = n * 8;
        let in_shared = bytes <= self.max_shared;
        if in_shared {
            let mut allowed = self.ntt_shared.lock().unwrap_or_else(|e| e.into_inner());
            if bytes > *allowed {
                let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                let value = i32::try_from(bytes).unwrap_or(i32::MAX);
                for f in [&self.kernels.ntt_forward, &self.kernels.ntt_inverse] {
                    f.set_attribute(attr, value).map_err(self.fail("allowing the NTT more shared memory"))?;
                }
                *allowed = bytes;
            }
        }
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from(count).unwrap_or(u32::MAX), 1, 1),
            block_dim: (u32::try_from((n / 2).clamp(1, 1024)).unwrap_or(1024), 1, 1),
            shared_mem_bytes: if in_shared { u32::try_from(bytes).unwrap_or(0) } else { 0 },
        };
        Ok((cfg, i32::from(in_shared)))
    }

    /// Launches one NTT kernel per table over its limb's block of `polys` (limb-major):
    /// forward with `Some(support)`, else inverse.
    fn ntt_launches(
        &self,
        tables: &[NttTable],
        polys: &mut DeviceVec,
        forward: Option<usize>,
    ) -> Result<(), CudaError> {
        let Some(n) = tables.first().map(NttTable::degree) else { return Ok(()) };
        let count = polys.len() / (n * tables.len());
        if count == 0 {
            return Ok(());
        }
        for (l, table) in tables.iter().enumerate() {
            let tw = self.twiddles_of(table)?;
            let host = table.twiddles();
            let (cfg, in_shared) = self.ntt_launch(n, count)?;
            let offset = (l * count * n) as u64;
            let (p, n32) = (table.modulus().value(), n as u32);
            let support = forward.map_or(n32, |s| s.clamp(1, n).next_power_of_two() as u32);
            let ((n_inv, n_inv_shoup), (last, last_shoup)) = (host.n_inv, host.last_inv);
            let kernel = if forward.is_some() { &self.kernels.ntt_forward } else { &self.kernels.ntt_inverse };
            let mut args = self.stream().launch_builder(kernel);
            args.arg(&mut polys.0).arg(&offset);
            if forward.is_some() {
                args.arg(&tw.psi).arg(&tw.psi_shoup).arg(&p).arg(&n32).arg(&support);
            } else {
                args.arg(&tw.psi_inv).arg(&tw.psi_inv_shoup).arg(&p).arg(&n32);
                args.arg(&n_inv).arg(&n_inv_shoup).arg(&last).arg(&last_shoup);
            }
            args.arg(&in_shared);
            // SAFETY: the arguments match the kernels' signatures in kernels/ntt.cu; the grid
            // covers the `count` polynomials of this limb's block, offset + count·N ≤ the
            // buffer's length, and the tables hold N values each.
            unsafe { args.launch(cfg) }.map_err(self.fail("launching an NTT"))?;
        }
        Ok(())
    }

    /// [`Backend::ntt_forward_sparse`] on resident polynomials (`support` = N: every
    /// coefficient). The caller checks the shapes (as the trait method does).
    pub fn ntt_forward_on_device(
        &self,
        tables: &[NttTable],
        polys: &mut DeviceVec,
        support: usize,
    ) -> Result<(), CudaError> {
        self.ntt_launches(tables, polys, Some(support))
    }

    /// [`Backend::ntt_inverse`] on resident polynomials.
    pub fn ntt_inverse_on_device(&self, tables: &[NttTable], polys: &mut DeviceVec) -> Result<(), CudaError> {
        self.ntt_launches(tables, polys, None)
    }

    /// [`Backend::mul_acc`] on resident data over every limb of `moduli`: `consts` are the Shoup
    /// constants of `w` when `prepared_w`, else of `x`. The caller checks the shapes (as the
    /// trait method does).
    #[allow(clippy::too_many_arguments)]
    pub fn mul_acc_on_device(
        &self,
        moduli: &[Modulus],
        n: usize,
        x: &DeviceVec,
        w: &DeviceVec,
        consts: &DeviceVec,
        prepared_w: bool,
        out: &mut DeviceVec,
    ) -> Result<(), CudaError> {
        let total = out.len() as u64;
        if total == 0 || moduli.is_empty() {
            return Ok(());
        }
        let primes = self.primes(moduli)?;
        let limbs = moduli.len();
        let (n32, inputs, outputs) = (n as u32, (x.len() / (n * limbs)) as u32, (out.len() / (n * limbs)) as u32);
        let flag = i32::from(prepared_w);
        let mut args = self.stream().launch_builder(&self.kernels.mul_acc);
        args.arg(&mut out.0).arg(&x.0).arg(&w.0).arg(&consts.0).arg(&primes.0);
        args.arg(&n32).arg(&inputs).arg(&outputs).arg(&total).arg(&flag);
        // SAFETY: kernels/mac.cu `mul_acc`; one thread per output value, the inputs as long as the
        // shapes the caller checked, one prime per limb.
        unsafe { args.launch(elementwise(total)) }.map(drop).map_err(self.fail("launching mul_acc"))
    }

    /// [`Backend::mul_acc_held`] on resident data, its results added to `out`: one launch per
    /// (entry, limb) on views of the held runs (the range `x` names), the weights and the sums,
    /// so nothing is copied. The caller checks the shapes.
    #[allow(clippy::too_many_arguments)]
    fn mul_acc_runs_on_device(
        &self,
        moduli: &[Modulus],
        n: usize,
        batch: usize,
        x: (&DeviceVec, HeldRuns<'_>),
        w: &DeviceVec,
        consts: &DeviceVec,
        out: &mut DeviceVec,
    ) -> Result<(), CudaError> {
        let (values, runs) = x;
        let limbs = moduli.len();
        if out.is_empty() || limbs == 0 || runs.count == 0 {
            return Ok(());
        }
        let primes = self.primes(moduli)?;
        let outputs = out.len() / (batch * limbs * n);
        let (per_w, per_out) = (outputs * runs.count * n, outputs * n);
        let (n32, inputs, outputs32, total) = (n as u32, runs.count as u32, outputs as u32, per_out as u64);
        let flag = 1i32;
        for b in 0..batch {
            for l in 0..limbs {
                let from = runs.offset(n, limbs, b, l);
                let xv = values.0.slice(from..from + runs.count * n);
                let wv = w.0.slice(l * per_w..(l + 1) * per_w);
                let cv = consts.0.slice(l * per_w..(l + 1) * per_w);
                let pv = primes.0.slice(l..l + 1);
                let at = (b * limbs + l) * per_out;
                let mut ov = out.0.slice_mut(at..at + per_out);
                let mut args = self.stream().launch_builder(&self.kernels.mul_acc_into);
                args.arg(&mut ov).arg(&xv).arg(&wv).arg(&cv).arg(&pv);
                args.arg(&n32).arg(&inputs).arg(&outputs32).arg(&total).arg(&flag);
                // SAFETY: kernels/mac.cu `mul_acc_into`; one thread per output value of the view,
                // the views as long as one limb's shapes, which the caller checked.
                unsafe { args.launch(elementwise(total)) }.map(drop).map_err(self.fail("launching mul_acc_into"))?;
            }
        }
        Ok(())
    }

    /// [`Backend::mul_acc_sparse`] as one pipeline on the device: the inputs and their Shoup
    /// constants `x` copied in once, then per group of outputs whose transformed weights fit
    /// `budget` bytes, the group's heads copied in, spread to whole polynomials
    /// (`spread_heads`), transformed (the NTT's first stages skipped above `support`) and
    /// multiplied with every batch entry's inputs (`mul_acc`), the sums copied out — no
    /// transformed weight crosses the bus. The caller checks the heads (as the trait method
    /// does); the rest of the shapes are checked here.
    #[allow(clippy::too_many_arguments)]
    pub fn mul_acc_sparse_on_device(
        &self,
        tables: &[NttTable],
        batch: usize,
        x: (&[u64], &[u64]),
        heads: &[u64],
        support: usize,
        out: &mut [u64],
        budget: usize,
    ) -> Result<(), BackendError> {
        let (x, consts) = x;
        let n = tables.first().map_or(1, NttTable::degree);
        let polys = super::check_sparse_heads(tables, heads, support, Prepared::X(consts))?;
        let moduli: Vec<Modulus> = tables.iter().map(|t| *t.modulus()).collect();
        let (inputs, outputs) =
            super::check_mul_acc(&moduli, n, batch, x.len(), polys * n, consts.len(), x.len(), out.len())?;
        let limbs = moduli.len();
        if out.is_empty() || inputs == 0 {
            out.fill(0);
            return Ok(());
        }
        let (dx, dc) = (self.upload(x)?, self.upload(consts)?);
        let primes = self.primes(&moduli)?;
        let (per_x, per_out) = (limbs * inputs * n, limbs * outputs * n);
        let group = (budget / (limbs * inputs * n * 8).max(1)).clamp(1, outputs);
        for first in (0..outputs).step_by(group) {
            let g = group.min(outputs - first);
            let dh = self.upload(&super::kernels::group_heads(heads, outputs, inputs * support, first, g))?;
            let total = (limbs * g * inputs * n) as u64;
            let mut w = self.zeros(limbs * g * inputs * n)?;
            let (support32, n32) = (support as u32, n as u32);
            let mut args = self.stream().launch_builder(&self.kernels.spread_heads);
            args.arg(&mut w.0).arg(&dh.0).arg(&support32).arg(&n32).arg(&total);
            // SAFETY: kernels/mac.cu `spread_heads`; one thread per value of `w`, which holds
            // total values, reading heads[(idx / n)·support + c] for c < support, all in `dh`.
            unsafe { args.launch(elementwise(total)) }.map_err(self.fail("launching spread_heads"))?;
            self.ntt_forward_on_device(tables, &mut w, support)?;
            let mut sums = self.zeros(limbs * g * n)?;
            let (inputs32, g32, sums_len) = (inputs as u32, g as u32, (limbs * g * n) as u64);
            let flag = 0i32;
            for (b, ob) in out.chunks_exact_mut(per_out).enumerate() {
                let (xv, cv) = (dx.0.slice(b * per_x..(b + 1) * per_x), dc.0.slice(b * per_x..(b + 1) * per_x));
                let mut args = self.stream().launch_builder(&self.kernels.mul_acc);
                args.arg(&mut sums.0).arg(&xv).arg(&w.0).arg(&cv).arg(&primes.0);
                args.arg(&n32).arg(&inputs32).arg(&g32).arg(&sums_len).arg(&flag);
                // SAFETY: kernels/mac.cu `mul_acc`; one thread per value of `sums` (L·g runs), the
                // entry's inputs and constants L·I runs, the group's weights L·g·I runs.
                unsafe { args.launch(elementwise(sums_len)) }.map_err(self.fail("launching mul_acc"))?;
                for l in 0..limbs {
                    let host = &mut ob[(l * outputs + first) * n..][..g * n];
                    let view = sums.0.slice(l * g * n..(l + 1) * g * n);
                    self.stream().memcpy_dtoh(&view, host).map_err(self.fail("copying from the device"))?;
                }
                self.synchronize()?;
            }
        }
        Ok(())
    }

    /// [`Backend::automorphism`] on resident polynomials (`out` as long as `input`).
    pub fn automorphism_on_device(
        &self,
        moduli: &[Modulus],
        n: usize,
        element: usize,
        input: &DeviceVec,
        out: &mut DeviceVec,
    ) -> Result<(), CudaError> {
        let total = input.len() as u64;
        if total == 0 || moduli.is_empty() {
            return Ok(());
        }
        let primes = self.primes(moduli)?;
        let (per_limb, n32, g) = (input.len() as u64 / (n * moduli.len()) as u64, n as u32, element as u64);
        let mut args = self.stream().launch_builder(&self.kernels.automorphism);
        args.arg(&mut out.0).arg(&input.0).arg(&primes.0).arg(&per_limb).arg(&n32).arg(&g).arg(&total);
        // SAFETY: kernels/mac.cu `automorphism`; one thread per input value, `out` as long.
        unsafe { args.launch(elementwise(total)) }.map(drop).map_err(self.fail("launching automorphism"))
    }

    /// [`Backend::divide_by_prime`] on resident residues.
    pub fn divide_by_prime_on_device(
        &self,
        moduli: &[Modulus],
        n: usize,
        low: &mut DeviceVec,
        top: &DeviceVec,
        p_top: &Modulus,
    ) -> Result<(), BackendError> {
        let total = low.len() as u64;
        if total == 0 || moduli.is_empty() {
            return Ok(());
        }
        let consts: Vec<u64> = super::divide_constants(moduli, p_top)?.into_iter().flatten().collect();
        let primes = self.primes(moduli)?;
        let consts = self.upload(&consts)?;
        let (polys, n32, pt) = (top.len() as u64 / n as u64, n as u32, p_top.value());
        let mut args = self.stream().launch_builder(&self.kernels.divide_by_prime);
        args.arg(&mut low.0).arg(&top.0).arg(&primes.0).arg(&consts.0).arg(&pt).arg(&polys).arg(&n32).arg(&total);
        // SAFETY: kernels/mac.cu `divide_by_prime`; one thread per low residue, `top` one run per
        // polynomial, three constants per prime.
        unsafe { args.launch(elementwise(total)) }.map_err(self.fail("launching divide_by_prime"))?;
        Ok(())
    }

    /// [`Backend::key_switch`] with the key resident (`rows`, `shoup`: [`SwitchKeyRows`]'s
    /// layout): c goes in, the sums come out, and every step between runs on the device — the
    /// digits lifted (`lift_digits`) to q' and to P, transformed, one `mul_acc` per limb and half
    /// on views of the key's rows (a row's first k digits), transformed back, divided by P. The
    /// order and layouts are those of `backend::kernels`'s host test of this pipeline. The caller
    /// checks the shapes.
    #[allow(clippy::too_many_arguments)]
    fn key_switch_on_device(
        &self,
        q: &[NttTable],
        special: Option<&NttTable>,
        (rows, shoup, digits): (&DeviceVec, &DeviceVec, usize),
        c: &[u64],
        coeff_out: bool,
        out: &mut [u64],
    ) -> Result<(), BackendError> {
        let (n, k) = (q[0].degree(), q.len());
        let moduli: Vec<Modulus> = q.iter().chain(special).map(|t| *t.modulus()).collect();
        // [q_0..q_(k−1), P]
        let primes = self.primes(&moduli)?;
        let dc = self.upload(c)?;
        let lift = |targets: std::ops::Range<usize>| -> Result<DeviceVec, CudaError> {
            let mut digits_of = self.zeros(targets.len() * k * n)?;
            let (total, n32, k32) = (digits_of.len() as u64, n as u32, k as u32);
            let tv = primes.0.slice(targets);
            let mut args = self.stream().launch_builder(&self.kernels.lift_digits);
            args.arg(&mut digits_of.0).arg(&dc.0).arg(&tv).arg(&n32).arg(&k32).arg(&total);
            // SAFETY: kernels/mac.cu `lift_digits`; one thread per output value, `c` k·N values,
            // one target prime per block of k·N outputs.
            unsafe { args.launch(elementwise(total)) }.map_err(self.fail("launching lift_digits"))?;
            Ok(digits_of)
        };
        let mut dq = lift(0..k)?;
        self.ntt_forward_on_device(q, &mut dq, n)?;
        let dp = match special {
            Some(p) => {
                let mut d = lift(k..k + 1)?;
                self.ntt_forward_on_device(std::slice::from_ref(p), &mut d, n)?;
                Some(d)
            }
            None => None,
        };
        let (mut low, mut top) = (self.zeros(k * 2 * n)?, self.zeros(2 * n)?);
        let (n32, k32, total, flag) = (n as u32, k as u32, n as u64, 1i32);
        for l in 0..moduli.len() {
            let (x, row, sums, at) = match &dp {
                Some(dp) if l == k => (dp.0.slice(0..k * n), digits, &mut top, 0),
                _ => (dq.0.slice(l * k * n..(l + 1) * k * n), l, &mut low, l * 2 * n),
            };
            for h in 0..2 {
                let from = (row * 2 + h) * digits * n;
                let (wv, cv, pv) =
                    (rows.0.slice(from..from + k * n), shoup.0.slice(from..from + k * n), primes.0.slice(l..l + 1));
                let mut ov = sums.0.slice_mut(at + h * n..at + (h + 1) * n);
                let mut args = self.stream().launch_builder(&self.kernels.mul_acc);
                args.arg(&mut ov).arg(&x).arg(&wv).arg(&cv).arg(&pv);
                args.arg(&n32).arg(&k32).arg(&1u32).arg(&total).arg(&flag);
                // SAFETY: kernels/mac.cu `mul_acc`; one thread per output value of the view, k
                // inputs and k weights with their constants, one prime.
                unsafe { args.launch(elementwise(total)) }.map_err(self.fail("launching mul_acc"))?;
            }
        }
        match special {
            Some(p) => {
                self.ntt_inverse_on_device(q, &mut low)?;
                self.ntt_inverse_on_device(std::slice::from_ref(p), &mut top)?;
                self.divide_by_prime_on_device(&moduli[..k], n, &mut low, &top, p.modulus())?;
            }
            None if coeff_out => self.ntt_inverse_on_device(q, &mut low)?,
            None => {}
        }
        Ok(self.download(&low, out)?)
    }

    /// [`Backend::tensor_sum`] on resident operands (`a`, `b`: runs of two-part operands over
    /// every limb of `moduli`, read from their operand `first` on; `out`: three parts, added to
    /// when `add`). The caller checks the shapes.
    #[allow(clippy::too_many_arguments)]
    pub fn tensor_sum_on_device(
        &self,
        moduli: &[Modulus],
        n: usize,
        terms: usize,
        (a, a_first): (&DeviceVec, usize),
        (b, b_first): (&DeviceVec, usize),
        add: bool,
        out: &mut DeviceVec,
    ) -> Result<(), CudaError> {
        let total = out.len() as u64;
        if total == 0 {
            return Ok(());
        }
        if terms == 0 {
            return match add {
                true => Ok(()),
                false => self.stream().memset_zeros(&mut out.0).map_err(self.fail("clearing device memory")),
            };
        }
        let each = 2 * moduli.len() * n;
        let (av, bv) =
            (a.0.slice(a_first * each..(a_first + terms) * each), b.0.slice(b_first * each..(b_first + terms) * each));
        let primes = self.primes(moduli)?;
        let mus = self.upload(&super::kernels::barrett_constants(moduli))?;
        let (n32, limbs, terms, flag) = (n as u32, moduli.len() as u32, terms as u64, i32::from(add));
        let mut args = self.stream().launch_builder(&self.kernels.tensor_sum);
        args.arg(&mut out.0).arg(&av).arg(&bv).arg(&primes.0).arg(&mus.0);
        args.arg(&n32).arg(&limbs).arg(&terms).arg(&flag).arg(&total);
        // SAFETY: kernels/mac.cu `tensor_sum`; one thread per output value, the views hold `terms`
        // operands of 2 × limbs × N values (the shapes the caller checked), two constants per limb.
        unsafe { args.launch(elementwise(total)) }.map(drop).map_err(self.fail("launching tensor_sum"))
    }

    /// [`Backend::base_convert`] on resident rows (`consts` flat: constant, Shoup constant).
    pub fn base_convert_on_device(
        &self,
        moduli: &[Modulus],
        n: usize,
        x: &DeviceVec,
        consts: &DeviceVec,
        out: &mut DeviceVec,
    ) -> Result<(), CudaError> {
        if out.is_empty() {
            return Ok(());
        }
        let primes = self.primes(moduli)?;
        let (outputs, total) = (moduli.len(), out.len() as u64);
        let (n32, i32_, o32) = (n as u32, (consts.len() / (2 * outputs)) as u32, outputs as u32);
        let mut args = self.stream().launch_builder(&self.kernels.base_convert);
        args.arg(&mut out.0).arg(&x.0).arg(&consts.0).arg(&primes.0).arg(&n32).arg(&i32_).arg(&o32);
        // SAFETY: kernels/mac.cu `base_convert`; `x` holds one row of n per constant pair and
        // output, `out` one row per output modulus.
        unsafe { args.launch(elementwise(total)) }.map(drop).map_err(self.fail("launching base_convert"))
    }

    /// The first step of a conversion out of the basis `moduli` (`x`: a row of n per prime,
    /// coefficient form): the z rows, the overflow row and, with θ, the rounded fraction
    /// (`hat_rows`, one thread per coefficient).
    fn hat_rows_on_device(
        &self,
        moduli: &[Modulus],
        n: usize,
        x: &DeviceVec,
        [hat, inv, theta]: [&DeviceVec; 3],
        theta_rows: usize,
    ) -> Result<DeviceVec, CudaError> {
        let rows = moduli.len();
        let mut z = self.zeros((rows + 1 + usize::from(theta_rows > 0)) * n)?;
        let primes = self.primes(moduli)?;
        let (r32, t32, n32) = (rows as u32, theta_rows as u32, n as u32);
        let mut args = self.stream().launch_builder(&self.kernels.hat_rows);
        args.arg(&mut z.0).arg(&x.0).arg(&hat.0).arg(&inv.0).arg(&theta.0).arg(&primes.0);
        args.arg(&r32).arg(&t32).arg(&n32);
        // SAFETY: kernels/mac.cu `hat_rows`; one thread per coefficient, `x` a row of n per prime,
        // `z` the rows + 1 (+ 1 with θ) rows written, a pair of `hat` and a value of `inv` per
        // prime, a pair of `theta` per fraction row.
        unsafe { args.launch(elementwise(n as u64)) }.map_err(self.fail("launching hat_rows"))?;
        Ok(z)
    }

    /// A conversion's constants in device memory — the hat constants, 1/r, θ (a one-word
    /// placeholder when there is none: the driver allocates no empty buffer) and the base
    /// conversion's rows — uploaded once per parameter set and level (cached by their values,
    /// as the prime lists are).
    fn conversion_constants(
        &self,
        constants: HatConstants<'_>,
        rows: &[(u64, u64)],
    ) -> Result<Arc<[DeviceVec; 4]>, CudaError> {
        let [hat, inv, theta] = constants.words();
        let theta = if theta.is_empty() { vec![0] } else { theta };
        let rows: Vec<u64> = rows.iter().flat_map(|&(c, s)| [c, s]).collect();
        let parts = [hat, inv, theta, rows];
        let key: Vec<u64> =
            parts.iter().flat_map(|part| std::iter::once(part.len() as u64).chain(part.iter().copied())).collect();
        let mut cache = self.conversions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = cache.get(&key) {
            return Ok(found.clone());
        }
        let [hat, inv, theta, rows] = parts;
        let uploaded = Arc::new([self.upload(&hat)?, self.upload(&inv)?, self.upload(&theta)?, self.upload(&rows)?]);
        cache.insert(key, uploaded.clone());
        Ok(uploaded)
    }

    /// Moves the runs of n values of `input` (`rows` × `cols` runs, [row][col][N]) to run
    /// first + row of column col's block of `width` runs in `out` ([col][width][N]):
    /// limb-major batches to operand order and back (`transpose_runs`).
    #[allow(clippy::too_many_arguments)]
    fn transpose_on_device(
        &self,
        out: &mut DeviceVec,
        input: &DeviceVec,
        cols: usize,
        width: usize,
        first: usize,
        n: usize,
    ) -> Result<(), CudaError> {
        let total = input.len() as u64;
        let (cols, width, first, n32) = (cols as u64, width as u64, first as u64, n as u32);
        let mut args = self.stream().launch_builder(&self.kernels.transpose_runs);
        args.arg(&mut out.0).arg(&input.0).arg(&cols).arg(&width).arg(&first).arg(&n32).arg(&total);
        // SAFETY: kernels/mac.cu `transpose_runs`; one thread per input value, every destination
        // run (col·width + first + row < cols·width) inside `out`, which the callers size.
        unsafe { args.launch(elementwise(total)) }.map(drop).map_err(self.fail("launching transpose_runs"))
    }

    /// [`Backend::extend_basis`] on the device, all polynomials at once: limb-major (one
    /// transform launch per limb over every polynomial), the Q limbs transformed (or brought to
    /// coefficients), the hat rows and overflow row and the base conversion to P over all
    /// polynomials' coefficients in one launch each (their math is per coefficient), P
    /// transformed, both moved to operand order in the lifted buffer that stays resident. The
    /// caller checks the shapes; the order is that of `backend::kernels`'s host test.
    fn extend_basis_on_device(&self, basis: &TensorBasis, x: &[u64], ntt_form: bool) -> Result<DeviceVec, CudaError> {
        let (k, n, width) = (basis.level(), basis.degree(), basis.len());
        let count = x.len() / (k * n);
        let (q, p) = basis.tables.split_at(k);
        let constants = self.conversion_constants(basis.hat_constants(false), &basis.extend_rows)?;
        let [hat, inv, theta, rows] = &*constants;
        // [limb][poly][N]
        let mut major = vec![0u64; x.len()];
        for (i, poly) in x.chunks_exact(k * n).enumerate() {
            for (l, limb) in poly.chunks_exact(n).enumerate() {
                major[(l * count + i) * n..][..n].copy_from_slice(limb);
            }
        }
        let (mut low, mut coeff) = (self.upload(&major)?, self.upload(&major)?);
        if ntt_form {
            self.ntt_inverse_on_device(q, &mut coeff)?;
        } else {
            self.ntt_forward_on_device(q, &mut low, n)?;
        }
        let z = self.hat_rows_on_device(&basis.moduli[..k], count * n, &coeff, [hat, inv, theta], 0)?;
        let mut high = self.zeros((width - k) * count * n)?;
        self.base_convert_on_device(&basis.moduli[k..], count * n, &z, rows, &mut high)?;
        self.ntt_forward_on_device(p, &mut high, n)?;
        let mut out = self.zeros(count * width * n)?;
        self.transpose_on_device(&mut out, &low, count, width, 0, n)?;
        self.transpose_on_device(&mut out, &high, count, width, k, n)?;
        Ok(out)
    }

    /// [`Backend::scale_down`] on resident sums, all polynomials at once: moved to limb-major,
    /// transformed back over Q∪P, the hat rows with the overflow and the rounded fraction and
    /// the base conversion to Q over all coefficients, moved back to operand order; one download
    /// of the results. The caller checks the shapes.
    fn scale_down_on_device(&self, basis: &TensorBasis, x: &DeviceVec, out: &mut [u64]) -> Result<(), CudaError> {
        let (k, n, width) = (basis.level(), basis.degree(), basis.len());
        let count = out.len() / (k * n);
        let constants = self.conversion_constants(basis.hat_constants(true), &basis.scale_rows)?;
        let [hat, inv, theta, rows] = &*constants;
        let mut major = self.zeros(x.len())?;
        self.transpose_on_device(&mut major, x, width, count, 0, n)?;
        self.ntt_inverse_on_device(&basis.tables, &mut major)?;
        let z = self.hat_rows_on_device(&basis.moduli, count * n, &major, [hat, inv, theta], k)?;
        let mut rounded = self.zeros(out.len())?;
        self.base_convert_on_device(&basis.moduli[..k], count * n, &z, rows, &mut rounded)?;
        let mut results = self.zeros(out.len())?;
        self.transpose_on_device(&mut results, &rounded, count, k, 0, n)?;
        self.download(&results, out)
    }

    /// [`Backend::hash_blocks`] in place on resident blocks (two words each), tweaks base + i.
    pub fn hash_on_device(&self, blocks: &mut DeviceVec, base: u64) -> Result<(), CudaError> {
        let dummy = self.zeros(1)?;
        self.hash_launch(blocks, &dummy, base, false)
    }

    fn hash_launch(
        &self,
        blocks: &mut DeviceVec,
        tweaks: &DeviceVec,
        base: u64,
        listed: bool,
    ) -> Result<(), CudaError> {
        let count = (blocks.len() / 2) as u64;
        if count == 0 {
            return Ok(());
        }
        let flag = i32::from(listed);
        let mut args = self.stream().launch_builder(&self.kernels.hash_blocks);
        args.arg(&mut blocks.0).arg(&tweaks.0).arg(&base).arg(&count).arg(&flag);
        // SAFETY: kernels/hash.cu `hash_blocks`; `tweaks` holds `count` values when `listed`.
        unsafe { args.launch(elementwise(count)) }.map(drop).map_err(self.fail("launching hash_blocks"))
    }

    /// Whether every buffer is one this backend reads: host memory, or this device's; else the
    /// error naming where the first other one is.
    fn readable(&self, buffers: &[&Buffer]) -> Result<(), BackendError> {
        let here = |b: &&Buffer| match &b.0 {
            Held::Host(_) => true,
            Held::Device { ordinal, .. } => *ordinal == self.ordinal,
        };
        match buffers.iter().find(|b| !here(b)) {
            Some(bad) => Err(super::foreign("cuda", bad)),
            None => Ok(()),
        }
    }

    /// The primes of `moduli` in device memory (the kernels' per-limb moduli).
    /// Uploaded once per list: every launch reads its limbs' primes, and most calls come with
    /// the few lists of a parameter set.
    fn primes(&self, moduli: &[Modulus]) -> Result<Arc<DeviceVec>, CudaError> {
        let list: Vec<u64> = moduli.iter().map(Modulus::value).collect();
        let mut cache = self.primes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(primes) = cache.get(&list) {
            return Ok(primes.clone());
        }
        let primes = Arc::new(self.upload(&list)?);
        cache.insert(list, primes.clone());
        Ok(primes)
    }

    /// Copies `values` in, runs `run` on the device copy and copies the result back.
    fn in_place(
        &self,
        values: &mut [u64],
        run: impl FnOnce(&mut DeviceVec) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let mut dev = self.upload(values)?;
        run(&mut dev)?;
        Ok(self.download(&dev, values)?)
    }
}

/// The device copy of a buffer: its own values, or the copy `staged` for this call.
fn resident<'a>(buffer: &'a Buffer, staged: &'a Option<DeviceVec>) -> &'a DeviceVec {
    match (&buffer.0, staged) {
        (_, Some(copy)) => copy,
        (Held::Device { values, .. }, None) => values,
        (Held::Host(_), None) => unreachable!("a host buffer is staged before it is read on the device"),
    }
}

/// One thread per element, in blocks of [`BLOCK`].
fn elementwise(total: u64) -> LaunchConfig {
    let blocks = total.div_ceil(u64::from(BLOCK));
    LaunchConfig {
        grid_dim: (u32::try_from(blocks).unwrap_or(u32::MAX), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn driver_present() -> bool {
    // SAFETY: only tries to open the driver library (cudarc's documented probe; creating a context
    // without it would panic inside cudarc).
    unsafe { sys::is_culib_present() }
}

/// Loads one kernel module: the build-time PTX when the driver accepts it, else NVRTC's.
fn load_module(ctx: &Arc<CudaContext>, source: &KernelSource, ordinal: usize) -> Result<Arc<CudaModule>, CudaError> {
    if let Some(ptx) = source.prebuilt {
        match ctx.load_module(Ptx::from_src(ptx)) {
            Ok(module) => return Ok(module),
            Err(e) => {
                tracing::info!(module = source.name, error = %e, "the build-time PTX does not load here; compiling with NVRTC")
            }
        }
    }
    let ptx = nvrtc_ptx(source)?;
    ctx.load_module(Ptx::from_src(ptx)).map_err(|source| CudaError::Driver {
        ordinal,
        step: "loading a kernel module",
        source,
    })
}

/// The module's PTX from NVRTC, compiled once per process and cached on disk by source hash.
fn nvrtc_ptx(source: &KernelSource) -> Result<String, CudaError> {
    static MEMORY: OnceLock<Mutex<HashMap<&'static str, String>>> = OnceLock::new();
    let memory = MEMORY.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(ptx) = memory.lock().unwrap_or_else(|e| e.into_inner()).get(source.name) {
        return Ok(ptx.clone());
    }
    // SAFETY: only tries to open the NVRTC library (compiling without it would panic in cudarc).
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoCompiler { module: source.name });
    }
    let text = source.standalone();
    let disk = cache_dir().map(|d| d.join(format!("{}-{:x}.ptx", source.name, Sha256::digest(text.as_bytes()))));
    let cached = disk.as_ref().and_then(|path| std::fs::read_to_string(path).ok());
    let ptx = match cached {
        Some(ptx) => ptx,
        None => {
            let ptx = cudarc::nvrtc::compile_ptx_with_opts(&text, CompileOptions::default())
                .map_err(|e| CudaError::Compile { module: source.name, reason: e.to_string() })?
                .to_src();
            if let Some(path) = &disk {
                // A cache that cannot be written only costs the next start a compilation.
                let _ = path
                    .parent()
                    .map(std::fs::create_dir_all)
                    .and_then(Result::ok)
                    .map(|()| std::fs::write(path, &ptx));
            }
            ptx
        }
    };
    memory.lock().unwrap_or_else(|e| e.into_inner()).insert(source.name, ptx.clone());
    Ok(ptx)
}

fn cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(base.join("secmoe").join("ptx"))
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn hash_blocks(&self, input: &[Block], tweaks: Tweaks<'_>, out: &mut [Block]) -> BackendResult<()> {
        super::check_hash(input, tweaks, out)?;
        // (the driver allocates no empty buffer: nothing to do is done on the host)
        if self.on_host(bytemuck::cast_slice(input)) {
            return self.host.hash_blocks(input, tweaks, out);
        }
        let mut blocks = self.upload(bytemuck::cast_slice(input))?;
        match tweaks {
            Tweaks::Sequential(base) => self.hash_on_device(&mut blocks, base)?,
            Tweaks::Listed(list) => self.hash_launch(&mut blocks, &self.upload(list)?, 0, true)?,
        }
        Ok(self.download(&blocks, bytemuck::cast_slice_mut(out))?)
    }

    fn ntt_forward_sparse(&self, tables: &[NttTable], polys: &mut [u64], support: usize) -> BackendResult<()> {
        super::check_ntt("ntt_forward", tables, polys)?;
        if self.on_host(polys) {
            return self.host.ntt_forward_sparse(tables, polys, support);
        }
        self.in_place(polys, |dev| Ok(self.ntt_forward_on_device(tables, dev, support)?))
    }

    fn ntt_inverse(&self, tables: &[NttTable], polys: &mut [u64]) -> BackendResult<()> {
        super::check_ntt("ntt_inverse", tables, polys)?;
        if self.on_host(polys) {
            return self.host.ntt_inverse(tables, polys);
        }
        self.in_place(polys, |dev| Ok(self.ntt_inverse_on_device(tables, dev)?))
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
        let (consts, of) = prepared.constants(x, w);
        super::check_mul_acc(moduli, n, batch, x.len(), w.len(), consts.len(), of, out.len())?;
        if self.on_host(w) {
            return self.host.mul_acc(moduli, n, batch, x, w, prepared, out);
        }
        // one launch per batch entry over the uploaded weights (and their constants)
        let dw = self.upload(w)?;
        let dwc = match prepared {
            Prepared::W(c) => Some(self.upload(c)?),
            Prepared::X(_) => None,
            Prepared::Neither => {
                return Err(super::shape("mul_acc", "the kernel needs the Shoup constants of one side"));
            }
        };
        let (per_x, per_out) = (x.len() / batch, out.len() / batch);
        for (b, ob) in out.chunks_exact_mut(per_out).enumerate() {
            let dx = self.upload(&x[b * per_x..][..per_x])?;
            let dxc;
            let dc = match &dwc {
                Some(c) => c,
                None => {
                    dxc = self.upload(&consts[b * per_x..][..per_x])?;
                    &dxc
                }
            };
            let mut dout = self.zeros(per_out)?;
            self.mul_acc_on_device(moduli, n, &dx, &dw, dc, dwc.is_some(), &mut dout)?;
            self.download(&dout, ob)?;
        }
        Ok(())
    }

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
        if self.offload == Offload::Held {
            // the host's windowed version
            return self.host.mul_acc_sparse(tables, batch, x, heads, support, prepared, out);
        }
        let Prepared::X(consts) = prepared else {
            return Err(super::shape("mul_acc_sparse", "the device's products read the inputs' Shoup constants"));
        };
        self.mul_acc_sparse_on_device(tables, batch, (x, consts), heads, support, out, SPARSE_DEVICE_BYTES)
    }

    fn exact_products(&self, moduli: &[Modulus], n: usize) -> bool {
        // under `Offload::Held` host-slice products run on the host, which may sum them exactly;
        // otherwise products by weights given by their low coefficients run on the device
        self.offload == Offload::Held && self.host.exact_products(moduli, n)
    }

    fn exact_held_products(&self, _moduli: &[Modulus], _n: usize) -> bool {
        // held operands' products run on the device, whose kernels read the constants
        false
    }

    fn hold(&self, values: Vec<u64>) -> BackendResult<Buffer> {
        if values.is_empty() {
            return Ok(Buffer(Held::Host(values.into())));
        }
        Ok(Buffer(Held::Device { ordinal: self.ordinal, values: self.upload(&values)? }))
    }

    fn fetch(&self, buffer: Buffer) -> BackendResult<Vec<u64>> {
        match buffer.0 {
            Held::Host(values) => Ok(values.into_vec()),
            Held::Device { ordinal, ref values } if ordinal == self.ordinal => {
                let mut host = vec![0u64; values.len()];
                self.download(values, &mut host)?;
                Ok(host)
            }
            Held::Device { .. } => Err(super::foreign("cuda", &buffer)),
        }
    }

    fn key_switch(
        &self,
        q: &[NttTable],
        special: Option<&NttTable>,
        key: SwitchKeyRows<'_>,
        c: &[u64],
        coeff_out: bool,
        out: &mut [u64],
    ) -> BackendResult<()> {
        self.readable(&[key.rows, key.shoup])?;
        // a key in host memory is switched with on the host, unless every call is offloaded
        if key.rows.is_host() && key.shoup.is_host() && self.offload != Offload::Everything {
            return self.host.key_switch(q, special, key, c, coeff_out, out);
        }
        super::check_key_switch(q, special, &key, c, out)?;
        let staged = |b: &Buffer| -> Result<Option<DeviceVec>, CudaError> {
            b.host_values().map(|v| self.upload(v)).transpose()
        };
        let (rows, shoup) = (staged(key.rows)?, staged(key.shoup)?);
        let resident_key = (resident(key.rows, &rows), resident(key.shoup, &shoup), key.digits);
        self.key_switch_on_device(q, special, resident_key, c, coeff_out, out)
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
        self.readable(&[x.values, w, w_shoup, &*out])?;
        if [x.values, w, w_shoup, &*out].into_iter().all(|b| matches!(b.0, Held::Host(_))) {
            return self.host.mul_acc_held(moduli, n, batch, x, w, w_shoup, out);
        }
        x.check(n, moduli.len(), batch)?;
        let read = batch * moduli.len() * x.count * n;
        super::check_mul_acc(moduli, n, batch, read, w.len(), w_shoup.len(), w.len(), out.len())?;
        // operands held on the host are copied in for this call; the others are read in place
        let staged = |b: &Buffer| -> Result<Option<DeviceVec>, CudaError> {
            match &b.0 {
                Held::Host(values) => self.upload(values).map(Some),
                Held::Device { .. } => Ok(None),
            }
        };
        let (sx, sw, sc) = (staged(x.values)?, staged(w)?, staged(w_shoup)?);
        let (dx, dw, dc) = (resident(x.values, &sx), resident(w, &sw), resident(w_shoup, &sc));
        match &mut out.0 {
            Held::Device { values, .. } => self.mul_acc_runs_on_device(moduli, n, batch, (dx, x), dw, dc, values)?,
            Held::Host(host) => {
                let mut sums = self.upload(host)?;
                self.mul_acc_runs_on_device(moduli, n, batch, (dx, x), dw, dc, &mut sums)?;
                self.download(&sums, host)?;
            }
        }
        Ok(())
    }

    fn base_convert(
        &self,
        moduli: &[Modulus],
        n: usize,
        x: &[u64],
        consts: &[(u64, u64)],
        out: &mut [u64],
    ) -> BackendResult<()> {
        super::check_base_convert(moduli, n, x, consts, out)?;
        if out.is_empty() || self.on_host(x) {
            return self.host.base_convert(moduli, n, x, consts, out);
        }
        let flat: Vec<u64> = consts.iter().flat_map(|&(c, s)| [c, s]).collect();
        let (dx, dc) = (self.upload(x)?, self.upload(&flat)?);
        let mut dout = self.zeros(out.len())?;
        self.base_convert_on_device(moduli, n, &dx, &dc, &mut dout)?;
        Ok(self.download(&dout, out)?)
    }

    fn tensor_sum(
        &self,
        moduli: &[Modulus],
        n: usize,
        terms: usize,
        a: (&Buffer, usize),
        b: (&Buffer, usize),
        add: bool,
        out: &mut Buffer,
    ) -> BackendResult<()> {
        self.readable(&[a.0, b.0, &*out])?;
        // operands in host memory are summed on the host, unless every call is offloaded
        if a.0.is_host() && b.0.is_host() && out.is_host() && self.offload != Offload::Everything {
            return self.host.tensor_sum(moduli, n, terms, a, b, add, out);
        }
        super::check_tensor_sum(moduli, n, terms, a, b, out.len())?;
        if out.is_empty() || terms == 0 {
            // no operand to read (the runs may be empty, which the driver does not allocate)
            match (&mut out.0, add) {
                (_, true) => {}
                (Held::Host(values), false) => values.fill(0),
                (Held::Device { values, .. }, false) => {
                    self.stream().memset_zeros(&mut values.0).map_err(self.fail("clearing device memory"))?;
                }
            }
            return Ok(());
        }
        let staged = |b: &Buffer| -> Result<Option<DeviceVec>, CudaError> {
            b.host_values().map(|v| self.upload(v)).transpose()
        };
        let (sa, sb) = (staged(a.0)?, staged(b.0)?);
        let (da, db) = (resident(a.0, &sa), resident(b.0, &sb));
        // sums in host memory move to the device and stay there for the next terms
        if let Held::Host(values) = &out.0 {
            *out = Buffer(Held::Device { ordinal: self.ordinal, values: self.upload(values)? });
        }
        let Held::Device { values, .. } = &mut out.0 else { unreachable!("moved to the device above") };
        Ok(self.tensor_sum_on_device(moduli, n, terms, (da, a.1), (db, b.1), add, values)?)
    }

    fn extend_basis(&self, basis: &TensorBasis, x: &[u64], ntt_form: bool) -> BackendResult<Buffer> {
        super::rns::check_extend(basis, x)?;
        // a pipeline: on the device unless only held work is offloaded
        if self.offload == Offload::Held || x.is_empty() {
            return self.host.extend_basis(basis, x, ntt_form);
        }
        let values = self.extend_basis_on_device(basis, x, ntt_form)?;
        Ok(Buffer(Held::Device { ordinal: self.ordinal, values }))
    }

    fn scale_down(&self, basis: &TensorBasis, x: Buffer, out: &mut [u64]) -> BackendResult<()> {
        self.readable(&[&x])?;
        super::rns::check_scale_down(basis, x.len(), out.len())?;
        if out.is_empty() || (x.is_host() && self.offload != Offload::Everything) {
            return self.host.scale_down(basis, x, out);
        }
        let staged = match &x.0 {
            Held::Host(values) => Some(self.upload(values)?),
            Held::Device { .. } => None,
        };
        Ok(self.scale_down_on_device(basis, resident(&x, &staged), out)?)
    }

    fn automorphism(
        &self,
        moduli: &[Modulus],
        n: usize,
        element: usize,
        input: &[u64],
        out: &mut [u64],
    ) -> BackendResult<()> {
        super::check_automorphism(moduli, n, element, input, out)?;
        if self.on_host(input) {
            return self.host.automorphism(moduli, n, element, input, out);
        }
        let din = self.upload(input)?;
        let mut dout = self.zeros(out.len())?;
        self.automorphism_on_device(moduli, n, element, &din, &mut dout)?;
        Ok(self.download(&dout, out)?)
    }

    fn divide_by_prime(
        &self,
        moduli: &[Modulus],
        n: usize,
        low: &mut [u64],
        top: &[u64],
        p_top: &Modulus,
    ) -> BackendResult<()> {
        super::check_divide(moduli, n, low, top)?;
        if self.on_host(low) {
            return self.host.divide_by_prime(moduli, n, low, top, p_top);
        }
        let dtop = self.upload(top)?;
        self.in_place(low, |dev| self.divide_by_prime_on_device(moduli, n, dev, &dtop, p_top))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-time path (no nvcc at build time, or a driver older than its PTX) compiles every
    /// module; needs only libnvrtc, no GPU (CI installs it from PyPI).
    #[test]
    fn nvrtc_compiles_every_kernel_module_where_it_is_installed() {
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: no libnvrtc on this machine");
            return;
        }
        for source in &MODULES {
            let ptx = nvrtc_ptx(source).unwrap_or_else(|e| panic!("{e}"));
            assert!(ptx.contains(".entry"), "module {}: no kernel in NVRTC's PTX", source.name);
        }
    }

    #[test]
    fn where_there_is_no_device_the_backend_says_why() {
        if CudaBackend::device_count() > 0 {
            return;
        }
        let err = CudaBackend::new(0, 1).err();
        assert!(matches!(err, Some(CudaError::NoDriver | CudaError::NoDevice { .. })), "{err:?}");
    }
}
