//! The backend: one interface for the heavy, data-parallel operations, so that the same
//! protocols run on the CPU (rayon, SIMD) or on an NVIDIA GPU (`--features cuda`: the kernels of
//! `kernels/*.cu` through cudarc).
//!
//! It holds the bulk hashing that turns OT keys into pads, the batched NTT, the multiply-accumulate
//! of ct×pt products and selection sums (over weights the backend holds, [`Backend::hold`]), the
//! RNS base conversion, the automorphisms X ↦ X^g, modulus switching, key switching whole
//! (with keys the backend holds, so a GPU keeps them and runs every step on the device), and a
//! ciphertext product's conversions and tensors (its lifted operands and sums held alike). Every
//! operation covers all RNS limbs and polynomials it is given (one limb-major layout) and returns
//! a [`BackendError`] instead of panicking. The kernels' per-element math is one header shared
//! with the CPU tests ([`kernels`](self) module docs).
//!
//! The host threads of the protocols' per-ciphertext pipelines are not the backend's: a
//! session's [`Workers`] run them, and [`par_map`] fans out over the workers it runs on.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod kernels;
pub mod ntt;
mod rns;
#[cfg(target_arch = "x86_64")]
mod simd;

pub use cpu::CpuBackend;
pub use cryprot_core::Block;
#[cfg(feature = "cuda")]
pub use cuda::{CudaBackend, CudaError, DeviceVec};
pub use ntt::NttTable;
pub use rns::TensorBasis;

use std::borrow::Cow;
use std::sync::Arc;

use crate::ring::modp::Modulus;

/// Result of a backend operation.
pub type BackendResult<T> = Result<T, BackendError>;

