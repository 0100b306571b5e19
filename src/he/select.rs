//! Selection sums: out_j = Σ_i W_{j,i}·[\[t_i\]] over encrypted selectors t_i that the server keeps
//! across calls (an encrypted one-hot stays alive for every matrix of an expert) and plaintext
//! operands W_{j,i} prepared once (the experts' weights).
//!
//! With t a one-hot vector, out_j encrypts W_{j,e} for the chosen e: the server computes on the
//! chosen parameters without learning which they are (it only adds products of ciphertexts it
//! cannot read). The work is E·J ciphertext×plaintext products, run as one backend
//! multiply-accumulate per RNS limb for every row and ciphertext half; every operand is held by
//! the backend ([`Backend::hold`]) — the experts' weights, the encrypted selectors and the
//! running sums — so a GPU keeps them in device memory: weights across calls, selectors and
//! sums while banks of experts stream past, the sums fetched once at the end. A range of
//! selectors can be combined with a bank covering only those experts: banks are streamed and
//! partial sums added.

use std::borrow::Borrow;

use super::bfv::Ciphertext;
use super::poly::{Form, RnsPoly};
use super::{HeError, HeParams, HeResult};
use crate::backend::{Backend, Buffer, HeldRuns, each_mut, each_run, par_map, zeros};

/// The encrypted selectors of R rows (E each, all at one level), kept by the server in NTT form
/// and held by the backend that made them, per limb `[row][half][i][N]`: each (row, half) is one
/// batch entry of the backend's multiply-accumulate on a limb, so a selection sum reads the
/// experts' weights once for all rows.
#[derive(Debug)]
pub struct Selectors {
    rows: usize,
    count: usize,
    limbs: usize,
    /// Per limb: row, then c0/c1, each run `count · N` values.
    values: Vec<Buffer>,
}

impl Selectors {
    /// Copies `rows` (E ciphertexts per row, all at one level) into the selection layout,
    /// transforming a copy of any polynomial that is not in NTT form yet; the server keeps
    /// expanded selectors shared (`Arc`) between the matrices of one choice, so they are
    /// borrowed here, not moved.
    pub fn new<C: Borrow<Ciphertext> + Sync>(
        params: &HeParams,
        rows: &[Vec<C>],
        backend: &dyn Backend,
    ) -> HeResult<Selectors> {
        let limbs = rows.iter().flatten().next().map_or(params.moduli().len(), |c| c.borrow().limbs(params));
        let shape = (rows.len(), rows.first().map_or(0, Vec::len), limbs);
        Selectors::laid_out(params, shape, backend, |r| Ok(rows[r].as_slice()))
    }

    /// Selectors of `rows` rows of `count` ciphertexts each at `limbs` limbs, row r made by
    /// `make(r)` and copied into the layout by the task that made it, rows in parallel: a
    /// batch's ciphertexts are never all in memory twice, as they would be if made all first.
    pub fn from_rows(
        params: &HeParams,
        shape: (usize, usize, usize),
        backend: &dyn Backend,
        make: impl Fn(usize) -> HeResult<Vec<Ciphertext>> + Sync + Send,
    ) -> HeResult<Selectors> {
        Selectors::laid_out(params, shape, backend, make)
    }

    /// The layout of `rows` × `count` selectors at `limbs` limbs, per limb
    /// `[row][half][i][N]`, row r copied in from `row(r)` by one task per row (the layout's
    /// fresh pages are faulted in by every worker, not one).
    fn laid_out<C: Borrow<Ciphertext>, R: AsRef<[C]>>(
        params: &HeParams,
        (rows, count, limbs): (usize, usize, usize),
        backend: &dyn Backend,
        row: impl Fn(usize) -> HeResult<R> + Sync + Send,
    ) -> HeResult<Selectors> {
        let n = params.degree();
        let run = count * n;
        // one zeroed allocation per limb (`vec![vec![0; n]; limbs]` would clone the zeros)
        let mut values: Vec<Vec<u64>> = (0..limbs).map(|_| zeros(rows * 2 * run)).collect();
        // per row, its two halves' runs in every limb, and what placing it gave
        let mut regions: Vec<(Vec<&mut [u64]>, HeResult<()>)> = (0..rows).map(|_| (Vec::new(), Ok(()))).collect();
        for limb in &mut values {
            for (r, region) in limb.chunks_mut((2 * run).max(1)).enumerate() {
                regions[r].0.push(region);
            }
        }
        each_mut(&mut regions, |r, (region, result)| {
            *result = row(r).and_then(|cts| place(params, r, cts.as_ref(), (count, limbs), region, backend));
        });
        regions.into_iter().try_for_each(|(_, result)| result)?;
        let values = values.into_iter().map(|limb| backend.hold(limb)).collect::<Result<_, _>>()?;
        Ok(Selectors { rows, count, limbs, values })
    }

