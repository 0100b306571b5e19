//! The GPU kernels (`kernels/*.cu`) as the CUDA backend loads them, and the tests that hold their
//! arithmetic to the CPU backend's on every machine.
//!
//! Each kernel is a thin loop around a function of the shared header `kernels/modarith.cuh`
//! (`__host__ __device__` inline functions: Shoup products, lazy butterflies in the CPU's order,
//! the fused multiply-accumulate, base conversion, fixed-key AES and its TMMO hash).
//! `kernels/host.c` runs the same functions on the CPU, in the kernels' index order, and the tests
//! below compare it bit for bit with [`CpuBackend`](super::CpuBackend): the math the GPU runs is
//! checked here even where no GPU or CUDA toolkit exists. `tests/cuda.rs` checks the launches
//! themselves on a device.

/// One kernel module: its name, its source and, when build.rs found nvcc, its PTX.
#[cfg(feature = "cuda")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelSource {
    /// The file stem in `kernels/`.
    pub name: &'static str,
    source: &'static str,
    /// PTX compiled at build time, if nvcc was there.
    pub prebuilt: Option<&'static str>,
}

/// The shared header, inlined into the sources that NVRTC compiles.
#[cfg(feature = "cuda")]
const HEADER: &str = include_str!("../../kernels/modarith.cuh");

#[cfg(all(feature = "cuda", secmoe_prebuilt_ptx))]
macro_rules! prebuilt {
    ($name:literal) => {
        Some(include_str!(concat!(env!("OUT_DIR"), "/", $name, ".ptx")))
    };
}

#[cfg(all(feature = "cuda", not(secmoe_prebuilt_ptx)))]
macro_rules! prebuilt {
    ($name:literal) => {
        None
    };
}

#[cfg(feature = "cuda")]
macro_rules! kernel {
    ($name:literal) => {
        KernelSource {
            name: $name,
            source: include_str!(concat!("../../kernels/", $name, ".cu")),
            prebuilt: prebuilt!($name),
        }
    };
}

/// Every kernel module.
#[cfg(feature = "cuda")]
pub(crate) const MODULES: [KernelSource; 3] = [kernel!("ntt"), kernel!("mac"), kernel!("hash")];

#[cfg(feature = "cuda")]
impl KernelSource {
    /// The source with the header inlined (NVRTC is given no include path).
    pub fn standalone(&self) -> String {
        self.source.replace("#include \"modarith.cuh\"", HEADER)
    }
}

/// Barrett's constant floor(2^128 / p) of each modulus as (high, low) words: how the kernels
/// reduce products of two residues neither of which carries a Shoup constant (`tensor_sum`).
#[cfg(any(feature = "cuda", test))]
pub(crate) fn barrett_constants(moduli: &[crate::ring::modp::Modulus]) -> Vec<u64> {
    // 2^128 is no multiple of an odd prime, so (2^128 − 1) / p rounds down to the same quotient
    moduli.iter().map(|m| u128::MAX / m.value() as u128).flat_map(|mu| [(mu >> 64) as u64, mu as u64]).collect()
}