/// The server-heavy operations, batched: each call covers every RNS limb and every polynomial it
/// is given (one call per layer step, not per limb), and every call can fail (a device lost or
/// out of memory, operands of the wrong shape) with a [`BackendError`] naming the operation.
///
/// Layout, one for every operation: polynomials are runs of N values, and an operand over L RNS
/// limbs (L moduli or NTT tables given) is limb-major: L equal blocks, block l holding every
/// polynomial's residues mod p_l (`[limb][poly][N]`; an RNS polynomial's own layout when it is
/// one polynomial).
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Short name used in reports (`"cpu"`, `"cuda"`).
    fn name(&self) -> &'static str;

    /// Tweakable correlation-robust hash of many blocks: `out[i] = H(input[i], tweak_i)`, with H
    /// the fixed-key-AES TMMO construction of Guo et al. (ePrint 2019/074). Both OT parties must
    /// hash a key with the same tweak; a tweak is never reused within a session.
    fn hash_blocks(&self, input: &[Block], tweaks: Tweaks<'_>, out: &mut [Block]) -> BackendResult<()>;

    /// Forward negacyclic NTT, in place, of every run of N coefficients in [0, p) of `polys`,
    /// block l modulo the prime of `tables[l]`.
    fn ntt_forward(&self, tables: &[NttTable], polys: &mut [u64]) -> BackendResult<()> {
        let n = tables.first().map_or(1, NttTable::degree);
        self.ntt_forward_sparse(tables, polys, n)
    }

    /// [`Backend::ntt_forward`] of polynomials of `support` coefficients (weights packed into
    /// few low coefficients): each run's first `support` values are the polynomial, the rest
    /// are ignored and overwritten; the first stages reduce to copies.
    fn ntt_forward_sparse(&self, tables: &[NttTable], polys: &mut [u64], support: usize) -> BackendResult<()>;

    /// Inverse of [`Backend::ntt_forward`], in place.
    fn ntt_inverse(&self, tables: &[NttTable], polys: &mut [u64]) -> BackendResult<()>;

    /// Pointwise multiply-accumulate in NTT form over L = `moduli.len()` limbs, for ct×pt products
    /// and for selection sums Σ_i W_i·[\[t_i\]], over `batch` inputs at once:
    /// `out[b][l][j] = Σ_i x[b][l][i] ⊙ w[l][j][i] mod p_l`, where `x` holds the batch's inputs
    /// one after another (each L·I polynomials, limb-major), `w` L·J·I and `out` the batch's
    /// results (each L·J), each polynomial of `n` values. One side carries Shoup constants
    /// ([`Prepared`]): the weights when they are prepared once per model, or the inputs (the
    /// whole batch) when the weights are transformed on the fly; a backend that sums the
    /// products exactly (the CPU's) does not read them. Each operand is read from memory once
    /// for the whole call, so a batch should hold every input that meets the same weights.
    #[allow(clippy::too_many_arguments)]
    fn mul_acc(
        &self,
        moduli: &[Modulus],
        n: usize,
        batch: usize,
        x: &[u64],
        w: &[u64],
        prepared: Prepared<'_>,
        out: &mut [u64],
    ) -> BackendResult<()>;

    /// [`Backend::mul_acc`] with weights of `support` coefficients each (Cheetah's tiles of B),
    /// given in coefficient form, reduced mod each limb's prime: `heads[l][j][i]` holds weight
    /// (l, j, i)'s `support` values; the products use their forward transforms, computed here.
    /// The inputs carry the Shoup constants ([`Prepared::X`]) unless the backend sums exactly
    /// ([`Prepared::Neither`]). The default transforms every weight whole, then multiplies; the
    /// CPU's transforms one window of slots at a time where the products need it, so that no
    /// transformed weight goes through memory: past its first stages, which only copy, the
    /// transform of s coefficients is s-slot blocks computed each from the coefficients alone
    /// ([`NttTable::forward_sparse_slots`]).
    #[allow(clippy::too_many_arguments)]
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
        mul_acc_sparse_whole(self, tables, batch, x, heads, support, prepared, out)
    }

    /// Whether [`Backend::mul_acc`] over these moduli and polynomials of `n` values sums
    /// products exactly and reads no Shoup constants, so that a caller may pass
    /// [`Prepared::Neither`] instead of preparing an operand for one call.
    fn exact_products(&self, moduli: &[Modulus], n: usize) -> bool {
        let _ = (moduli, n);
        false
    }

    /// Whether [`Backend::mul_acc_held`] over these moduli sums products exactly and reads no
    /// Shoup constants of the weights, so that a caller may hold an empty buffer for them (the
    /// weight banks of selection sums). A backend whose held products run where its host-slice
    /// products do answers as [`Backend::exact_products`]; a GPU's held products run on the
    /// device, whose kernels read the constants.
    fn exact_held_products(&self, moduli: &[Modulus], n: usize) -> bool {
        self.exact_products(moduli, n)
    }

    /// Hands `values` to the backend to keep for [`Backend::mul_acc_held`]: device memory on a
    /// GPU (the host copy is freed), the same host memory on the CPU. Operands that serve many
    /// calls (the experts' weights of a selection sum, the encrypted selectors, the running
    /// sums) are held once instead of copied per call.
    fn hold(&self, values: Vec<u64>) -> BackendResult<Buffer>;

    /// Hands a buffer this backend holds back as host values (no copy on the CPU, a download
    /// from a GPU).
    fn fetch(&self, buffer: Buffer) -> BackendResult<Vec<u64>>;

    /// [`Backend::mul_acc`] on operands this backend holds ([`Backend::hold`]): the inputs are
    /// a range of each of `batch` held runs ([`HeldRuns`]), the weights `w` come with their
    /// Shoup constants `w_shoup` (an empty buffer where [`Backend::exact_held_products`]
    /// holds), and the results are **added to** `out` (residues) — so a selection sum streamed
    /// over several banks of experts accumulates where it is kept, and on a GPU nothing moves
    /// between host and device until the sums are fetched. A buffer held by another backend
    /// (another device) is an error.
    #[allow(clippy::too_many_arguments)]
    fn mul_acc_held(
        &self,
        moduli: &[Modulus],
        n: usize,
        batch: usize,
        x: HeldRuns<'_>,
        w: &Buffer,
        w_shoup: &Buffer,
        out: &mut Buffer,
    ) -> BackendResult<()>;

    /// The core of every RNS base conversion (basis extension, scale-and-round, modulus
    /// switching): `out[j] = Σ_i x[i]·c[i][j] mod m_j` for output moduli `moduli[j]`, where `x`
    /// holds I rows of `n` values (any u64: residues, small corrections, rounding terms), `consts`
    /// holds I·J pairs (c, Shoup constant of c mod m_j), row-major, and `out` J rows of `n`,
    /// reduced to [0, m_j).
    fn base_convert(
        &self,
        moduli: &[Modulus],
        n: usize,
        x: &[u64],
        consts: &[(u64, u64)],
        out: &mut [u64],
    ) -> BackendResult<()>;

    /// Sums of ciphertext tensors in NTT form over L = `moduli.len()` limbs, the core of a sum of
    /// ciphertext products: for `terms` pairs of two-part operands a_t = (a0, a1), b_t = (b0, b1),
    /// operands `first..first + terms` of the held runs `a` and `b` (each stored part by part,
    /// limb by limb: 2·L polynomials of `n` values, operand after operand, as
    /// [`Backend::extend_basis`] leaves them), `out` (held, 3·L polynomials, part by part)
    /// receives Σ_t a0·b0, Σ_t (a0·b1 + a1·b0) and Σ_t a1·b1 mod p_l, added to its residues when
    /// `add`; operands are residues. An `out` in host memory may be taken over by the backend
    /// (moved to the device that holds the operands, so that later sums add there). The default
    /// runs on the host: per slot, three products per pair (Karatsuba: a0·b0, a1·b1 and
    /// (a0 + a1)·(b0 + b1), whose difference is the middle term) summed exactly in 128 bits and
    /// reduced once per pass — 8 pairs for primes of up to 61 bits (each product below 2^124),
    /// fewer for wider ones.
    #[allow(clippy::too_many_arguments)]
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
        check_tensor_sum(moduli, n, terms, a, b, out.len())?;
        let each = 2 * moduli.len() * n;
        let (a, b) = match (a.0.host_values(), b.0.host_values()) {
            (Some(x), Some(y)) => (&x[a.1 * each..(a.1 + terms) * each], &y[b.1 * each..(b.1 + terms) * each]),
            _ => return Err(foreign(self.name(), if a.0.is_host() { b.0 } else { a.0 })),
        };
        let out = match &mut out.0 {
            Held::Host(v) => &mut v[..],
            #[allow(unreachable_patterns)] // device buffers exist only with the CUDA backend
            _ => return Err(foreign(self.name(), out)),
        };
        if terms == 0 && !add {
            out.fill(0);
        }
        let limbs = moduli.len();
        let bits = moduli.iter().map(Modulus::bits).max().unwrap_or(0);
        let pass = 8.min(1usize << 125u32.saturating_sub(2 * bits));
        /// Slots per block: the block's exact sums stay in L1 while one pair at a time streams by.
        const BLOCK: usize = 256;
        let (e0, rest) = out.split_at_mut(limbs * n);
        let (e1, e2) = rest.split_at_mut(limbs * n);
        let (mut low, mut high, mut both) = ([0u128; BLOCK], [0u128; BLOCK], [0u128; BLOCK]);
        for first in (0..terms).step_by(pass) {
            let fresh = first == 0 && !add;
            let range = first..(first + pass).min(terms);
            for (l, m) in moduli.iter().enumerate() {
                for from in (l * n..(l + 1) * n).step_by(BLOCK) {
                    let len = BLOCK.min((l + 1) * n - from);
                    let (low, high, both) = (&mut low[..len], &mut high[..len], &mut both[..len]);
                    low.fill(0);
                    high.fill(0);
                    both.fill(0);
                    for t in range.clone() {
                        let (half0, half1) = ((t * 2) * limbs * n + from, (t * 2 + 1) * limbs * n + from);
                        let (x0, x1) = (&a[half0..][..len], &a[half1..][..len]);
                        let (y0, y1) = (&b[half0..][..len], &b[half1..][..len]);
                        for c in 0..len {
                            low[c] += x0[c] as u128 * y0[c] as u128;
                            high[c] += x1[c] as u128 * y1[c] as u128;
                            both[c] += (x0[c] + x1[c]) as u128 * (y0[c] + y1[c]) as u128;
                        }
                    }
                    let old = |e: &[u64], c: usize| if fresh { 0 } else { e[c] as u128 };
                    for c in 0..len {
                        let at = from + c;
                        (e0[at], e1[at], e2[at]) = (
                            m.reduce_wide(low[c] + old(e0, at)),
                            m.reduce_wide(both[c] - low[c] - high[c] + old(e1, at)),
                            m.reduce_wide(high[c] + old(e2, at)),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Basis extension Q → Q∪P of the operands of ciphertext products (`basis`: one level's
    /// [`TensorBasis`]): `x` holds polynomials mod Q, k limbs each, one after another, in NTT
    /// form when `ntt_form` (else coefficient form); the result holds each over Q∪P in NTT form
    /// (|Q∪P| limbs each, in `x`'s order), its P residues those of the centered lift (|x| ≤ Q/2)
    /// of its coefficients, held by this backend for [`Backend::tensor_sum`]. The default runs on
    /// the host, one polynomial per task on the workers it runs on.
    fn extend_basis(&self, basis: &TensorBasis, x: &[u64], ntt_form: bool) -> BackendResult<Buffer> {
        use rayon::prelude::*;
        let count = rns::check_extend(basis, x)?;
        let (k, n) = (basis.level(), basis.degree());
        let width = basis.len() * n;
        let mut out = Scratch::take(count * width);
        let task = |(x, out): (&[u64], &mut [u64])| rns::extend_one(self, basis, x, ntt_form, out);
        if count > 1 && rayon::current_thread_index().is_some() {
            x.par_chunks(k * n).zip(out.par_chunks_mut(width)).try_for_each(task)?;
        } else {
            x.chunks(k * n).zip(out.chunks_mut(width)).try_for_each(task)?;
        }
        Ok(Buffer::from(out))
    }

    /// Scale-and-round Q∪P → Q of the sums of ciphertext tensors: every polynomial of `x` (held,
    /// |Q∪P| limbs each in NTT form, as [`Backend::tensor_sum`] leaves them; consumed) is
    /// brought to coefficients and becomes ⌊t·x/Q⌉ mod Q (for |x| < QP/4) in `out` (k limbs
    /// each, coefficient form). The default runs on the host, one polynomial per task.
    fn scale_down(&self, basis: &TensorBasis, x: Buffer, out: &mut [u64]) -> BackendResult<()> {
        use rayon::prelude::*;
        let count = rns::check_scale_down(basis, x.len(), out.len())?;
        let mut x = match x.0 {
            Held::Host(v) => v,
            #[allow(unreachable_patterns)] // device buffers exist only with the CUDA backend
            _ => return Err(foreign(self.name(), &x)),
        };
        let (width, k, n) = (basis.len() * basis.degree(), basis.level(), basis.degree());
        let task = |(x, out): (&mut [u64], &mut [u64])| rns::scale_down_one(self, basis, x, out);
        if count > 1 && rayon::current_thread_index().is_some() {
            x.par_chunks_mut(width).zip(out.par_chunks_mut(k * n)).try_for_each(task)
        } else {
            x.chunks_mut(width).zip(out.chunks_mut(k * n)).try_for_each(task)
        }
    }

    /// The automorphism σ_g: X ↦ X^g (g odd) of every run of `n` coefficients (coefficient form)
    /// of `input` into `out`: X^i ↦ X^(i·g mod 2n), negated when i·g mod 2n ≥ n (X^n = −1), block
    /// l modulo `moduli[l]`. The first step of every rotation and packing key switch.
    fn automorphism(
        &self,
        moduli: &[Modulus],
        n: usize,
        element: usize,
        input: &[u64],
        out: &mut [u64],
    ) -> BackendResult<()>;

    /// Modulus switching: x ↦ ⌊x / p_top⌉ for polynomials given by their residues: `low` holds
    /// their residues mod `moduli` (limb-major) and `top` theirs mod `p_top` (one run each); each
    /// run becomes (run − \[top\])·p_top^-1 mod p_l with \[top\] centred in (−p_top/2, p_top/2]. This
    /// drops a ciphertext's last prime, and divides by the special prime at the end of a key
    /// switch.
    fn divide_by_prime(
        &self,
        moduli: &[Modulus],
        n: usize,
        low: &mut [u64],
        top: &[u64],
        p_top: &Modulus,
    ) -> BackendResult<()>;

    /// Key switching's inner product, the core of every rotation, packing merge and
    /// relinearization: for a polynomial c at level q' = q_0···q_(k−1) (k = `q.len()`) in
    /// coefficient form, its digits \[c\]_(q_i) are lifted to every limb of q' (and of the special
    /// prime P when `special` is given), transformed, and
    ///   `out[l][h] = Σ_i [c]_(q_i) · key[row(l)][h][i]`   for l over q' (h ∈ {0, 1})
    /// with row(l) = l on q' and the key's last row on P (a key of the full level read at a
    /// lower one: its first k digits and rows). With P the sums are divided by P with rounding
    /// (hybrid key switching: the digits' noise shrinks by P) and come back in coefficient
    /// form; without, in NTT form unless `coeff_out`. The default runs on the host over host
    /// buffers; a GPU runs the whole pipeline on its device when the key is held there, so only
    /// c goes in and the sums come out.
    fn key_switch(
        &self,
        q: &[NttTable],
        special: Option<&NttTable>,
        key: SwitchKeyRows<'_>,
        c: &[u64],
        coeff_out: bool,
        out: &mut [u64],
    ) -> BackendResult<()> {
        let (n, k) = check_key_switch(q, special, &key, c, out)?;
        let (rows, shoup) = match (&key.rows.0, &key.shoup.0) {
            (Held::Host(rows), Held::Host(shoup)) => (rows, shoup),
            #[allow(unreachable_patterns)] // device buffers exist only with the CUDA backend
            _ => return Err(foreign(self.name(), if key.rows.is_host() { key.shoup } else { key.rows })),
        };
        let targets = k + usize::from(special.is_some());
        let moduli: Vec<Modulus> = q.iter().chain(special).map(|t| *t.modulus()).collect();
        // the digits d_i = c mod q_i lifted to every target limb l ([l][i][N]), then the sums at
        // P (two runs); the sums at q' are written in `out`
        let mut scratch = Scratch::take(targets * k * n + 2 * n);
        let (digits, top) = scratch.split_at_mut(targets * k * n);
        for (l, m) in moduli.iter().enumerate() {
            for (i, (dst, src)) in digits[l * k * n..][..k * n].chunks_exact_mut(n).zip(c.chunks_exact(n)).enumerate() {
                m.reduce_residues(moduli[i].value(), src, dst);
            }
        }
        let (q_digits, p_digits) = digits.split_at_mut(k * k * n);
        self.ntt_forward(q, q_digits)?;
        // Σ_i d_i·key[row][h][i] per limb l and half h ([l][h][N]): a key of this level is one
        // call over q' and one at P, a lower level reads the first k digits of each row and half
        let per_row = 2 * key.digits * n;
        let switch = |limbs: &[Modulus], first_row: usize, x: &[u64], out: &mut [u64]| -> BackendResult<()> {
            if k == key.digits {
                let at = first_row * per_row..(first_row + limbs.len()) * per_row;
                return self.mul_acc(limbs, n, 1, x, &rows[at.clone()], Prepared::W(&shoup[at]), out);
            }
            for (r, (x, out)) in x.chunks_exact(k * n).zip(out.chunks_exact_mut(2 * n)).enumerate() {
                for (h, out) in out.chunks_exact_mut(n).enumerate() {
                    let at = (first_row + r) * per_row + h * key.digits * n;
                    let (w, c) = (&rows[at..][..k * n], &shoup[at..][..k * n]);
                    self.mul_acc(std::slice::from_ref(&limbs[r]), n, 1, x, w, Prepared::W(c), out)?;
                }
            }
            Ok(())
        };
        switch(&moduli[..k], 0, q_digits, out)?;
        if let Some(special) = special {
            self.ntt_forward(std::slice::from_ref(special), p_digits)?;
            switch(&moduli[k..], key.digits, p_digits, top)?;
            self.ntt_inverse(q, out)?;
            self.ntt_inverse(std::slice::from_ref(special), top)?;
            self.divide_by_prime(&moduli[..k], n, out, top, special.modulus())?;
        } else if coeff_out {
            self.ntt_inverse(q, out)?;
        }
        Ok(())
    }
}

/// A key-switching key as [`Backend::key_switch`] reads it: per row r (one per prime of the
/// full level q, then one for the special prime where the key has one) and half h (the parts
/// b and a of the encryptions), `digits` polynomials in NTT form — the encryption of the
/// gadget g_i times the old secret at limb r — stored `[r][h][i][N]` in `rows`, their Shoup
/// constants in `shoup` alike. Held by the backend that switches with it ([`Backend::hold`]).
#[derive(Debug, Clone, Copy)]
pub struct SwitchKeyRows<'a> {
    /// The key's residues.
    pub rows: &'a Buffer,
    /// Their Shoup constants.
    pub shoup: &'a Buffer,
    /// Digits per row and half: the number of primes of the full level.
    pub digits: usize,
}

/// The shape contract of [`Backend::key_switch`]; returns (N, k).
pub(crate) fn check_key_switch(
    q: &[NttTable],
    special: Option<&NttTable>,
    key: &SwitchKeyRows<'_>,
    c: &[u64],
    out: &[u64],
) -> BackendResult<(usize, usize)> {
    let (n, _) = check_ntt("key_switch", q, c)?;
    let k = q.len();
    if let Some(p) = special.filter(|p| p.degree() != n) {
        return Err(shape("key_switch", format!("a special prime's table of degree {}, q's of {n}", p.degree())));
    }
    if c.len() != k * n || out.len() != 2 * k * n {
        return Err(shape(
            "key_switch",
            format!("{} input and {} output values for one polynomial of {k} limbs of degree {n}", c.len(), out.len()),
        ));
    }
    let rows = key.digits + usize::from(special.is_some());
    if k > key.digits || key.rows.len() != rows * 2 * key.digits * n || key.shoup.len() != key.rows.len() {
        return Err(shape(
            "key_switch",
            format!(
                "a key of {} values and {} constants for {rows} rows of {} digits, switching {k} limbs",
                key.rows.len(),
                key.shoup.len(),
                key.digits
            ),
        ));
    }
    Ok((n, k))
}

/// Values a backend keeps for later operations ([`Backend::hold`]): host memory for the CPU
/// backend, device memory for a GPU. Only the backend that made it can read it.
#[derive(Debug)]
pub struct Buffer(pub(crate) Held);

/// Where a [`Buffer`]'s values are.
#[derive(Debug)]
pub(crate) enum Held {
    /// In host memory.
    Host(HostVec),
    /// In the memory of GPU `ordinal`.
    #[cfg(feature = "cuda")]
    Device {
        /// The device.
        ordinal: usize,
        /// The values.
        values: DeviceVec,
    },
}

impl Buffer {
    /// Number of values.
    pub fn len(&self) -> usize {
        match &self.0 {
            Held::Host(v) => v.len(),
            #[cfg(feature = "cuda")]
            Held::Device { values, .. } => values.len(),
        }
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `values` in host memory, held by no backend yet (keys as they arrive); a backend takes
    /// them over with [`Backend::fetch`] and [`Backend::hold`].
    pub fn host(values: Vec<u64>) -> Buffer {
        Buffer(Held::Host(values.into()))
    }

    /// Whether the values are in host memory.
    pub fn is_host(&self) -> bool {
        matches!(self.0, Held::Host(_))
    }

    /// The values, where they are in host memory.
    pub fn host_values(&self) -> Option<&[u64]> {
        match &self.0 {
            Held::Host(v) => Some(v),
            #[cfg(feature = "cuda")]
            Held::Device { .. } => None,
        }
    }

    /// Where the values are, for errors.
    fn place(&self) -> String {
        match &self.0 {
            Held::Host(_) => "host memory".into(),
            #[cfg(feature = "cuda")]
            Held::Device { ordinal, .. } => format!("CUDA device {ordinal}"),
        }
    }
}

/// The inputs of [`Backend::mul_acc_held`]: `values` holds `batch` runs, each of `stride`
/// polynomials per limb (`[entry][limb][i][N]`, as [`Backend::mul_acc`]'s inputs), and the
/// products read polynomials `first..first + count` of every run (a range of experts).
#[derive(Debug, Clone, Copy)]
pub struct HeldRuns<'a> {
    /// The held runs.
    pub values: &'a Buffer,
    /// Polynomials per run and limb.
    pub stride: usize,
    /// The first polynomial read.
    pub first: usize,
    /// Polynomials read per run and limb.
    pub count: usize,
}

impl HeldRuns<'_> {
    /// Offset (in values) of the range read for entry `b` and limb `l` of `limbs`.
    pub(crate) fn offset(&self, n: usize, limbs: usize, b: usize, l: usize) -> usize {
        ((b * limbs + l) * self.stride + self.first) * n
    }

    /// Whether the range is every polynomial of the runs (no gathering).
    pub(crate) fn whole(&self) -> bool {
        self.first == 0 && self.count == self.stride
    }

    /// Checks the runs against `batch` entries of `limbs` limbs.
    pub(crate) fn check(&self, n: usize, limbs: usize, batch: usize) -> BackendResult<()> {
        if self.first.checked_add(self.count).is_none_or(|end| end > self.stride) {
            return Err(shape(
                "mul_acc_held",
                format!("inputs {}..+{} of runs of {}", self.first, self.count, self.stride),
            ));
        }
        if self.values.len() != batch * limbs * self.stride * n {
            return Err(shape(
                "mul_acc_held",
                format!(
                    "{} held inputs for {batch} runs of {limbs} limbs × {} polynomials",
                    self.values.len(),
                    self.stride
                ),
            ));
        }
        Ok(())
    }

    /// The inputs read, as [`Backend::mul_acc`]'s `x`: the held values when the range is whole,
    /// else the ranges gathered.
    pub(crate) fn gather<'v>(&self, values: &'v [u64], n: usize, limbs: usize, batch: usize) -> Cow<'v, [u64]> {
        if self.whole() {
            return Cow::Borrowed(values);
        }
        let run = self.count * n;
        let mut out = Vec::with_capacity(batch * limbs * run);
        for b in 0..batch {
            for l in 0..limbs {
                out.extend_from_slice(&values[self.offset(n, limbs, b, l)..][..run]);
            }
        }
        Cow::Owned(out)
    }
}

/// The error for a buffer that `backend` cannot read.
pub(crate) fn foreign(backend: &str, buffer: &Buffer) -> BackendError {
    BackendError::Foreign { backend: backend.to_string(), place: buffer.place() }
}

/// A shape error of operation `op`.
fn shape(op: &'static str, what: impl Into<String>) -> BackendError {
    BackendError::Shape { op, what: what.into() }
}

/// The shape contract of [`Backend::hash_blocks`], checked alike by every backend.
pub(crate) fn check_hash(input: &[Block], tweaks: Tweaks<'_>, out: &[Block]) -> BackendResult<()> {
    if input.len() != out.len() {
        return Err(shape("hash_blocks", format!("{} inputs, {} outputs", input.len(), out.len())));
    }
    match tweaks {
        Tweaks::Listed(list) if list.len() != input.len() => {
            Err(shape("hash_blocks", format!("{} tweaks for {} blocks", list.len(), input.len())))
        }
        _ => Ok(()),
    }
}

/// The limb-major contract: `len` values are `limbs` blocks of whole runs of `n`; returns the
/// number of runs per block.
fn per_limb(op: &'static str, limbs: usize, n: usize, len: usize) -> BackendResult<usize> {
    if limbs == 0 || n == 0 || !len.is_multiple_of(limbs * n) {
        return Err(shape(op, format!("{len} values are not {limbs} limbs of whole polynomials of degree {n}")));
    }
    Ok(len / (limbs * n))
}

/// The shape contract of the NTTs: returns the degree N and the polynomials per limb.
pub(crate) fn check_ntt(op: &'static str, tables: &[NttTable], polys: &[u64]) -> BackendResult<(usize, usize)> {
    let n = tables.first().ok_or_else(|| shape(op, "no NTT table"))?.degree();
    if let Some(t) = tables.iter().find(|t| t.degree() != n) {
        return Err(shape(op, format!("tables of degrees {n} and {}", t.degree())));
    }
    Ok((n, per_limb(op, tables.len(), n, polys.len())?))
}

/// The shape contract of [`Backend::mul_acc`] and [`Backend::mul_acc_held`] on lengths: `batch`
/// inputs of L·I polynomials in `x`, as many results of L·J in `out`, L·J·I weights in `w`, and
/// `constants` Shoup constants for the prepared operand of `of` values. Returns (I, J).
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_mul_acc(
    moduli: &[Modulus],
    n: usize,
    batch: usize,
    x: usize,
    w: usize,
    constants: usize,
    of: usize,
    out: usize,
) -> BackendResult<(usize, usize)> {
    if batch == 0 || !x.is_multiple_of(batch) || !out.is_multiple_of(batch) {
        return Err(shape("mul_acc", format!("{x} input and {out} output values are not {batch} batches")));
    }
    let inputs = per_limb("mul_acc", moduli.len(), n, x / batch)?;
    let outputs = per_limb("mul_acc", moduli.len(), n, out / batch)?;
    if w != (out / batch) * inputs {
        return Err(shape("mul_acc", format!("{w} weights for {inputs} inputs × {outputs} outputs per limb")));
    }
    if constants != of {
        return Err(shape("mul_acc", format!("{constants} Shoup constants for {of} values")));
    }
    Ok((inputs, outputs))
}

/// [`Backend::mul_acc_sparse`] by whole transforms: every weight transformed by
/// [`Backend::ntt_forward_sparse`], then [`Backend::mul_acc`] (the trait's default, and what
/// the CPU's windowed version is tested against).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mul_acc_sparse_whole<B: Backend + ?Sized>(
    be: &B,
    tables: &[NttTable],
    batch: usize,
    x: &[u64],
    heads: &[u64],
    support: usize,
    prepared: Prepared<'_>,
    out: &mut [u64],
) -> BackendResult<()> {
    let n = tables.first().map_or(1, NttTable::degree);
    let polys = check_sparse_heads(tables, heads, support, prepared)?;
    let mut w = vec![0u64; polys * n];
    for (run, head) in w.chunks_exact_mut(n).zip(heads.chunks_exact(support)) {
        run[..support].copy_from_slice(head);
    }
    be.ntt_forward_sparse(tables, &mut w, support)?;
    let moduli: Vec<Modulus> = tables.iter().map(|t| *t.modulus()).collect();
    be.mul_acc(&moduli, n, batch, x, &w, prepared, out)
}