    /// Number of selectors E per row.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of rows R.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Selectors `first..first + e` of every row and half on limb `l`, as the backend's batch.
    fn runs(&self, l: usize, first: usize, e: usize) -> HeldRuns<'_> {
        HeldRuns { values: &self.values[l], stride: self.count, first, count: e }
    }
}

/// Copies row `row`'s selectors `cts` (`count` of them at `limbs` limbs) into its region of
/// every limb (its two halves' runs), transforming a copy of any polynomial not in NTT form.
fn place<C: Borrow<Ciphertext>>(
    params: &HeParams,
    row: usize,
    cts: &[C],
    (count, limbs): (usize, usize),
    region: &mut [&mut [u64]],
    backend: &dyn Backend,
) -> HeResult<()> {
    let n = params.degree();
    if cts.len() != count {
        return Err(HeError::Shape(format!("row {row} has {} selectors, row 0 has {count}", cts.len())));
    }
    if let Some(bad) = cts.iter().position(|c| c.borrow().limbs(params) != limbs) {
        return Err(HeError::Shape(format!(
            "selector {bad} of row {row} is at {} limbs, the selectors at {limbs}",
            cts[bad].borrow().limbs(params)
        )));
    }
    for (i, ct) in cts.iter().enumerate() {
        let ct = ct.borrow();
        for (h, poly) in [&ct.c0, &ct.c1].into_iter().enumerate() {
            let transformed;
            let poly = match poly.form() {
                Form::Ntt => poly,
                Form::Coeff => {
                    let mut copy = poly.clone();
                    copy.to_ntt(params, backend)?;
                    transformed = copy;
                    &transformed
                }
            };
            for (l, limb) in region.iter_mut().enumerate() {
                let at = (h * count + i) * n;
                limb[at..at + n].copy_from_slice(poly.limb(params, l));
            }
        }
    }
    Ok(())
}

/// Plaintext operands W_{j,i} for J outputs and a run of E' selectors, in NTT form with Shoup
/// constants, per limb `[j][i][N]`, held by the backend that prepared them ([`Backend::hold`]:
/// on a GPU they stay in device memory for every selection sum over them).
#[derive(Debug)]
pub struct OperandBank {
    outputs: usize,
    inputs: usize,
    /// Per limb: the operands and their Shoup constants.
    limbs: Vec<(Buffer, Buffer)>,
}

impl OperandBank {
    /// Prepares `rows[j][i]` (each up to N coefficients of Z_2^64, read as signed): J rows of E'
    /// operands each, held by `backend`.
    pub fn new(params: &HeParams, rows: &[Vec<&[u64]>], backend: &dyn Backend) -> HeResult<OperandBank> {
        OperandBank::at_level(params, params.moduli().len(), rows, backend)
    }

    /// [`OperandBank::new`] at the first `limbs` primes, for selectors at that level.
    pub fn at_level(
        params: &HeParams,
        limbs: usize,
        rows: &[Vec<&[u64]>],
        backend: &dyn Backend,
    ) -> HeResult<OperandBank> {
        OperandBank::prepare(params, limbs, rows, backend, Vec::new())
    }