/// The heads of outputs `first..first + g` of [`Backend::mul_acc_sparse`](super::Backend::mul_acc_sparse)'s
/// weights (`heads`: [l][j][i][support] over `outputs` outputs, `run` = I·support values per
/// output), limb-major as the device spreads and transforms one group of them: [l][g][i][support].
#[cfg(any(feature = "cuda", test))]
pub(crate) fn group_heads(heads: &[u64], outputs: usize, run: usize, first: usize, g: usize) -> Vec<u64> {
    let limbs = heads.len() / (outputs * run).max(1);
    (0..limbs).flat_map(|l| &heads[(l * outputs + first) * run..][..g * run]).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::super::rns::HatConstants;
    use super::super::{
        Backend, Block, Buffer, CpuBackend, NttTable, Prepared, SwitchKeyRows, TensorBasis, Tweaks, input_constants,
    };
    use super::group_heads;
    use crate::ring::modp::{Modulus, ntt_primes};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    // kernels/host.c, linked by build.rs
    unsafe extern "C" {
        fn secmoe_host_ntt_forward(a: *mut u64, psi: *const u64, psi_shoup: *const u64, p: u64, n: u32, support: u32);
        fn secmoe_host_ntt_inverse(
            a: *mut u64,
            psi_inv: *const u64,
            psi_inv_shoup: *const u64,
            p: u64,
            n: u32,
            n_inv: u64,
            n_inv_shoup: u64,
            last: u64,
            last_shoup: u64,
        );
        fn secmoe_host_mul_acc(
            out: *mut u64,
            x: *const u64,
            w: *const u64,
            consts: *const u64,
            moduli: *const u64,
            n: u32,
            inputs: u32,
            outputs: u32,
            total: u64,
            prepared_w: i32,
        );
        fn secmoe_host_automorphism(
            out: *mut u64,
            input: *const u64,
            moduli: *const u64,
            per_limb: u64,
            n: u32,
            g: u64,
            total: u64,
        );
        fn secmoe_host_divide_by_prime(
            low: *mut u64,
            top: *const u64,
            moduli: *const u64,
            consts: *const u64,
            p_top: u64,
            polys: u64,
            n: u32,
            total: u64,
        );
        fn secmoe_host_base_convert(
            out: *mut u64,
            x: *const u64,
            consts: *const u64,
            moduli: *const u64,
            n: u32,
            inputs: u32,
            outputs: u32,
        );
        fn secmoe_host_lift_digits(out: *mut u64, c: *const u64, targets: *const u64, n: u32, digits: u32, total: u64);
        fn secmoe_host_tensor_sum(
            out: *mut u64,
            a: *const u64,
            b: *const u64,
            moduli: *const u64,
            mus: *const u64,
            n: u32,
            limbs: u32,
            terms: u64,
            add: i32,
            total: u64,
        );
        fn secmoe_host_hat_rows(
            z: *mut u64,
            x: *const u64,
            hat: *const u64,
            inv: *const u64,
            theta: *const u64,
            moduli: *const u64,
            rows: u32,
            theta_rows: u32,
            n: u32,
        );
        fn secmoe_host_transpose_runs(
            out: *mut u64,
            input: *const u64,
            cols: u64,
            width: u64,
            first: u64,
            n: u32,
            total: u64,
        );
        fn secmoe_host_hash_blocks(blocks: *mut u64, tweaks: *const u64, base: u64, count: u64, listed: i32);
        fn secmoe_host_spread_heads(out: *mut u64, heads: *const u64, support: u32, n: u32, total: u64);
    }

    fn prime(bits: u32, n: usize) -> Modulus {
        Modulus::new(ntt_primes(bits, n, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn backend() -> CpuBackend {
        CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"))
    }

    /// host.c's forward transform of every run of N values of `polys` under `t`.
    fn host_forward(t: &NttTable, polys: &mut [u64]) {
        host_forward_sparse(t, polys, t.degree());
    }

    /// [`host_forward`] of runs whose values above `support` are zero (the first stages skipped,
    /// as the device launches it: `support` rounded up to a power of two).
    fn host_forward_sparse(t: &NttTable, polys: &mut [u64], support: usize) {
        let (tw, n) = (t.twiddles(), t.degree());
        for run in polys.chunks_exact_mut(n) {
            // SAFETY: a run of n values, tables of n values each.
            unsafe {
                secmoe_host_ntt_forward(
                    run.as_mut_ptr(),
                    tw.psi.as_ptr(),
                    tw.psi_shoup.as_ptr(),
                    t.modulus().value(),
                    n as u32,
                    support.clamp(1, n).next_power_of_two() as u32,
                )
            };
        }
    }

    /// host.c's inverse transform of every run of N values of `polys` under `t`.
    fn host_inverse(t: &NttTable, polys: &mut [u64]) {
        let (tw, n) = (t.twiddles(), t.degree());
        for run in polys.chunks_exact_mut(n) {
            // SAFETY: as above.
            unsafe {
                secmoe_host_ntt_inverse(
                    run.as_mut_ptr(),
                    tw.psi_inv.as_ptr(),
                    tw.psi_inv_shoup.as_ptr(),
                    t.modulus().value(),
                    n as u32,
                    tw.n_inv.0,
                    tw.n_inv.1,
                    tw.last_inv.0,
                    tw.last_inv.1,
                )
            };
        }
    }

    /// host.c's base conversion of `x` (rows of n) to `moduli` with `consts` (pairs).
    fn host_base_convert(moduli: &[Modulus], n: usize, x: &[u64], consts: &[(u64, u64)]) -> Vec<u64> {
        let primes: Vec<u64> = moduli.iter().map(Modulus::value).collect();
        let flat: Vec<u64> = consts.iter().flat_map(|&(c, s)| [c, s]).collect();
        let mut out = vec![0u64; moduli.len() * n];
        // SAFETY: `x` holds consts.len() / moduli.len() rows of n, `out` one row per modulus.
        unsafe {
            secmoe_host_base_convert(
                out.as_mut_ptr(),
                x.as_ptr(),
                flat.as_ptr(),
                primes.as_ptr(),
                n as u32,
                (consts.len() / moduli.len()) as u32,
                moduli.len() as u32,
            )
        };
        out
    }

    /// host.c's first step of a conversion out of `moduli` (`x`: one row of n per modulus):
    /// the z rows, the overflow row and, with θ, the rounded fraction.
    fn host_hat_rows(moduli: &[Modulus], n: usize, x: &[u64], constants: HatConstants<'_>) -> Vec<u64> {
        let primes: Vec<u64> = moduli.iter().map(Modulus::value).collect();
        let [hat, inv, theta] = constants.words();
        let theta_rows = theta.len() / 2;
        let mut z = vec![0u64; (moduli.len() + 1 + usize::from(theta_rows > 0)) * n];
        // SAFETY: `x` holds a row of n per modulus, `z` the rows written, one pair of `hat`, one
        // value of `inv` per modulus and one pair of `theta` per fraction row.
        unsafe {
            secmoe_host_hat_rows(
                z.as_mut_ptr(),
                x.as_ptr(),
                hat.as_ptr(),
                inv.as_ptr(),
                theta.as_ptr(),
                primes.as_ptr(),
                moduli.len() as u32,
                theta_rows as u32,
                n as u32,
            )
        };
        z
    }

    /// host.c's transpose of runs: `input`'s rows × `cols` runs of n to run first + row of
    /// column col's block of `width` runs in `out`.
    fn host_transpose(out: &mut [u64], input: &[u64], cols: usize, width: usize, first: usize, n: usize) {
        let rows = input.len() / (cols * n);
        assert!(first + rows <= width && cols * width * n <= out.len(), "a transpose out of bounds");
        // SAFETY: every destination run col·width + first + row < cols·width lies inside `out`
        // (checked above); `input` holds rows·cols runs of n.
        unsafe {
            secmoe_host_transpose_runs(
                out.as_mut_ptr(),
                input.as_ptr(),
                cols as u64,
                width as u64,
                first as u64,
                n as u32,
                input.len() as u64,
            )
        };
    }

    #[test]
    fn the_kernels_transforms_are_the_cpu_backends_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(31);
        let be = backend();
        for (bits, n) in [(36, 16), (50, 1024), (60, 8192), (61, 4096)] {
            let table = NttTable::new(n, prime(bits, n)).unwrap_or_else(|e| panic!("{e}"));
            let tw = table.twiddles();
            let p = table.modulus().value();
            for support in [n, 64.min(n), 1] {
                let mut want: Vec<u64> = (0..n).map(|i| if i < support { rng.random_range(0..p) } else { 0 }).collect();
                let mut got = want.clone();
                be.ntt_forward_sparse(std::slice::from_ref(&table), &mut want, support)
                    .unwrap_or_else(|e| panic!("{e}"));
                // SAFETY: `got` holds n values, the tables n values each.
                unsafe {
                    secmoe_host_ntt_forward(
                        got.as_mut_ptr(),
                        tw.psi.as_ptr(),
                        tw.psi_shoup.as_ptr(),
                        p,
                        n as u32,
                        support as u32,
                    )
                };
                assert_eq!(got, want, "forward, {bits}-bit prime, N = {n}, support {support}");
            }
            let mut want: Vec<u64> = (0..n).map(|_| rng.random_range(0..p)).collect();
            let mut got = want.clone();
            be.ntt_inverse(std::slice::from_ref(&table), &mut want).unwrap_or_else(|e| panic!("{e}"));
            // SAFETY: as above.
            unsafe {
                secmoe_host_ntt_inverse(
                    got.as_mut_ptr(),
                    tw.psi_inv.as_ptr(),
                    tw.psi_inv_shoup.as_ptr(),
                    p,
                    n as u32,
                    tw.n_inv.0,
                    tw.n_inv.1,
                    tw.last_inv.0,
                    tw.last_inv.1,
                )
            };
            assert_eq!(got, want, "inverse, {bits}-bit prime, N = {n}");
        }
    }

    #[test]
    fn the_kernels_multiply_accumulate_is_the_cpu_backends_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(32);
        let be = backend();
        let moduli = [prime(36, 64), prime(55, 64), prime(61, 64)];
        let primes: Vec<u64> = moduli.iter().map(Modulus::value).collect();
        let (n, inputs, outputs, limbs) = (64, 37, 3, moduli.len());
        let draw = |len: usize, rng: &mut StdRng| -> Vec<u64> {
            primes.iter().flat_map(|&p| (0..len).map(|_| rng.random_range(0..p)).collect::<Vec<_>>()).collect()
        };
        let (x, w) = (draw(inputs * n, &mut rng), draw(outputs * inputs * n, &mut rng));
        let shoup = |v: &[u64]| -> Vec<u64> {
            v.chunks_exact(v.len() / limbs).zip(&moduli).flat_map(|(b, m)| b.iter().map(|&v| m.shoup(v))).collect()
        };
        let (ws, xs) = (shoup(&w), shoup(&x));
        for (prepared, consts, flag) in [(Prepared::W(&ws), &ws, 1), (Prepared::X(&xs), &xs, 0)] {
            let total = limbs * outputs * n;
            let mut want = vec![0u64; total];
            be.mul_acc(&moduli, n, 1, &x, &w, prepared, &mut want).unwrap_or_else(|e| panic!("{e}"));
            let mut got = vec![0u64; total];
            // SAFETY: the buffers have the lengths the kernel reads and writes.
            unsafe {
                secmoe_host_mul_acc(
                    got.as_mut_ptr(),
                    x.as_ptr(),
                    w.as_ptr(),
                    consts.as_ptr(),
                    primes.as_ptr(),
                    n as u32,
                    inputs as u32,
                    outputs as u32,
                    total as u64,
                    flag,
                )
            };
            assert_eq!(got, want, "constants on {}", if flag == 1 { "w" } else { "x" });
        }
    }

    /// The CUDA backend's products by weights given by their low coefficients run these kernels
    /// in this order, on these layouts: per group of outputs, the group's heads gathered
    /// limb-major (`group_heads`), spread to whole polynomials, transformed from their support,
    /// and multiplied with each batch entry's inputs (their Shoup constants read), each limb's
    /// sums placed at the group's outputs. Composed from host.c in groups that do not divide
    /// the outputs, the pipeline is the CPU backend's `mul_acc_sparse` bit for bit.
    #[test]
    fn the_kernels_sparse_product_pipeline_is_the_cpu_backends_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(33);
        let be = backend();
        let n = 256;
        let tables: Vec<NttTable> = [prime(50, n), prime(58, n), prime(61, n)]
            .into_iter()
            .map(|m| NttTable::new(n, m).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let moduli: Vec<Modulus> = tables.iter().map(|t| *t.modulus()).collect();
        let primes: Vec<u64> = moduli.iter().map(Modulus::value).collect();
        let (batch, inputs, outputs, limbs) = (2, 5, 7, tables.len());
        for support in [n, 48, 1] {
            let draw = |per_limb: usize, rng: &mut StdRng| -> Vec<u64> {
                primes.iter().flat_map(|&p| (0..per_limb).map(|_| rng.random_range(0..p)).collect::<Vec<_>>()).collect()
            };
            let x: Vec<u64> = (0..batch).flat_map(|_| draw(inputs * n, &mut rng)).collect();
            let xs = input_constants(&moduli, n, inputs, &x);
            let heads = draw(outputs * inputs * support, &mut rng);
            let mut want = vec![0u64; batch * limbs * outputs * n];
            be.mul_acc_sparse(&tables, batch, &x, &heads, support, Prepared::X(&xs), &mut want)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut got = vec![0u64; want.len()];
            let (per_x, per_out, group) = (limbs * inputs * n, limbs * outputs * n, 3);
            for first in (0..outputs).step_by(group) {
                let g = group.min(outputs - first);
                let chunk = group_heads(&heads, outputs, inputs * support, first, g);
                let mut w = vec![0u64; limbs * g * inputs * n];
                // SAFETY: `w` holds `total` values, each reading heads[(idx / n)·support + c < support].
                unsafe {
                    secmoe_host_spread_heads(w.as_mut_ptr(), chunk.as_ptr(), support as u32, n as u32, w.len() as u64)
                };
                for (t, block) in tables.iter().zip(w.chunks_exact_mut(g * inputs * n)) {
                    host_forward_sparse(t, block, support);
                }
                for b in 0..batch {
                    let (xb, cb) = (&x[b * per_x..][..per_x], &xs[b * per_x..][..per_x]);
                    let mut sums = vec![0u64; limbs * g * n];
                    // SAFETY: the buffers have the lengths the kernel reads and writes.
                    unsafe {
                        secmoe_host_mul_acc(
                            sums.as_mut_ptr(),
                            xb.as_ptr(),
                            w.as_ptr(),
                            cb.as_ptr(),
                            primes.as_ptr(),
                            n as u32,
                            inputs as u32,
                            g as u32,
                            sums.len() as u64,
                            0,
                        )
                    };
                    for (l, limb) in sums.chunks_exact(g * n).enumerate() {
                        got[b * per_out + (l * outputs + first) * n..][..g * n].copy_from_slice(limb);
                    }
                }
            }
            assert_eq!(got, want, "support {support}");
        }
    }

    /// The CUDA backend's key switch runs these kernels in this order, on these layouts: the
    /// digits lifted to q' (`[l][i][N]`) and to P, each transformed, one multiply-accumulate per
    /// limb and half (a key row's first k digits), the sums transformed back and divided by P.
    /// Composed from host.c, the pipeline is the CPU backend's key switch bit for bit.
    #[test]
    fn the_kernels_key_switch_pipeline_is_the_cpu_backends_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(36);
        let be = backend();
        let n = 64;
        let all = [prime(50, n), prime(45, n), prime(40, n), prime(58, n)];
        let tables: Vec<NttTable> =
            all.iter().map(|&m| NttTable::new(n, m).unwrap_or_else(|e| panic!("{e}"))).collect();
        let digits = 3;
        let (rows, shoup) = super::super::tests::random_key(&all, digits, n, &mut rng);
        let key_rows = (Buffer::host(rows.clone()), Buffer::host(shoup.clone()));
        let key = SwitchKeyRows { rows: &key_rows.0, shoup: &key_rows.1, digits };
        for k in [3, 2] {
            let q = &tables[..k];
            let c: Vec<u64> = q
                .iter()
                .flat_map(|t| (0..n).map(|_| rng.random_range(0..t.modulus().value())).collect::<Vec<_>>())
                .collect();
            let mut want = vec![0u64; 2 * k * n];
            be.key_switch(q, Some(&tables[3]), key, &c, true, &mut want).unwrap_or_else(|e| panic!("{e}"));
            // [q_0..q_(k−1), P]
            let primes: Vec<u64> = q.iter().chain([&tables[3]]).map(|t| t.modulus().value()).collect();
            let lift = |targets: &[u64]| {
                let mut out = vec![0u64; targets.len() * k * n];
                // SAFETY: `out` holds targets·k·N values, `c` k·N.
                unsafe {
                    secmoe_host_lift_digits(
                        out.as_mut_ptr(),
                        c.as_ptr(),
                        targets.as_ptr(),
                        n as u32,
                        k as u32,
                        out.len() as u64,
                    )
                };
                out
            };
            let (mut dq, mut dp) = (lift(&primes[..k]), lift(&primes[k..]));
            for (t, block) in q.iter().zip(dq.chunks_exact_mut(k * n)) {
                host_forward(t, block);
            }
            host_forward(&tables[3], &mut dp);
            let (mut low, mut top) = (vec![0u64; k * 2 * n], vec![0u64; 2 * n]);
            for l in 0..=k {
                let (x, row, out) = if l < k {
                    (&dq[l * k * n..][..k * n], l, &mut low[l * 2 * n..][..2 * n])
                } else {
                    (&dp[..], digits, &mut top[..])
                };
                for (h, out) in out.chunks_exact_mut(n).enumerate() {
                    let at = (row * 2 + h) * digits * n;
                    // SAFETY: k inputs of n values, one output, k weights and constants, one prime.
                    unsafe {
                        secmoe_host_mul_acc(
                            out.as_mut_ptr(),
                            x.as_ptr(),
                            rows[at..].as_ptr(),
                            shoup[at..].as_ptr(),
                            primes[l..].as_ptr(),
                            n as u32,
                            k as u32,
                            1,
                            n as u64,
                            1,
                        )
                    };
                }
            }
            for (t, block) in q.iter().zip(low.chunks_exact_mut(2 * n)) {
                host_inverse(t, block);
            }
            host_inverse(&tables[3], &mut top);
            let moduli: Vec<Modulus> = q.iter().map(|t| *t.modulus()).collect();
            let consts: Vec<u64> = super::super::divide_constants(&moduli, tables[3].modulus())
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .flatten()
                .collect();
            // SAFETY: `low` holds k limbs of two runs, `top` two runs, three constants per prime.
            unsafe {
                secmoe_host_divide_by_prime(
                    low.as_mut_ptr(),
                    top.as_ptr(),
                    primes.as_ptr(),
                    consts.as_ptr(),
                    primes[k],
                    2,
                    n as u32,
                    low.len() as u64,
                )
            };
            assert_eq!(low, want, "level {k}");
        }
    }

    /// A ciphertext product's conversions as the device runs them — a batch moved to
    /// limb-major, transforms, the hat rows with their overflow (doubles summed in order, never
    /// fused) and rounded fraction (128-bit sums) and the base conversions over every
    /// polynomial's coefficients at once, moved back to operand order — composed from host.c's
    /// functions in the kernels' order, give the CPU backend's lifted operands (from either
    /// form) and rounded sums bit for bit.
    #[test]
    fn the_kernels_product_conversions_are_the_cpu_backends_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(38);
        let be = backend();
        let n = 64;
        let q: Vec<NttTable> = ntt_primes(50, n, 3)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|p| {
                NttTable::new(n, Modulus::new(p).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let p: Vec<Modulus> = ntt_primes(61, n, 4)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|p| Modulus::new(p).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let basis = TensorBasis::new(&q, &p, 70).unwrap_or_else(|e| panic!("{e}"));
        let (k, width, count) = (q.len(), basis.len(), 3);
        let residues = |rng: &mut StdRng, moduli: &[Modulus]| -> Vec<u64> {
            (0..count * moduli.len() * n).map(|i| rng.random_range(0..moduli[(i / n) % moduli.len()].value())).collect()
        };
        let transform = |tables: &[NttTable], major: &mut [u64], forward: bool| {
            for (t, block) in tables.iter().zip(major.chunks_exact_mut(count * n)) {
                if forward { host_forward(t, block) } else { host_inverse(t, block) }
            }
        };
        // Q → Q∪P of three halves ([poly][limb][N]), given in NTT form and in coefficient form
        let x = residues(&mut rng, &basis.moduli[..k]);
        let mut major = vec![0u64; x.len()];
        host_transpose(&mut major, &x, k, count, 0, n);
        for ntt_form in [true, false] {
            let lifted = be.extend_basis(&basis, &x, ntt_form).unwrap_or_else(|e| panic!("{e}"));
            let (mut low, mut coeff) = (major.clone(), major.clone());
            if ntt_form {
                transform(&q, &mut coeff, false)
            } else {
                transform(&q, &mut low, true)
            }
            let z = host_hat_rows(&basis.moduli[..k], count * n, &coeff, basis.hat_constants(false));
            let mut high = host_base_convert(&basis.moduli[k..], count * n, &z, &basis.extend_rows);
            transform(&basis.tables[k..], &mut high, true);
            let mut got = vec![0u64; count * width * n];
            host_transpose(&mut got, &low, count, width, 0, n);
            host_transpose(&mut got, &high, count, width, k, n);
            assert_eq!(lifted.host_values(), Some(&got[..]), "NTT form {ntt_form}");
        }
        // Q∪P → Q of three parts ([poly][limb][N])
        let sums = residues(&mut rng, &basis.moduli);
        let mut want = vec![0u64; count * k * n];
        be.scale_down(&basis, Buffer::host(sums.clone()), &mut want).unwrap_or_else(|e| panic!("{e}"));
        let mut major = vec![0u64; sums.len()];
        host_transpose(&mut major, &sums, width, count, 0, n);
        transform(&basis.tables, &mut major, false);
        let z = host_hat_rows(&basis.moduli, count * n, &major, basis.hat_constants(true));
        let rounded = host_base_convert(&basis.moduli[..k], count * n, &z, &basis.scale_rows);
        let mut got = vec![0u64; want.len()];
        host_transpose(&mut got, &rounded, count, k, 0, n);
        assert_eq!(got, want);
    }

    /// Barrett products summed per part — no Shoup constants, any residues — give the residues
    /// of the CPU's exact 128-bit sums, fresh and added to a previous sum, up to 61-bit primes.
    #[test]
    fn the_kernels_tensor_sums_are_the_cpu_backends_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(37);
        let be = backend();
        let n = 64;
        let moduli = [prime(61, n), prime(58, n), prime(36, n)];
        let primes: Vec<u64> = moduli.iter().map(Modulus::value).collect();
        let mus = super::barrett_constants(&moduli);
        let limbs = moduli.len();
        for terms in [0, 1, 9] {
            let draw = |rng: &mut StdRng, count: usize| -> Vec<u64> {
                (0..count)
                    .flat_map(|_| {
                        primes
                            .iter()
                            .flat_map(|&p| (0..n).map(|_| rng.random_range(0..p)).collect::<Vec<_>>())
                            .collect::<Vec<_>>()
                    })
                    .collect()
            };
            let (a, b, old) = (draw(&mut rng, 2 * terms), draw(&mut rng, 2 * terms), draw(&mut rng, 3));
            for add in [false, true] {
                let mut sums = Buffer::host(old.clone());
                let (ha, hb) = (Buffer::host(a.clone()), Buffer::host(b.clone()));
                be.tensor_sum(&moduli, n, terms, (&ha, 0), (&hb, 0), add, &mut sums).unwrap_or_else(|e| panic!("{e}"));
                let want = sums.host_values().unwrap_or_default().to_vec();
                let mut got = old.clone();
                // SAFETY: `a`, `b` hold `terms` operands of 2 × limbs × n values, `got` 3 × limbs × n, two
                // constants per limb.
                unsafe {
                    secmoe_host_tensor_sum(
                        got.as_mut_ptr(),
                        a.as_ptr(),
                        b.as_ptr(),
                        primes.as_ptr(),
                        mus.as_ptr(),
                        n as u32,
                        limbs as u32,
                        terms as u64,
                        i32::from(add),
                        got.len() as u64,
                    )
                };
                assert_eq!(got, want, "{terms} terms, added {add}");
            }
        }
    }

    #[test]
    fn the_kernels_automorphism_and_modulus_switch_are_the_cpu_backends_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(35);
        let be = backend();
        let n = 128;
        let moduli = [prime(50, n), prime(45, n), prime(58, n)];
        let (low, top) = (&moduli[..2], &moduli[2]);
        let primes: Vec<u64> = low.iter().map(Modulus::value).collect();
        let polys = 3;
        let input: Vec<u64> =
            primes.iter().flat_map(|&p| (0..polys * n).map(|_| rng.random_range(0..p)).collect::<Vec<_>>()).collect();
        for g in [3usize, 2 * n - 1, 17] {
            let mut want = vec![0u64; input.len()];
            be.automorphism(low, n, g, &input, &mut want).unwrap_or_else(|e| panic!("{e}"));
            let mut got = vec![0u64; input.len()];
            // SAFETY: `got` and `input` hold `total` values, one prime per limb.
            unsafe {
                secmoe_host_automorphism(
                    got.as_mut_ptr(),
                    input.as_ptr(),
                    primes.as_ptr(),
                    polys as u64,
                    n as u32,
                    g as u64,
                    input.len() as u64,
                )
            };
            assert_eq!(got, want, "σ_{g}");
        }
        let tops: Vec<u64> = (0..polys * n).map(|_| rng.random_range(0..top.value())).collect();
        let mut want = input.clone();
        be.divide_by_prime(low, n, &mut want, &tops, top).unwrap_or_else(|e| panic!("{e}"));
        let consts: Vec<u64> =
            super::super::divide_constants(low, top).unwrap_or_else(|e| panic!("{e}")).into_iter().flatten().collect();
        let mut got = input.clone();
        // SAFETY: `got` holds `total` values, `tops` one run per polynomial, three constants per prime.
        unsafe {
            secmoe_host_divide_by_prime(
                got.as_mut_ptr(),
                tops.as_ptr(),
                primes.as_ptr(),
                consts.as_ptr(),
                top.value(),
                polys as u64,
                n as u32,
                input.len() as u64,
            )
        };
        assert_eq!(got, want, "modulus switch");
    }

    #[test]
    fn the_kernels_base_conversion_is_the_cpu_backends_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(33);
        let be = backend();
        let moduli: Vec<Modulus> = ntt_primes(61, 64, 3)
            .unwrap_or_default()
            .into_iter()
            .chain(ntt_primes(45, 64, 1).unwrap_or_default())
            .map(|p| Modulus::new(p).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let (n, inputs) = (128, 5);
        let x: Vec<u64> = (0..inputs * n).map(|_| rng.random()).collect();
        let consts: Vec<(u64, u64)> = (0..inputs * moduli.len())
            .map(|k| {
                let m = &moduli[k % moduli.len()];
                let c = rng.random_range(0..m.value());
                (c, m.shoup(c))
            })
            .collect();
        let mut want = vec![0u64; moduli.len() * n];
        be.base_convert(&moduli, n, &x, &consts, &mut want).unwrap_or_else(|e| panic!("{e}"));
        let flat: Vec<u64> = consts.iter().flat_map(|&(c, s)| [c, s]).collect();
        let values: Vec<u64> = moduli.iter().map(Modulus::value).collect();
        let mut got = vec![0u64; moduli.len() * n];
        // SAFETY: the buffers have the lengths the kernel reads and writes.
        unsafe {
            secmoe_host_base_convert(
                got.as_mut_ptr(),
                x.as_ptr(),
                flat.as_ptr(),
                values.as_ptr(),
                n as u32,
                inputs as u32,
                moduli.len() as u32,
            )
        };
        assert_eq!(got, want);
    }

    #[test]
    fn the_kernels_ot_hash_is_the_cpu_backends_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(34);
        let be = backend();
        let count = 1000;
        let input: Vec<Block> = (0..count).map(|_| Block::from([rng.random::<u64>(), rng.random::<u64>()])).collect();
        let listed: Vec<u64> = (0..count).map(|_| rng.random()).collect();
        for tweaks in [Tweaks::Sequential(u64::MAX - 10), Tweaks::Listed(&listed)] {
            let mut want = vec![Block::from([0u64, 0]); count];
            be.hash_blocks(&input, tweaks, &mut want).unwrap_or_else(|e| panic!("{e}"));
            let mut words: Vec<u64> = input.iter().flat_map(|b| bytemuck::cast::<Block, [u64; 2]>(*b)).collect();
            let (ptr, base, flag) = match tweaks {
                Tweaks::Sequential(base) => (std::ptr::null(), base, 0),
                Tweaks::Listed(list) => (list.as_ptr(), 0, 1),
            };
            // SAFETY: `words` holds 2·count values, a listed tweak array count values.
            unsafe { secmoe_host_hash_blocks(words.as_mut_ptr(), ptr, base, count as u64, flag) };
            let got: Vec<Block> = words.chunks_exact(2).map(|w| Block::from([w[0], w[1]])).collect();
            assert_eq!(got, want, "{tweaks:?}");
        }
    }
}