/// The part of the shape contract of [`Backend::mul_acc_sparse`] that the heads carry (the
/// rest is [`Backend::mul_acc`]'s); returns the number of weight polynomials.
pub(crate) fn check_sparse_heads(
    tables: &[NttTable],
    heads: &[u64],
    support: usize,
    prepared: Prepared<'_>,
) -> BackendResult<usize> {
    let n = tables.first().map_or(0, NttTable::degree);
    if support == 0 || support > n || !heads.len().is_multiple_of(support * tables.len()) {
        return Err(shape(
            "mul_acc_sparse",
            format!("{} values are not weights of {support} of {n} coefficients per limb", heads.len()),
        ));
    }
    if matches!(prepared, Prepared::W(_)) {
        return Err(shape("mul_acc_sparse", "weights transformed on the fly carry no Shoup constants"));
    }
    Ok(heads.len() / support)
}

/// The shape contract of [`Backend::tensor_sum`]: `terms` operands from each run's first, and
/// three parts out.
pub(crate) fn check_tensor_sum(
    moduli: &[Modulus],
    n: usize,
    terms: usize,
    a: (&Buffer, usize),
    b: (&Buffer, usize),
    out: usize,
) -> BackendResult<()> {
    let each = 2 * moduli.len() * n;
    for (values, first) in [a, b] {
        if first.checked_add(terms).and_then(|end| end.checked_mul(each)).is_none_or(|end| end > values.len()) {
            return Err(shape(
                "tensor_sum",
                format!(
                    "operands {first}..{first}+{terms} of 2×{} limbs from a run of {} values",
                    moduli.len(),
                    values.len()
                ),
            ));
        }
    }
    if out != 3 * moduli.len() * n {
        return Err(shape("tensor_sum", format!("{out} output values for 3×{} limbs", moduli.len())));
    }
    Ok(())
}