    /// [`OperandBank::at_level`] in this bank's memory when it has the same shape (a stream of
    /// banks of one shape: fresh pages would cost a fault and a clearing each), else in new
    /// memory.
    pub fn refill(
        self,
        params: &HeParams,
        limbs: usize,
        rows: &[Vec<&[u64]>],
        backend: &dyn Backend,
    ) -> HeResult<OperandBank> {
        let same = (self.outputs, self.inputs) == (rows.len(), rows.first().map_or(0, Vec::len));
        let mut memory = Vec::new();
        if same {
            for (w, shoup) in self.limbs {
                memory.push((backend.fetch(w)?, backend.fetch(shoup)?));
            }
        }
        OperandBank::prepare(params, limbs, rows, backend, memory)
    }

    /// Prepares the operands at the first `k` primes in `memory` (per limb, the operands' and
    /// their constants' buffers), where it has them.
    fn prepare(
        params: &HeParams,
        k: usize,
        rows: &[Vec<&[u64]>],
        backend: &dyn Backend,
        mut memory: Vec<(Vec<u64>, Vec<u64>)>,
    ) -> HeResult<OperandBank> {
        let n = params.degree();
        if !(1..=params.moduli().len()).contains(&k) {
            return Err(HeError::Shape(format!("operands at {k} limbs (1..={})", params.moduli().len())));
        }
        let outputs = rows.len();
        let inputs = rows.first().map_or(0, Vec::len);
        if let Some(bad) = rows.iter().position(|r| r.len() != inputs) {
            return Err(HeError::Shape(format!(
                "operand row {bad} has {} entries, row 0 has {inputs}",
                rows[bad].len()
            )));
        }
        if let Some(long) = rows.iter().flatten().find(|c| c.len() > n) {
            return Err(HeError::Shape(format!("{} operand coefficients exceed N = {n}", long.len())));
        }
        let len = outputs * inputs * n;
        // a backend that sums the products exactly reads no Shoup constants: none are computed
        let constants = !backend.exact_held_products(&params.moduli()[..k], n);
        let shoup_len = if constants { len } else { 0 };
        memory.retain(|(w, shoup)| w.len() == len && shoup.len() == shoup_len);
        memory.truncate(k);
        memory.resize_with(k, || (zeros(len), zeros(shoup_len)));
        // every operand reduced into every limb in one pass over it (its coefficients beyond its
        // length zero): it is read from memory once, not once per limb
        let moduli = &params.moduli()[..k];
        let mut runs: Vec<Vec<&mut [u64]>> = (0..outputs * inputs).map(|_| Vec::with_capacity(k)).collect();
        for (w, _) in memory.iter_mut() {
            for (r, run) in w.chunks_mut(n).enumerate() {
                runs[r].push(run);
            }
        }
        each_mut(&mut runs, |r, limbs| {
            let operand = rows[r / inputs][r % inputs];
            for (run, m) in limbs.iter_mut().zip(moduli) {
                let (head, tail) = run.split_at_mut(operand.len());
                for (v, &c) in head.iter_mut().zip(operand) {
                    *v = m.reduce_signed(c as i64);
                }
                tail.fill(0);
            }
        });
        drop(runs);
        // per limb, the operands transformed and given their Shoup constants (where they are read)
        let mut limbs = Vec::with_capacity(k);
        for (m, (table, (mut w, mut shoup))) in params.moduli().iter().zip(params.tables().iter().zip(memory)) {
            backend.ntt_forward(std::slice::from_ref(table), &mut w)?;
            each_run(&mut shoup, n, |r, run| {
                for (s, &v) in run.iter_mut().zip(&w[r * n..]) {
                    *s = m.shoup(v);
                }
            });
            limbs.push((backend.hold(w)?, backend.hold(shoup)?));
        }
        Ok(OperandBank { outputs, inputs, limbs })
    }

    /// J, the number of outputs.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// E', the number of selectors each output sums over.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
}

/// out_(r,j) = Σ_i W_{j,i}·[\[t_(r,first+i)\]] for every row r of the selectors and the bank's
/// J outputs: per row, J ciphertexts at the selectors' level, NTT form. One backend call per
/// limb covers all rows, so the bank is read once however many rows select from it.
pub fn select(
    params: &HeParams,
    selectors: &Selectors,
    first: usize,
    bank: &OperandBank,
    backend: &dyn Backend,
) -> HeResult<Vec<Vec<Ciphertext>>> {
    let mut sums = SelectionSums::new(params, selectors.rows, bank.outputs, selectors.limbs, backend)?;
    sums.add(params, selectors, first, bank, backend)?;
    sums.into_ciphertexts(params, backend)
}