/// The shape contract of [`Backend::base_convert`]; returns the number of input rows I.
pub(crate) fn check_base_convert(
    moduli: &[Modulus],
    n: usize,
    x: &[u64],
    consts: &[(u64, u64)],
    out: &[u64],
) -> BackendResult<usize> {
    if n == 0 || !x.len().is_multiple_of(n) {
        return Err(shape("base_convert", "ragged input rows"));
    }
    let inputs = x.len() / n;
    if out.len() != moduli.len() * n {
        return Err(shape("base_convert", format!("{} outputs for {} moduli", out.len(), moduli.len())));
    }
    if consts.len() != inputs * moduli.len() {
        return Err(shape(
            "base_convert",
            format!("{} constants for {inputs} rows × {} moduli", consts.len(), moduli.len()),
        ));
    }
    Ok(inputs)
}

/// The shape contract of [`Backend::automorphism`]; returns the polynomials per limb.
pub(crate) fn check_automorphism(
    moduli: &[Modulus],
    n: usize,
    element: usize,
    input: &[u64],
    out: &[u64],
) -> BackendResult<usize> {
    if !n.is_power_of_two() || input.len() != out.len() {
        return Err(shape("automorphism", format!("{} values in, {} out, degree {n}", input.len(), out.len())));
    }
    if element.is_multiple_of(2) || element >= 2 * n {
        return Err(shape("automorphism", format!("X ↦ X^{element} is not an automorphism of degree {n}")));
    }
    per_limb("automorphism", moduli.len(), n, input.len())
}

/// The shape contract of [`Backend::divide_by_prime`]; returns the number of polynomials.
pub(crate) fn check_divide(moduli: &[Modulus], n: usize, low: &[u64], top: &[u64]) -> BackendResult<usize> {
    let polys = per_limb("divide_by_prime", moduli.len(), n, low.len())?;
    if top.len() != polys * n {
        return Err(shape(
            "divide_by_prime",
            format!("{} top residues for {polys} polynomials of degree {n}", top.len()),
        ));
    }
    Ok(polys)
}

/// The constants of [`Backend::divide_by_prime`] per modulus p_i: (p_top mod p_i,
/// p_top^-1 mod p_i, its Shoup constant). The primes of a parameter set are distinct (checked
/// when it is built), so the inverse exists; a pair that is not coprime is an error.
pub(crate) fn divide_constants(moduli: &[Modulus], p_top: &Modulus) -> BackendResult<Vec<[u64; 3]>> {
    moduli
        .iter()
        .map(|m| {
            let p_mod = m.reduce(p_top.value());
            let inv = m.inv(p_mod).ok_or_else(|| {
                shape("divide_by_prime", format!("{} has no inverse mod {}", p_top.value(), m.value()))
            })?;
            Ok([p_mod, inv, m.shoup(inv)])
        })
        .collect()
}

/// Which backend to run on (`--backend` on the command line: `auto`, `cpu`, `cuda`, or
/// `cuda:held|pipelines|everything` for the GPU's [`Offload`] policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The GPU when this build has the CUDA backend and a device is present, else the CPU.
    #[default]
    Auto,
    /// The CPU backend (rayon).
    Cpu,
    /// The CUDA backend with this offload policy: an error where the build or the machine has
    /// none.
    Cuda(Offload),
}

impl std::str::FromStr for BackendChoice {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        let lower = s.to_ascii_lowercase();
        let offload = |policy: &str| {
            let all = [Offload::Held, Offload::Pipelines, Offload::Everything];
            all.into_iter().find(|o| o.name() == policy).ok_or_else(|| BackendError::Unknown(s.to_string()))
        };
        match lower.split_once(':') {
            Some(("cuda", policy)) => offload(policy).map(BackendChoice::Cuda),
            Some(_) => Err(BackendError::Unknown(s.to_string())),
            None => match lower.as_str() {
                "auto" => Ok(BackendChoice::Auto),
                "cpu" => Ok(BackendChoice::Cpu),
                "cuda" => Ok(BackendChoice::Cuda(Offload::Held)),
                _ => Err(BackendError::Unknown(s.to_string())),
            },
        }
    }
}

/// Which calls a GPU backend runs on its device. Host-slice calls there copy their operands in
/// and their results out; measured on an H200 beside 16 host cores, every single kernel was then
/// slower than the host (README, "The GPU backend"), while work on operands the device holds was
/// up to 370× faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offload {
    /// The work on held buffers: selection sums, key switches with held keys, and whatever
    /// follows operands the device holds; host-slice calls on the host (the default).
    #[default]
    Held,
    /// Also the pipelines that start from host slices and keep their intermediates on the
    /// device — a ciphertext product's operands lifted there, so that its tensors and rounding
    /// follow; products by weights given by their low coefficients spread, transformed and
    /// multiplied there — while single kernels on host slices stay on the host.
    Pipelines,
    /// Every call, host slices copied in and out (tests and kernel benchmarks).
    Everything,
}

impl Offload {
    /// The policy's name on the command line (`cuda:NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Offload::Held => "held",
            Offload::Pipelines => "pipelines",
            Offload::Everything => "everything",
        }
    }
}

/// Errors choosing or starting a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A name that is not a backend.
    #[error("unknown backend `{0}` (expected auto, cpu, cuda or cuda:held|pipelines|everything)")]
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
    /// A buffer held by another backend.
    #[error("the {backend} backend cannot read a buffer held in {place}")]
    Foreign {
        /// The backend asked.
        backend: String,
        /// Where the buffer is.
        place: String,
    },
    /// An operation was given operands of the wrong shape (a caller's bug, reported, not a panic).
    #[error("backend operation {op}: {what}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What did not fit.
        what: String,
    },
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
        BackendChoice::Cuda(offload) => Ok(std::sync::Arc::new(CudaBackend::new(0, threads)?.with_offload(offload))),
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
            BackendChoice::Cuda(_) => Err(BackendError::NoCuda(WHY)),
            BackendChoice::Cpu => cpu(&"asked for"),
            BackendChoice::Auto => cpu(&WHY),
        }
    }
}

/// The host threads that run the protocols' per-ciphertext pipelines (encrypting a row's tiles,
/// a key switch per ciphertext, a response per result group): a rayon pool of its own, apart from
/// the backend (a GPU has its own cores; the CPU backend its own pool for calls from outside any
/// pool) and from the global pool, where the OT library parks workers while it waits for the
/// network. A session holds one and runs every heavy step inside [`Workers::compute`].
#[derive(Clone)]
pub struct Workers {
    pool: Arc<rayon::ThreadPool>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("threads", &self.threads()).finish()
    }
}

impl Workers {
    /// `threads` workers (0: one per core), named `name-i`.
    pub fn new(threads: usize, name: &'static str) -> Result<Workers, rayon::ThreadPoolBuildError> {
        let pool =
            rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(move |i| format!("{name}-{i}")).build()?;
        Ok(Workers { pool: Arc::new(pool) })
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` on these workers: [`par_map`] inside it fans out over them. From async code the
    /// runtime's thread hands its other tasks (the link's I/O) off first.
    pub fn compute<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.pool.install(f)),
            _ => self.pool.install(f),
        }
    }
}

/// `task(i)` for i in 0..count, in order: in parallel on the workers this runs on (inside
/// [`Workers::compute`]), else one after the other on the calling thread (never on the global
/// pool).
pub fn par_map<T: Send>(count: usize, task: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    use rayon::prelude::*;
    if count > 1 && rayon::current_thread_index().is_some() {
        (0..count).into_par_iter().map(task).collect()
    } else {
        (0..count).map(task).collect()
    }
}

/// `f(i, item)` on every item of `items`: in parallel on the workers this runs on (inside
/// [`Workers::compute`]), else one after the other (as [`par_map`]).
pub fn each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync + Send) {
    use rayon::prelude::*;
    if items.len() > 1 && rayon::current_thread_index().is_some() {
        items.par_iter_mut().enumerate().for_each(|(i, item)| f(i, item));
    } else {
        items.iter_mut().enumerate().for_each(|(i, item)| f(i, item));
    }
}

/// `f(r, run)` on every run of `n` values of `data`: in parallel on the workers this runs on
/// (inside [`Workers::compute`]), else one after the other (as [`par_map`]).
pub fn each_run(data: &mut [u64], n: usize, f: impl Fn(usize, &mut [u64]) + Sync + Send) {
    use rayon::prelude::*;
    if rayon::current_thread_index().is_some() {
        data.par_chunks_mut(n).enumerate().for_each(|(r, run)| f(r, run));
    } else {
        data.chunks_mut(n).enumerate().for_each(|(r, run)| f(r, run));
    }
}

/// Keeps freed heap memory in the process for the next allocations (glibc; elsewhere nothing).
/// By default glibc serves blocks above a sliding threshold (128 KiB, rising with frees) with
/// fresh mappings and trims the top of its heaps back to the kernel, so the stream of
/// same-sized intermediates a selected product allocates (polynomials of 128 KiB to a few MiB)
/// is faulted in and zeroed page by page again each time, which costs more than the work on
/// them where first touches are slow (a virtual machine: ~3% of the time at the MoE layer's
/// SPU shape). Blocks up to 32 MiB (glibc's most) come from the heaps, each heap keeps up to
/// 64 MiB of freed top mapped, and there are as many heaps as cores (glibc's 8 per core each
/// kept their own freed memory: 1.95–2.08 GB resident at the peak of that shape, against
/// 1.88–1.90 GB with one per core). Call once at process start; the library never calls it.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let cores = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets allocator parameters; every value is in its documented range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
            libc::mallopt(libc::M_ARENA_MAX, cores);
        }
    }
}

/// Host values a [`Buffer`] holds: when the buffer drops, values taken from a [`Scratch`] go
/// back to the dropping thread's scratch pool, and any other allocation of at least
/// [`POOLED_BYTES`] to the pool [`zeros`] takes from instead of back to the kernel.
#[derive(Debug)]
pub(crate) struct HostVec {
    values: Vec<u64>,
    /// Whether the values came from a [`Scratch`] (an intermediate: lifted operands, sums).
    scratch: bool,
}

impl HostVec {
    /// The values, leaving the pools out.
    pub(crate) fn into_vec(mut self) -> Vec<u64> {
        std::mem::take(&mut self.values)
    }
}

impl From<Vec<u64>> for HostVec {
    fn from(values: Vec<u64>) -> HostVec {
        HostVec { values, scratch: false }
    }
}

impl std::ops::Deref for HostVec {
    type Target = Vec<u64>;
    fn deref(&self) -> &Vec<u64> {
        &self.values
    }
}

impl std::ops::DerefMut for HostVec {
    fn deref_mut(&mut self) -> &mut Vec<u64> {
        &mut self.values
    }
}

impl Drop for HostVec {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.values);
        if self.scratch {
            drop(Scratch(values));
        } else if values.capacity() * size_of::<u64>() >= POOLED_BYTES {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            pool.push(values);
            // the oldest go first while the pool is over its bound
            let mut bytes: usize = pool.iter().map(|v| v.capacity() * size_of::<u64>()).sum();
            while bytes > POOL_BYTES {
                bytes -= pool.remove(0).capacity() * size_of::<u64>();
            }
        }
    }
}

/// Allocations from this size on are mapped afresh by the allocator (glibc's largest heap
/// block is 32 MiB) and come back from the kernel page by page, zeroed, at first touch: slow
/// where pages are first touched through a hypervisor (the selectors' layout of one matrix at
/// the MoE layer's SPU shape, 0.4 GB, cost ~4% of its time that way).
const POOLED_BYTES: usize = 32 << 20;

/// The most the pool keeps: one matrix's selectors' layout at the SPU shape (0.4 GB) and a
/// little more; the oldest buffers leave first (a batch lets its layout go last).
const POOL_BYTES: usize = 512 << 20;

/// Large host allocations given back by the [`Buffer`]s that held them (selectors' layouts,
/// weight banks, selection sums), for the next matrix's.
static POOL: std::sync::Mutex<Vec<Vec<u64>>> = std::sync::Mutex::new(Vec::new());

/// `len` zeros for a large buffer, in transparent huge pages where the kernel allows them
/// (`madvise`, before the first touch). A fresh buffer of N 4 KiB pages costs N faults, each
/// zeroing a page; one read before the first write (a running sum) maps the shared zero page
/// and makes the write fault again with a TLB flush on every core. In 2 MiB pages both happen
/// 512 times less often.
///
/// From 32 MiB on, a pooled allocation of `len` values (up to an eighth more) is
/// taken if there is one, zeroed in memory that is already mapped; if none is, the pool is
/// emptied first.
pub fn zeros(len: usize) -> Vec<u64> {
    const HUGE: usize = 2 << 20;
    let bytes = len * size_of::<u64>();
    if bytes >= POOLED_BYTES {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let fits = |v: &Vec<u64>| (len..=len + len / 8).contains(&v.capacity());
        match (0..pool.len()).filter(|&i| fits(&pool[i])).min_by_key(|&i| pool[i].capacity()) {
            Some(i) => {
                let mut v = pool.remove(i);
                drop(pool);
                v.clear();
                v.resize(len, 0);
                return v;
            }
            // the sizes changed (another product's layout): what the pool keeps would only
            // stay resident beside the fresh allocations
            None => pool.clear(),
        }
    }
    let mut v = vec![0u64; len];
    if bytes >= 2 * HUGE {
        let start = v.as_mut_ptr() as usize;
        let (from, to) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
        // SAFETY: [from, to) lies inside `v`'s allocation and is page-aligned; MADV_HUGEPAGE
        // only changes how the kernel backs the range, never its contents. A refusal (no THP)
        // leaves ordinary pages.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
        }
    }
    v
}

/// A host buffer for intermediate values that is handed back to its thread's pool when dropped
/// and taken again by the next [`Scratch::take`] there: a stream of same-sized intermediates
/// (lifted ciphertexts, sums of products) reuses memory instead of faulting in and zeroing fresh
/// pages for each. Its contents are unspecified: a user writes before it reads.
#[derive(Debug)]
pub struct Scratch(Vec<u64>);

/// Buffers and bytes a thread's scratch pool keeps at most.
const SCRATCH_BUFFERS: usize = 4;
const SCRATCH_BYTES: usize = 256 << 20;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Vec<u64>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Scratch {
    /// `len` values: the smallest pooled buffer of this thread that holds them, else fresh
    /// [`zeros`].
    pub fn take(len: usize) -> Scratch {
        let pooled = SCRATCH.with(|pool| {
            let mut pool = pool.borrow_mut();
            let best = (0..pool.len()).filter(|&i| pool[i].capacity() >= len).min_by_key(|&i| pool[i].capacity());
            best.map(|i| pool.swap_remove(i))
        });
        match pooled {
            Some(mut v) => {
                v.resize(len, 0);
                Scratch(v)
            }
            None => Scratch(zeros(len)),
        }
    }
}

impl From<Scratch> for Buffer {
    /// Scratch values as a host buffer, given back to a scratch pool when it drops.
    fn from(mut scratch: Scratch) -> Buffer {
        Buffer(Held::Host(HostVec { values: std::mem::take(&mut scratch.0), scratch: true }))
    }
}

impl Clone for Scratch {
    fn clone(&self) -> Scratch {
        let mut copy = Scratch::take(self.0.len());
        copy.copy_from_slice(&self.0);
        copy
    }
}

impl std::ops::Deref for Scratch {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [u64] {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() == 0 {
            return;
        }
        // try_with: a thread being torn down has no pool left
        let _ = SCRATCH.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            pool.push(v);
            // keep the largest buffers within the bounds
            pool.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
            let mut bytes = 0;
            pool.retain(|b| {
                bytes += b.capacity() * std::mem::size_of::<u64>();
                bytes <= SCRATCH_BYTES
            });
            pool.truncate(SCRATCH_BUFFERS);
        });
    }
}

/// The Shoup constants of one operand of [`Backend::mul_acc`], as long as that operand.
#[derive(Debug, Clone, Copy)]
pub enum Prepared<'a> {
    /// Constants of `w` (L·J·I·n values).
    W(&'a [u64]),
    /// Constants of `x` (batch·L·I·n values).
    X(&'a [u64]),
    /// None: only where [`Backend::exact_products`] holds (else the call is an error).
    Neither,
}

/// The Shoup constants of a batch of inputs, as [`Prepared::X`] takes them: `x` holds entries of
/// L = `moduli.len()` limbs × `inputs` polynomials of `n` values each (limb-major), and each
/// value's constant is for its limb's prime (none without moduli).
pub fn input_constants(moduli: &[Modulus], n: usize, inputs: usize, x: &[u64]) -> Vec<u64> {
    if moduli.is_empty() {
        return Vec::new();
    }
    let per_limb = inputs.max(1);
    x.chunks(n.max(1))
        .enumerate()
        .flat_map(|(r, run)| {
            let m = moduli[(r / per_limb) % moduli.len()];
            run.iter().map(move |&v| m.shoup(v))
        })
        .collect()
}

impl<'a> Prepared<'a> {
    /// The constants, and the length of the operand (of `x` or `w`) they belong to.
    pub(crate) fn constants(self, x: &[u64], w: &[u64]) -> (&'a [u64], usize) {
        match self {
            Prepared::W(c) => (c, w.len()),
            Prepared::X(c) => (c, x.len()),
            Prepared::Neither => (&[], 0),
        }
    }
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

    fn primes(bits: &[u32], n: usize) -> Vec<Modulus> {
        bits.iter()
            .map(|&b| Modulus::new(ntt_primes(b, n, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    #[test]
    fn mul_acc_matches_the_plain_sum_of_products_on_every_limb() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let moduli = primes(&[55, 40], 64);
        let mut rng = StdRng::seed_from_u64(8);
        let (n, i_count, j_count, limbs) = (64, 300, 5, moduli.len());
        let draw = |len: usize, rng: &mut StdRng| -> Vec<u64> {
            (0..limbs)
                .flat_map(|l| (0..len).map(|_| rng.random_range(0..moduli[l].value())).collect::<Vec<_>>())
                .collect()
        };
        let (x, w) = (draw(i_count * n, &mut rng), draw(j_count * i_count * n, &mut rng));
        let shoup = |v: &[u64]| -> Vec<u64> {
            v.chunks_exact(v.len() / limbs).zip(&moduli).flat_map(|(b, m)| b.iter().map(|&v| m.shoup(v))).collect()
        };
        let (ws, xs) = (shoup(&w), shoup(&x));
        for prepared in [Prepared::W(&ws), Prepared::X(&xs)] {
            let mut out = vec![0u64; limbs * j_count * n];
            be.mul_acc(&moduli, n, 1, &x, &w, prepared, &mut out).unwrap_or_else(|e| panic!("{e}"));
            for (l, m) in moduli.iter().enumerate() {
                let (x, w) = (&x[l * i_count * n..], &w[l * j_count * i_count * n..]);
                for j in 0..j_count {
                    for k in 0..n {
                        let expect = (0..i_count)
                            .fold(0, |acc, i| m.add(acc, m.mul(x[i * n + k], w[(j * i_count + i) * n + k])));
                        assert_eq!(
                            out[(l * j_count + j) * n + k],
                            expect,
                            "{prepared:?}: limb {l}, output {j}, slot {k}"
                        );
                    }
                }
            }
        }
        // a batch of three inputs, with the constants on either side: each as if alone
        let xs3: Vec<u64> = [x.clone(), draw(i_count * n, &mut rng), draw(i_count * n, &mut rng)].concat();
        let xs3_shoup: Vec<u64> = xs3.chunks_exact(x.len()).flat_map(shoup).collect();
        let per_out = limbs * j_count * n;
        let alone: Vec<u64> = xs3
            .chunks_exact(x.len())
            .flat_map(|xb| {
                let mut out = vec![0u64; per_out];
                be.mul_acc(&moduli, n, 1, xb, &w, Prepared::W(&ws), &mut out).unwrap_or_else(|e| panic!("{e}"));
                out
            })
            .collect();
        for prepared in [Prepared::W(&ws), Prepared::X(&xs3_shoup)] {
            let mut batched = vec![1u64; alone.len()];
            be.mul_acc(&moduli, n, 3, &xs3, &w, prepared, &mut batched).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(batched, alone, "{prepared:?}");
        }
        // without constants: the same sums where the backend sums exactly, else an error
        let mut neither = vec![0u64; alone.len()];
        let result = be.mul_acc(&moduli, n, 3, &xs3, &w, Prepared::Neither, &mut neither);
        if be.exact_products(&moduli, n) {
            result.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(neither, alone);
        } else {
            assert!(matches!(result, Err(BackendError::Shape { op: "mul_acc", .. })), "{result:?}");
        }
        let wide = primes(&[61], 64);
        assert!(!be.exact_products(&wide, n), "61-bit primes take Shoup products");
        let err = be.mul_acc(
            &wide,
            n,
            1,
            &x[..i_count * n],
            &w[..j_count * i_count * n],
            Prepared::Neither,
            &mut vec![0; j_count * n],
        );
        assert!(matches!(err, Err(BackendError::Shape { op: "mul_acc", .. })), "{err:?}");
        // the same with every operand held by the backend, added to what the held sums hold:
        // twice over gives twice the sums
        let hold = |v: Vec<u64>| be.hold(v).unwrap_or_else(|e| panic!("{e}"));
        let (held, held_shoup, held_x) = (hold(w.clone()), hold(ws.clone()), hold(xs3.clone()));
        let runs = HeldRuns { values: &held_x, stride: i_count, first: 0, count: i_count };
        let sums_of = |runs: HeldRuns<'_>, times: usize| {
            let mut sums = hold(vec![0u64; alone.len()]);
            for _ in 0..times {
                be.mul_acc_held(&moduli, n, 3, runs, &held, &held_shoup, &mut sums).unwrap_or_else(|e| panic!("{e}"));
            }
            be.fetch(sums).unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(sums_of(runs, 1), alone);
        let twice = sums_of(runs, 2);
        for (run, (twice, once)) in twice.chunks_exact(n).zip(alone.chunks_exact(n)).enumerate() {
            let m = &moduli[(run / j_count) % limbs];
            assert!(twice.iter().zip(once).all(|(&t, &o)| t == m.add(o, o)), "run {run}");
        }
        // a range of longer runs (100 other inputs before each run's own): the same sums
        let pad = 100;
        let padded: Vec<u64> = xs3
            .chunks_exact(i_count * n)
            .enumerate()
            .flat_map(|(r, run)| [draw(pad * n, &mut rng)[(r % limbs) * pad * n..][..pad * n].to_vec(), run.to_vec()])
            .flatten()
            .collect();
        let held_padded = hold(padded);
        let runs = HeldRuns { values: &held_padded, stride: pad + i_count, first: pad, count: i_count };
        assert_eq!(sums_of(runs, 1), alone);
        // a range beyond the runs is an error naming the operation
        let beyond = HeldRuns { first: pad + 1, ..runs };
        let err = be.mul_acc_held(&moduli, n, 3, beyond, &held, &held_shoup, &mut hold(vec![0u64; alone.len()]));
        assert!(matches!(err, Err(BackendError::Shape { op: "mul_acc_held", .. })), "{err:?}");
        // shapes that do not fit are errors naming the operation, not panics
        let err = be.mul_acc(&moduli, n, 1, &x[1..], &w, Prepared::W(&ws), &mut vec![0; per_out]);
        assert!(matches!(err, Err(BackendError::Shape { op: "mul_acc", .. })), "{err:?}");
        let err = be.mul_acc(&moduli, n, 3, &xs3, &w, Prepared::X(&xs), &mut vec![0; 3 * per_out]);
        assert!(matches!(err, Err(BackendError::Shape { op: "mul_acc", .. })), "{err:?}");
    }

    /// Products with weights given by their low coefficients equal those with the weights
    /// transformed whole, for any support (windows of one block of slots or of several), with
    /// the inputs' constants or, where the sums are exact, none.
    #[test]
    fn mul_acc_sparse_multiplies_by_the_transforms_of_the_heads() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let n = 1024;
        let mut rng = StdRng::seed_from_u64(21);
        for bits in [[55, 40], [61, 50]] {
            let moduli = primes(&bits, n);
            let tables: Vec<NttTable> =
                moduli.iter().map(|&m| NttTable::new(n, m).unwrap_or_else(|e| panic!("{e}"))).collect();
            let limbs = tables.len();
            for (support, batch, inputs, outputs) in
                [(1, 1, 2, 1), (7, 2, 3, 3), (64, 3, 40, 2), (300, 2, 3, 2), (n, 1, 2, 2)]
            {
                let draw = |per_limb: usize, rng: &mut StdRng| -> Vec<u64> {
                    (0..limbs)
                        .flat_map(|l| (0..per_limb).map(|_| rng.random_range(0..moduli[l].value())).collect::<Vec<_>>())
                        .collect()
                };
                let x: Vec<u64> = (0..batch).flat_map(|_| draw(inputs * n, &mut rng)).collect();
                let heads = draw(outputs * inputs * support, &mut rng);
                let xs = input_constants(&moduli, n, inputs, &x);
                // the reference: dense transforms of the zero-padded weights, then mul_acc
                let mut w = vec![0u64; heads.len() / support * n];
                for (run, head) in w.chunks_exact_mut(n).zip(heads.chunks_exact(support)) {
                    run[..support].copy_from_slice(head);
                }
                be.ntt_forward(&tables, &mut w).unwrap_or_else(|e| panic!("{e}"));
                let mut want = vec![0u64; batch * limbs * outputs * n];
                be.mul_acc(&moduli, n, batch, &x, &w, Prepared::X(&xs), &mut want).unwrap_or_else(|e| panic!("{e}"));
                let mut whole = vec![2u64; want.len()];
                mul_acc_sparse_whole(&be, &tables, batch, &x, &heads, support, Prepared::X(&xs), &mut whole)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(whole, want, "{bits:?}-bit primes, support {support}, whole transforms");
                let mut got = vec![1u64; want.len()];
                be.mul_acc_sparse(&tables, batch, &x, &heads, support, Prepared::X(&xs), &mut got)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(got, want, "{bits:?}-bit primes, support {support}");
                let neither = be.mul_acc_sparse(&tables, batch, &x, &heads, support, Prepared::Neither, &mut got);
                if be.exact_products(&moduli, n) {
                    neither.unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(got, want, "{bits:?}-bit primes, support {support}, no constants");
                } else {
                    assert!(matches!(neither, Err(BackendError::Shape { op: "mul_acc_sparse", .. })), "{neither:?}");
                }
                // constants for transformed-on-the-fly weights, or heads of another support: errors
                let err = be.mul_acc_sparse(&tables, batch, &x, &heads, support, Prepared::W(&xs), &mut got);
                assert!(matches!(err, Err(BackendError::Shape { op: "mul_acc_sparse", .. })), "{err:?}");
                let err = be.mul_acc_sparse(&tables, batch, &x, &heads[1..], support, Prepared::X(&xs), &mut got);
                assert!(matches!(err, Err(BackendError::Shape { .. })), "{err:?}");
            }
        }
    }

    #[test]
    fn one_ntt_call_covers_every_limb_and_polynomial() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let n = 256;
        let tables: Vec<NttTable> = primes(&[50, 45, 36], n)
            .into_iter()
            .map(|m| NttTable::new(n, m).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let mut rng = StdRng::seed_from_u64(11);
        let per_limb = 4;
        let data: Vec<u64> = tables
            .iter()
            .flat_map(|t| (0..per_limb * n).map(|_| rng.random_range(0..t.modulus().value())).collect::<Vec<_>>())
            .collect();
        let mut batched = data.clone();
        be.ntt_forward(&tables, &mut batched).unwrap_or_else(|e| panic!("{e}"));
        for (r, (poly, want)) in data.chunks_exact(n).zip(batched.chunks_exact(n)).enumerate() {
            let mut one = poly.to_vec();
            tables[r / per_limb].forward(&mut one);
            assert_eq!(one, want, "polynomial {r}");
        }
        be.ntt_inverse(&tables, &mut batched).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batched, data);
        let err = be.ntt_forward(&tables, &mut batched[n..]);
        assert!(matches!(err, Err(BackendError::Shape { op: "ntt_forward", .. })), "{err:?}");
    }

    #[test]
    fn automorphisms_map_x_to_x_to_the_g() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let n = 64;
        let moduli = primes(&[50, 40], n);
        let mut rng = StdRng::seed_from_u64(12);
        let input: Vec<u64> = moduli
            .iter()
            .flat_map(|m| (0..2 * n).map(|_| rng.random_range(0..m.value())).collect::<Vec<_>>())
            .collect();
        for g in [3, 2 * n - 1, n + 1] {
            let mut out = vec![0u64; input.len()];
            be.automorphism(&moduli, n, g, &input, &mut out).unwrap_or_else(|e| panic!("{e}"));
            for (r, (src, dst)) in input.chunks_exact(n).zip(out.chunks_exact(n)).enumerate() {
                let m = &moduli[r / 2];
                for (i, &v) in src.iter().enumerate() {
                    // X^i ↦ X^(i·g) = ±X^(i·g mod n), negated for each wrap past X^n = −1
                    let e = i * g % (2 * n);
                    let want = if e < n { v } else { m.neg(v) };
                    assert_eq!(dst[e % n], want, "g = {g}, run {r}, coefficient {i}");
                }
            }
        }
        let err = be.automorphism(&moduli, n, 4, &input, &mut vec![0u64; input.len()]);
        assert!(matches!(err, Err(BackendError::Shape { op: "automorphism", .. })), "{err:?}");
    }

    #[test]
    fn dividing_by_a_prime_rounds_the_crt_value() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let n = 64;
        let ms = primes(&[50, 45, 40], n);
        let (low, top) = (&ms[..2], &ms[2]);
        let mut rng = StdRng::seed_from_u64(13);
        // X in [0, p_l·p_top) for each low prime, given by its residues; two polynomials
        let polys = 2;
        let xs: Vec<Vec<u128>> = low
            .iter()
            .map(|m| (0..polys * n).map(|_| rng.random_range(0..m.value() as u128 * top.value() as u128)).collect())
            .collect();
        // one top residue per coefficient: both limbs' X must agree mod p_top
        let top_res: Vec<u64> = (0..polys * n).map(|c| (xs[0][c] % top.value() as u128) as u64).collect();
        let mut x_low: Vec<u64> = Vec::new();
        for (l, m) in low.iter().enumerate() {
            for (c, &x) in xs[l].iter().enumerate() {
                // shift limb l's X to share the top residue of limb 0's
                let v = x - (x % top.value() as u128) + top_res[c] as u128;
                x_low.push((v % m.value() as u128) as u64);
            }
        }
        let mut got = x_low.clone();
        be.divide_by_prime(low, n, &mut got, &top_res, top).unwrap_or_else(|e| panic!("{e}"));
        for (l, m) in low.iter().enumerate() {
            for c in 0..polys * n {
                let v = xs[l][c] - (xs[l][c] % top.value() as u128) + top_res[c] as u128;
                // round(v / p_top), ties impossible for an odd prime
                let want = ((v + top.value() as u128 / 2) / top.value() as u128 % m.value() as u128) as u64;
                assert_eq!(got[l * polys * n + c], want, "limb {l}, coefficient {c}");
            }
        }
    }

    /// A random key of `digits` digits for rows over `moduli` (the last the special prime's when
    /// there is one), NTT form, with its Shoup constants.
    pub(super) fn random_key(moduli: &[Modulus], digits: usize, n: usize, rng: &mut StdRng) -> (Vec<u64>, Vec<u64>) {
        let (mut rows, mut shoup) = (Vec::new(), Vec::new());
        for m in moduli {
            for _ in 0..2 * digits * n {
                let v = rng.random_range(0..m.value());
                rows.push(v);
                shoup.push(m.shoup(v));
            }
        }
        (rows, shoup)
    }

    /// Key switching is the digit-wise inner product with the key in Z_p[X]/(X^N + 1) at every
    /// limb — the digits \[c\]_(q_i) lifted, the key's rows in coefficient form, negacyclic
    /// schoolbook products — divided by the special prime with rounding where there is one; at
    /// a lower level, the key's first rows and digits; its shape errors name the operation.
    #[test]
    fn key_switching_is_the_inner_product_of_the_digits_with_the_key() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let n = 16;
        let all = primes(&[50, 45, 40, 55], n);
        let (full, special) = (&all[..3], &all[3]);
        let table = |m: &Modulus| NttTable::new(n, *m).unwrap_or_else(|e| panic!("{e}"));
        let tables: Vec<NttTable> = full.iter().map(table).collect();
        let special_table = table(special);
        let mut rng = StdRng::seed_from_u64(17);
        let negacyclic = |m: &Modulus, a: &[u64], b: &[u64]| {
            let mut out = vec![0u64; n];
            for (i, &x) in a.iter().enumerate() {
                for (j, &y) in b.iter().enumerate() {
                    let (at, v) = ((i + j) % n, m.mul(x, y));
                    out[at] = if i + j < n { m.add(out[at], v) } else { m.sub(out[at], v) };
                }
            }
            out
        };
        for with_special in [false, true] {
            let rows_moduli: Vec<Modulus> = full.iter().chain(with_special.then_some(special)).copied().collect();
            let (rows, shoup) = random_key(&rows_moduli, 3, n, &mut rng);
            let (rows_b, shoup_b) = (Buffer::host(rows.clone()), Buffer::host(shoup));
            let key = SwitchKeyRows { rows: &rows_b, shoup: &shoup_b, digits: 3 };
            for k in [3, 2] {
                let c: Vec<u64> = full[..k]
                    .iter()
                    .flat_map(|m| (0..n).map(|_| rng.random_range(0..m.value())).collect::<Vec<_>>())
                    .collect();
                let mut out = vec![0u64; 2 * k * n];
                let p = with_special.then_some(&special_table);
                let bad = be.key_switch(&tables[..k], p, SwitchKeyRows { digits: 4, ..key }, &c, true, &mut out);
                assert!(matches!(bad, Err(BackendError::Shape { op: "key_switch", .. })), "{bad:?}");
                be.key_switch(&tables[..k], p, key, &c, true, &mut out).unwrap_or_else(|e| panic!("{e}"));
                // Σ_i [c]_(q_i)·key[row][h][i] at a limb of q' (row l) or at P (the last row)
                let sum = |m: &Modulus, row: usize, h: usize| {
                    let mut acc = vec![0u64; n];
                    for (i, digit) in c.chunks_exact(n).enumerate() {
                        let mut w = rows[((row * 2 + h) * 3 + i) * n..][..n].to_vec();
                        be.ntt_inverse(std::slice::from_ref(&table(m)), &mut w).unwrap_or_else(|e| panic!("{e}"));
                        let lifted: Vec<u64> = digit.iter().map(|&v| m.reduce(v)).collect();
                        let prod = negacyclic(m, &lifted, &w);
                        acc.iter_mut().zip(prod).for_each(|(a, v)| *a = m.add(*a, v));
                    }
                    acc
                };
                for (l, m) in full[..k].iter().enumerate() {
                    for h in 0..2 {
                        let mut want = sum(m, l, h);
                        if with_special {
                            // (S_l − [S_P] centred)·P^-1 mod q_l
                            let p_inv = m.inv(m.reduce(special.value())).unwrap_or_else(|| panic!("coprime"));
                            for (w, t) in want.iter_mut().zip(sum(special, 3, h)) {
                                let t = if t > special.value() / 2 {
                                    m.neg(m.reduce(special.value() - t))
                                } else {
                                    m.reduce(t)
                                };
                                *w = m.mul(m.sub(*w, t), p_inv);
                            }
                        }
                        assert_eq!(
                            &out[(2 * l + h) * n..][..n],
                            &want[..],
                            "P {with_special}, level {k}, limb {l}, half {h}"
                        );
                    }
                }
            }
        }
    }

    /// A held buffer of the pool's sizes, let go, serves the next request of its size zeroed.
    #[test]
    fn a_large_buffer_let_go_comes_back_zeroed_as_the_next_of_its_size() {
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let len = POOLED_BYTES / size_of::<u64>() + 3;
        let mut held = zeros(len);
        held.fill(7);
        // the same size, and a little less, come back zeroed (the pool is shared with the
        // tests running beside this one, so where they come from is not asserted)
        for len in [len, len - 5] {
            drop(be.hold(held).unwrap_or_else(|e| panic!("{e}")));
            held = zeros(len);
            assert_eq!(held.len(), len);
            assert!(held.iter().all(|&x| x == 0));
            held.fill(7);
        }
        // a buffer fetched back leaves the pool alone
        let fetched = be.fetch(be.hold(vec![1; 4]).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(fetched.ok(), Some(vec![1; 4]));
    }

    /// Buffers of any size come back zeroed and writable, whether or not the kernel takes the
    /// huge-page advice (sizes below, at and across 2 MiB boundaries).
    #[test]
    fn zeros_are_zeros_at_every_size() {
        for len in [0, 1, 1 << 18, (1 << 19) + 3, 3 << 20] {
            let mut v = zeros(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0), "{len}");
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as u64);
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
        }
    }

    #[test]
    fn fan_out_runs_on_the_callers_workers_and_never_on_the_global_pool() {
        let workers = Workers::new(2, "test-fan-out").unwrap_or_else(|e| panic!("{e}"));
        let name = || std::thread::current().name().map(String::from).unwrap_or_default();
        let inside = workers.compute(|| par_map(16, |_| name()));
        assert!(inside.iter().all(|n| n.starts_with("test-fan-out")), "{inside:?}");
        // a backend call from a worker runs there too (its own pool stays idle)
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let table = [NttTable::new(64, primes(&[40], 64)[0]).unwrap_or_else(|e| panic!("{e}"))];
        let mut polys = vec![1u64; 64 * 8];
        workers.compute(|| be.ntt_forward(&table, &mut polys)).unwrap_or_else(|e| panic!("{e}"));
        // outside any workers: in order, on the calling thread
        let here = std::thread::current().id();
        assert!(par_map(8, |_| std::thread::current().id()).iter().all(|&id| id == here));
        assert_eq!(par_map(5, |i| i * i), vec![0, 1, 4, 9, 16]);
    }

    #[test]
    fn backend_choices_parse_and_cuda_is_a_clear_error_where_there_is_none() {
        assert_eq!("CPU".parse::<BackendChoice>().ok(), Some(BackendChoice::Cpu));
        assert_eq!("cuda".parse::<BackendChoice>().ok(), Some(BackendChoice::Cuda(Offload::Held)));
        assert_eq!("cuda:Pipelines".parse::<BackendChoice>().ok(), Some(BackendChoice::Cuda(Offload::Pipelines)));
        for bad in ["tpu", "cuda:all", "cpu:held", "cuda:"] {
            assert!(matches!(bad.parse::<BackendChoice>(), Err(BackendError::Unknown(n)) if n == bad), "{bad}");
        }
        let cpu = start(BackendChoice::Cpu, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cpu.name(), "cpu");
        let auto = start(BackendChoice::Auto, 1).unwrap_or_else(|e| panic!("{e}"));
        let cuda = start(BackendChoice::Cuda(Offload::Pipelines), 1).map(|b| b.name());
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
        // a ragged row (the portable loops) and windows of whole vectors (AVX-512's lazy sums)
        for (n, rows) in [(1003, 7), (2056, 13)] {
            convert_and_check(&be, &moduli, n, rows, &mut rng);
        }
    }

    fn convert_and_check(be: &CpuBackend, moduli: &[Modulus], n: usize, rows: usize, rng: &mut StdRng) {
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
        be.base_convert(moduli, n, &x, &consts, &mut out).unwrap_or_else(|e| panic!("{e}"));
        for (j, m) in moduli.iter().enumerate() {
            for c in 0..n {
                let want = (0..rows).fold(0, |acc, i| m.add(acc, m.mul(x[i * n + c], consts[i * moduli.len() + j].0)));
                assert_eq!(out[j * n + c], want, "modulus {j}, value {c}");
            }
        }
    }

    #[test]
    fn tensor_sums_match_the_plain_sums_of_products() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(10);
        // 40 pairs: several passes of exact sums
        for bits in [58, 61] {
            let n = 512;
            let moduli: Vec<Modulus> = ntt_primes(bits, n, 2)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|p| Modulus::new(p).unwrap_or_else(|e| panic!("{e}")))
                .collect();
            let limbs = moduli.len();
            for terms in [1, 5, 40] {
                let draw = |rng: &mut StdRng, operands: usize| -> Vec<u64> {
                    (0..operands * 2 * limbs * n)
                        .map(|i| rng.random_range(0..moduli[(i / n) % limbs].value()))
                        .collect()
                };
                // b's operands read from its second on
                let (a, b) = (draw(&mut rng, terms), draw(&mut rng, terms + 1));
                let (ha, hb) = (Buffer::host(a.clone()), Buffer::host(b.clone()));
                let start: Vec<u64> =
                    (0..3 * limbs * n).map(|i| rng.random_range(0..moduli[(i / n) % limbs].value())).collect();
                for add in [false, true] {
                    let mut sums = Buffer::host(start.clone());
                    be.tensor_sum(&moduli, n, terms, (&ha, 0), (&hb, 1), add, &mut sums)
                        .unwrap_or_else(|e| panic!("{e}"));
                    let got = sums.host_values().unwrap_or_default();
                    for (l, m) in moduli.iter().enumerate() {
                        for c in 0..n {
                            let at = |v: &[u64], t: usize, half: usize| v[((2 * t + half) * limbs + l) * n + c];
                            let mut want = [0u64; 3];
                            for t in 0..terms {
                                let (x0, x1) = (at(&a, t, 0), at(&a, t, 1));
                                let (y0, y1) = (at(&b, t + 1, 0), at(&b, t + 1, 1));
                                want[0] = m.add(want[0], m.mul(x0, y0));
                                want[1] = m.add(want[1], m.add(m.mul(x0, y1), m.mul(x1, y0)));
                                want[2] = m.add(want[2], m.mul(x1, y1));
                            }
                            for (part, w) in want.into_iter().enumerate() {
                                let at = (part * limbs + l) * n + c;
                                let w = if add { m.add(w, start[at]) } else { w };
                                assert_eq!(got[at], w, "{bits}-bit primes, {terms} pairs, add {add}, part {part}");
                            }
                        }
                    }
                }
            }
        }
        // two pairs of one limb from a run of one operand, or from past a run's end
        let one = [Modulus::new(ntt_primes(58, 512, 1).unwrap_or_default()[0]).unwrap_or_else(|e| panic!("{e}"))];
        let (short, whole) = (Buffer::host(vec![0; 1024]), Buffer::host(vec![0; 2048]));
        let mut out = Buffer::host(vec![0u64; 3 * 512]);
        for (a, b) in [((&short, 0), (&whole, 0)), ((&whole, 1), (&whole, 0))] {
            let refused = be.tensor_sum(&one, 512, 2, a, b, false, &mut out);
            assert!(matches!(refused, Err(BackendError::Shape { .. })), "{refused:?}");
        }
    }

    #[test]
    fn scratch_buffers_return_to_their_threads_pool_within_its_bounds() {
        std::thread::spawn(|| {
            let first = Scratch::take(1000);
            let at = first.as_ptr();
            drop(first);
            // the same memory again, for as many values or fewer
            let again = Scratch::take(600);
            assert_eq!((again.as_ptr(), again.len()), (at, 600));
            let other = Scratch::take(600);
            assert_ne!(other.as_ptr(), at, "a buffer in use is not handed out twice");
            let copy = again.clone();
            assert_eq!(&copy[..], &again[..]);
            drop((again, other, copy));
            // a pool keeps at most SCRATCH_BUFFERS buffers
            let many: Vec<Scratch> = (0..SCRATCH_BUFFERS + 3).map(|_| Scratch::take(64)).collect();
            drop(many);
            SCRATCH.with(|pool| assert!(pool.borrow().len() <= SCRATCH_BUFFERS));
        })
        .join()
        .unwrap_or_else(|_| panic!("the scratch test's thread panicked"));
    }

    #[test]
    fn hashing_is_deterministic_and_separates_inputs_and_tweaks() {
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        // Pairs of equal inputs: 0,0,1,1,2,2,...
        let input: Vec<Block> = (0..10_000usize).map(|i| Block::from(i / 2)).collect();
        let mut a = vec![Block::ZERO; input.len()];
        let mut b = vec![Block::ZERO; input.len()];
        be.hash_blocks(&input, Tweaks::Sequential(0), &mut a).unwrap_or_else(|e| panic!("{e}"));
        be.hash_blocks(&input, Tweaks::Sequential(0), &mut b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
        // Equal inputs at different tweaks hash differently.
        assert!(a.chunks(2).all(|p| p[0] != p[1]));
        // The tweak of element i is tweak_base + i, whatever the batch split.
        be.hash_blocks(&input[1..], Tweaks::Sequential(1), &mut b[..input.len() - 1]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a[1..], b[..input.len() - 1]);
        let listed: Vec<u64> = (0..input.len() as u64).collect();
        be.hash_blocks(&input, Tweaks::Listed(&listed), &mut b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
    }
}