/// Running selection sums of R rows × J outputs, held by the backend in its layout (per limb
/// `[row][half][j][N]`, NTT form) while banks of experts stream past: each bank's products are
/// added where the sums are kept, and the ciphertexts are assembled once at the end.
#[derive(Debug)]
pub struct SelectionSums {
    rows: usize,
    outputs: usize,
    limbs: usize,
    /// Per limb.
    values: Vec<Buffer>,
}

impl SelectionSums {
    /// Zero sums for `rows` rows and `outputs` outputs at `limbs` RNS limbs, held by `backend`.
    pub fn new(
        params: &HeParams,
        rows: usize,
        outputs: usize,
        limbs: usize,
        backend: &dyn Backend,
    ) -> HeResult<SelectionSums> {
        let len = rows * 2 * outputs * params.degree();
        let values = (0..limbs).map(|_| backend.hold(zeros(len))).collect::<Result<_, _>>()?;
        Ok(SelectionSums { rows, outputs, limbs, values })
    }

    /// Adds Σ_i W_{j,i}·[\[t_(r,first+i)\]] over the bank's experts to every row's sums.
    pub fn add(
        &mut self,
        params: &HeParams,
        selectors: &Selectors,
        first: usize,
        bank: &OperandBank,
        backend: &dyn Backend,
    ) -> HeResult<()> {
        let n = params.degree();
        let (count, e, j, k) = (selectors.count, bank.inputs, bank.outputs, selectors.limbs);
        if first.checked_add(e).is_none_or(|end| end > count) {
            return Err(HeError::Shape(format!("selectors {first}..{} of {count}", first.saturating_add(e))));
        }
        if (selectors.rows, j, k, self.values.len()) != (self.rows, self.outputs, self.limbs, k) {
            return Err(HeError::Shape(format!(
                "sums of {} rows × {} outputs at {} limbs given {} rows of selectors at {k} limbs and a bank of {j} outputs",
                self.rows, self.outputs, self.limbs, selectors.rows
            )));
        }
        if bank.limbs.len() < k {
            return Err(HeError::Shape(format!("a bank of {} limbs for selectors of {k}", bank.limbs.len())));
        }
        // one call per limb, batched over every (row, half)
        let batch = self.rows * 2;
        for (l, (m, (w, w_shoup))) in params.moduli()[..k].iter().zip(&bank.limbs).enumerate() {
            let x = selectors.runs(l, first, e);
            backend.mul_acc_held(std::slice::from_ref(m), n, batch, x, w, w_shoup, &mut self.values[l])?;
        }
        Ok(())
    }

    /// J, the number of outputs per row.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The sums as ciphertexts (fetched from the backend that holds them): per row, J of them,
    /// NTT form.
    pub fn into_ciphertexts(mut self, params: &HeParams, backend: &dyn Backend) -> HeResult<Vec<Vec<Ciphertext>>> {
        let limbs = self.fetch(backend)?;
        Ok(self.ciphertexts(params, &limbs))
    }

    /// The sums as ciphertexts ([`SelectionSums::into_ciphertexts`]), leaving zero sums in the
    /// same memory for the next selection of this shape: fresh pages would cost a fault and a
    /// clearing each.
    pub fn take(&mut self, params: &HeParams, backend: &dyn Backend) -> HeResult<Vec<Vec<Ciphertext>>> {
        let mut limbs = self.fetch(backend)?;
        let cts = self.ciphertexts(params, &limbs);
        for limb in &mut limbs {
            each_run(limb, params.degree(), |_, run| run.fill(0));
        }
        self.values = limbs.into_iter().map(|limb| backend.hold(limb)).collect::<Result<_, _>>()?;
        Ok(cts)
    }

    /// The limbs, fetched from the backend (the sums are left empty).
    fn fetch(&mut self, backend: &dyn Backend) -> HeResult<Vec<Vec<u64>>> {
        let values = std::mem::take(&mut self.values);
        Ok(values.into_iter().map(|b| backend.fetch(b)).collect::<Result<_, _>>()?)
    }

    /// Per row, the J ciphertexts in fetched `limbs`.
    fn ciphertexts(&self, params: &HeParams, limbs: &[Vec<u64>]) -> Vec<Vec<Ciphertext>> {
        let (n, j) = (params.degree(), self.outputs);
        let poly = |b: usize, jj: usize| {
            let mut values = Vec::with_capacity(self.limbs * n);
            for limb in limbs {
                values.extend_from_slice(&limb[(b * j + jj) * n..][..n]);
            }
            RnsPoly { limbs: values, form: Form::Ntt }
        };
        let cts = par_map(self.rows * j, |i| {
            let (r, jj) = (i / j, i % j);
            Ciphertext { c0: poly(2 * r, jj), c1: poly(2 * r + 1, jj) }
        });
        let mut cts = cts.into_iter();
        (0..self.rows).map(|_| cts.by_ref().take(j).collect()).collect()
    }
}

/// One device's share of a selection sum: the selectors (held on this device), the index of the
/// first one its bank covers, the bank of the experts it holds, and its backend.
#[derive(Debug, Clone, Copy)]
pub struct SelectionPart<'a> {
    /// The rows' selectors, held by this part's backend.
    pub selectors: &'a Selectors,
    /// Index of the first selector the bank covers.
    pub first: usize,
    /// The experts' operands held on this device.
    pub bank: &'a OperandBank,
    /// The device's backend.
    pub backend: &'a dyn Backend,
}

/// A selection sum with the experts spread over several backends (devices, or hosts' worth of
/// memory): the sum is additive over experts, so every part computes Σ over its own experts on
/// its own backend, all at once, and the partial sums are added. Every bank must have the same
/// number of outputs.
pub fn select_spread(params: &HeParams, parts: &[SelectionPart<'_>]) -> HeResult<Vec<Vec<Ciphertext>>> {
    let shape = |p: &SelectionPart<'_>| (p.bank.outputs, p.selectors.rows, p.selectors.count);
    let first = parts.first().map(shape);
    if let Some(bad) = parts.iter().position(|p| Some(shape(p)) != first) {
        return Err(HeError::Shape(format!(
            "selection part {bad} has {:?} (outputs, rows, selectors), part 0 has {first:?}",
            shape(&parts[bad])
        )));
    }
    let partials: Vec<HeResult<Vec<Vec<Ciphertext>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| scope.spawn(move || select(params, part.selectors, part.first, part.bank, part.backend)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let mut partials = partials.into_iter();
    let mut total = partials.next().transpose()?.unwrap_or_default();
    for partial in partials {
        for (acc, ct) in total.iter_mut().flatten().zip(partial?.into_iter().flatten()) {
            acc.add_assign(params, &ct, parts[0].backend)?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::he::{Plaintext, SecretKey, negacyclic_mod_2_64};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    #[test]
    fn a_one_hot_selects_one_operand_per_output_and_any_selectors_give_the_weighted_sum() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(21);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let (e, j, support) = (6usize, 3usize, 40usize);
        let weights: Vec<Vec<Vec<u64>>> = (0..j)
            .map(|_| (0..e).map(|_| (0..support).map(|_| rng.random_range(-1000i64..1000) as u64).collect()).collect())
            .collect();
        let bank = OperandBank::new(
            &p,
            &weights.iter().map(|r| r.iter().map(Vec::as_slice).collect()).collect::<Vec<_>>(),
            &be,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let encrypt = |t: &[Vec<u64>], rng: &mut StdRng| {
            let cts = t
                .iter()
                .map(|ti| {
                    sk.encrypt(&Plaintext::new(&p, ti.clone()).unwrap_or_else(|e| panic!("{e}")), &be, rng)
                        .unwrap_or_else(|e| panic!("{e}"))
                })
                .collect();
            Selectors::new(&p, &[cts], &be).unwrap_or_else(|e| panic!("{e}"))
        };
        // one-hot at 4, padded with two selectors before the bank's run
        let one_hot: Vec<Vec<u64>> = (0..e + 2).map(|i| vec![u64::from(i == 2 + 4)]).collect();
        let sel = encrypt(&one_hot, &mut rng);
        let out = select(&p, &sel, 2, &bank, &be).unwrap_or_else(|e| panic!("{e}")).remove(0);
        for (jj, ct) in out.iter().enumerate() {
            let got = sk.decrypt(ct, &be).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&got.coeffs()[..support], &weights[jj][4][..], "output {jj}");
            assert!(got.coeffs()[support..].iter().all(|&c| c == 0));
        }
        // general selectors (small polynomials): the sum of negacyclic products
        let t: Vec<Vec<u64>> = (0..e).map(|_| (0..5).map(|_| rng.random_range(-3i64..4) as u64).collect()).collect();
        let sel = encrypt(&t, &mut rng);
        let out = select(&p, &sel, 0, &bank, &be).unwrap_or_else(|e| panic!("{e}")).remove(0);
        for (jj, ct) in out.iter().enumerate() {
            let mut want = vec![0u64; p.degree()];
            for (ti, w) in t.iter().zip(&weights[jj]) {
                for (acc, v) in want.iter_mut().zip(negacyclic_mod_2_64(&pad(ti, p.degree()), &pad(w, p.degree()))) {
                    *acc = acc.wrapping_add(v);
                }
            }
            assert!(sk.decrypt(ct, &be).unwrap_or_else(|e| panic!("{e}")).coeffs() == &want[..], "output {jj}");
        }
        // a run beyond the selectors is refused
        assert!(matches!(select(&p, &sel, 1, &bank, &be), Err(HeError::Shape(_))));
    }

    #[test]
    fn one_selection_over_many_rows_gives_each_row_its_own_expert_and_sums_stream_over_banks() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(23);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let (e, j) = (5usize, 2usize);
        let weights: Vec<Vec<Vec<u64>>> = (0..j)
            .map(|_| (0..e).map(|_| (0..24).map(|_| rng.random_range(-700i64..700) as u64).collect()).collect())
            .collect();
        let bank_of = |range: std::ops::Range<usize>| {
            let rows: Vec<Vec<&[u64]>> =
                weights.iter().map(|r| r[range.clone()].iter().map(Vec::as_slice).collect()).collect();
            OperandBank::new(&p, &rows, &be).unwrap_or_else(|e| panic!("{e}"))
        };
        let chosen = [3usize, 0, 4, 3];
        let rows: Vec<Vec<Ciphertext>> = chosen
            .iter()
            .map(|&c| {
                (0..e)
                    .map(|i| {
                        let pt = Plaintext::new(&p, vec![u64::from(i == c)]).unwrap_or_else(|e| panic!("{e}"));
                        sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"))
                    })
                    .collect()
            })
            .collect();
        let sel = Selectors::new(&p, &rows, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((sel.rows(), sel.len()), (4, e));
        let whole = select(&p, &sel, 0, &bank_of(0..e), &be).unwrap_or_else(|e| panic!("{e}"));
        // the same sums with the experts in two banks, added in place
        let mut sums = SelectionSums::new(&p, 4, j, p.moduli().len(), &be).unwrap_or_else(|e| panic!("{e}"));
        sums.add(&p, &sel, 0, &bank_of(0..2), &be).unwrap_or_else(|e| panic!("{e}"));
        sums.add(&p, &sel, 2, &bank_of(2..e), &be).unwrap_or_else(|e| panic!("{e}"));
        let streamed = sums.into_ciphertexts(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        for (r, &c) in chosen.iter().enumerate() {
            for jj in 0..j {
                for ct in [&whole[r][jj], &streamed[r][jj]] {
                    let got = sk.decrypt(ct, &be).unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(&got.coeffs()[..24], &weights[jj][c][..], "row {r}, output {jj}");
                }
            }
        }
        // sums of another shape are refused, not mixed up
        let mut other = SelectionSums::new(&p, 3, j, p.moduli().len(), &be).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(other.add(&p, &sel, 0, &bank_of(0..e), &be), Err(HeError::Shape(_))));
    }

    #[test]
    fn experts_spread_over_two_backends_sum_to_the_single_device_result() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let devices = [CpuBackend::new(1), CpuBackend::new(1)].map(|b| b.unwrap_or_else(|e| panic!("{e}")));
        let mut rng = StdRng::seed_from_u64(22);
        let sk = SecretKey::generate(&p, &devices[0], &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let (e, j) = (6usize, 2usize);
        let weights: Vec<Vec<Vec<u64>>> = (0..j)
            .map(|_| (0..e).map(|_| (0..16).map(|_| rng.random_range(-500i64..500) as u64).collect()).collect())
            .collect();
        let bank_of = |range: std::ops::Range<usize>| {
            let rows: Vec<Vec<&[u64]>> =
                weights.iter().map(|r| r[range.clone()].iter().map(Vec::as_slice).collect()).collect();
            OperandBank::new(&p, &rows, &devices[0]).unwrap_or_else(|e| panic!("{e}"))
        };
        let chosen = 4;
        let cts = (0..e)
            .map(|i| {
                let pt = Plaintext::new(&p, vec![u64::from(i == chosen)]).unwrap_or_else(|e| panic!("{e}"));
                sk.encrypt(&pt, &devices[0], &mut rng).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let sel = Selectors::new(&p, &[cts], &devices[0]).unwrap_or_else(|e| panic!("{e}"));
        let (whole, first, second) = (bank_of(0..e), bank_of(0..4), bank_of(4..e));
        let single = select(&p, &sel, 0, &whole, &devices[0]).unwrap_or_else(|e| panic!("{e}")).remove(0);
        let parts = [
            SelectionPart { selectors: &sel, first: 0, bank: &first, backend: &devices[0] },
            SelectionPart { selectors: &sel, first: 4, bank: &second, backend: &devices[1] },
        ];
        let spread = select_spread(&p, &parts).unwrap_or_else(|e| panic!("{e}")).remove(0);
        for (jj, (a, b)) in single.iter().zip(&spread).enumerate() {
            let (da, db) = (
                sk.decrypt(a, &devices[0]).unwrap_or_else(|e| panic!("{e}")),
                sk.decrypt(b, &devices[0]).unwrap_or_else(|e| panic!("{e}")),
            );
            assert_eq!(da, db, "output {jj}");
            assert_eq!(&da.coeffs()[..16], &weights[jj][chosen][..], "output {jj}");
        }
    }

    #[test]
    fn a_bank_refilled_with_shorter_operands_selects_like_a_new_one() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(24);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let operands = |support: usize, rng: &mut StdRng| -> Vec<Vec<Vec<u64>>> {
            (0..2)
                .map(|_| {
                    (0..3).map(|_| (0..support).map(|_| rng.random_range(-900i64..900) as u64).collect()).collect()
                })
                .collect()
        };
        let (long, short) = (operands(50, &mut rng), operands(9, &mut rng));
        let bank = OperandBank::new(&p, &as_rows(&long), &be).unwrap_or_else(|e| panic!("{e}"));
        let refilled = bank.refill(&p, p.moduli().len(), &as_rows(&short), &be).unwrap_or_else(|e| panic!("{e}"));
        let cts = (0..3)
            .map(|i| {
                let pt = Plaintext::new(&p, vec![u64::from(i == 1)]).unwrap_or_else(|e| panic!("{e}"));
                sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let sel = Selectors::new(&p, &[cts], &be).unwrap_or_else(|e| panic!("{e}"));
        let out = select(&p, &sel, 0, &refilled, &be).unwrap_or_else(|e| panic!("{e}")).remove(0);
        for (j, ct) in out.iter().enumerate() {
            let got = sk.decrypt(ct, &be).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&got.coeffs()[..9], &short[j][1][..], "output {j}");
            assert!(got.coeffs()[9..].iter().all(|&c| c == 0), "output {j} keeps the old operand's tail");
        }
    }

    fn as_rows(w: &[Vec<Vec<u64>>]) -> Vec<Vec<&[u64]>> {
        w.iter().map(|r| r.iter().map(Vec::as_slice).collect()).collect()
    }

    fn pad(v: &[u64], n: usize) -> Vec<u64> {
        let mut v = v.to_vec();
        v.resize(n, 0);
        v
    }
}
