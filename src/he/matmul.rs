//! Cheetah's ciphertext×plaintext matrix product as a service of the HE layer: the server's side
//! of A·B for the client's encrypted tiles of A (plus, optionally, the server's own share A_s in
//! the clear) and the server's plaintext B, cut by a [`Tiling`]; and the one path every result
//! that leaves the server takes ([`respond`]): merge, mask, re-randomize, flood, shrink.
//!
//! The protocol around it (who sends what, the flooding policy, the shares) is
//! `proto::linear`; nothing there touches a ciphertext's polynomials.

use rand::RngExt;
use rand::rngs::ChaCha20Rng;

use super::bfv::add_wide_plain;
use super::response;
use super::tiling::{Blocking, MatShape, Tiling, TilingCost};
use super::{
    Ciphertext, GaloisKeys, HeError, HeParams, HeResult, Outgoing, Plaintext, PublicKey, RnsPoly, SeededCiphertext,
    ShrunkShape, SquareKey, seeded_ciphertext_len,
};
use crate::backend::{Backend, NttTable, Prepared, each_run, par_map};
use crate::net::CostModel;

/// Bits of c0 in a returned ciphertext: 4 above the plaintext.
pub fn response_c0_bits(p: &HeParams) -> u32 {
    p.plain_bits() + 4
}

/// Bits of c1 in a returned ciphertext: 13 above the plaintext (c1·s rounding stays below 2^9).
pub fn response_c1_bits(p: &HeParams) -> u32 {
    p.plain_bits() + 13
}

/// Bits of d1 and d2 in a returned product that was not relinearized: 23 above the plaintext.
/// Each value's rounding (≤ 1.5 units) times s² adds up to 1.5·‖s²‖₁ ≈ 2^20.7 units at
/// N = 16384 with a ternary s, which with c0's rounding (≤ 1.5·2^19) and the flooding
/// (≤ 2^19) stays below the 2^22 units that decryption tolerates.
pub fn tensored_c1_bits(p: &HeParams) -> u32 {
    p.plain_bits() + 23
}

/// The shape of a returned result of `parts` parts (2: a ciphertext, 3: a product opened with
/// s²) with `kept` output coefficients.
pub fn response_shape(p: &HeParams, parts: usize, kept: usize) -> ShrunkShape {
    let c1_bits = if parts == 3 { tensored_c1_bits(p) } else { response_c1_bits(p) };
    ShrunkShape { parts, kept, c0_bits: response_c0_bits(p), c1_bits, plain_bits: p.plain_bits() }
}

/// Bits of the plaintext a product's result carries when the client keeps its share mod
/// 2^`result_bits`: the packing's factor 2^pack and the result's bits, at most log t — the bits
/// above are dropped before the result leaves ([`crate::he::ShrunkCiphertext::narrow`]).
pub fn result_plain_bits(p: &HeParams, pack: u32, result_bits: u32) -> u32 {
    (pack + result_bits).min(p.plain_bits())
}

/// Most Galois levels a client's keys cover (2^10 results per packed ciphertext, 2^10
/// selectors per expanded one): each level is one key switching key in the setup.
pub const MAX_GALOIS_LEVELS: u32 = 10;

/// Packing levels the parameters allow: t = 2^(64+ℓ) absorbs the factor 2^ℓ of a merge, up to
/// [`MAX_GALOIS_LEVELS`]. Also the levels of the Galois keys a client sends for the set.
pub fn max_pack(p: &HeParams) -> u32 {
    if p.special().is_some() { (p.plain_bits() - 64).min(MAX_GALOIS_LEVELS) } else { 0 }
}

/// Cost estimates for [`Tiling::choose`] under `params`, trading bytes against server time at
/// the bandwidth of `network`, for a server that spreads its work over `server_threads` host
/// threads (it announces them at the HE setup): the per-core estimates below divided by them.
/// Results mod 2^`result_bits` are priced at the widths they leave with at the deepest packing
/// ([`result_plain_bits`]), an upper bound for the others.
pub(crate) fn tiling_cost(
    params: &HeParams,
    network: &CostModel,
    server_threads: usize,
    result_bits: u32,
) -> TilingCost {
    let (n, limbs) = (params.degree() as f64, params.moduli().len() as f64);
    let per_core = 1.0 / server_threads.max(1) as f64;
    let dropped = params.plain_bits() - result_plain_bits(params, max_pack(params), result_bits);
    TilingCost {
        input_bytes: seeded_ciphertext_len(params) as f64,
        output_bytes: n * (response_c1_bits(params) - dropped) as f64 / 8.0,
        kept_bytes: (response_c0_bits(params) - dropped) as f64 / 8.0,
        // measured on a 2-core AVX-512 machine (Zen 4), per core: a weight transform's stage
        // ≈ 0.30 ns per slot and limb (windows of a sparse transform, the final reduction
        // included), a multiply-accumulate ≈ 0.55 ns per slot and limb, a transform ≈ 0.23 ns
        // per slot and stage, a key switch with its merge and the results' return to
        // coefficients ≈ 13·(limbs + 1) transforms, and a ciphertext's way across (an input's
        // encryption, transport and expansion; a result's masking, re-randomization, transport
        // and decryption) ≈ 5 ms at N = 8192 with 3 limbs (linear 128×768·768×3072: 48 more
        // inputs took 0.12 s more on both cores), taken as 50·(limbs + 1) transforms
        weight_stage_s: per_core * limbs * 0.30e-9 * n,
        product_s: per_core * limbs * 2.0 * 0.55e-9 * n,
        keyswitch_s: 13.0 * (limbs + 1.0) * transform_s(params, server_threads),
        ciphertext_s: 50.0 * (limbs + 1.0) * transform_s(params, server_threads),
        bandwidth: network.bandwidth_bps / 8.0,
        max_pack: max_pack(params),
    }
}

/// Seconds of one number-theoretic transform of one limb under `params` on `server_threads`
/// threads (≈ 0.23 ns per slot and stage per core, measured as [`tiling_cost`]'s figures).
pub(crate) fn transform_s(params: &HeParams, server_threads: usize) -> f64 {
    let n = params.degree() as f64;
    0.23e-9 * n * n.log2() / server_threads.max(1) as f64
}

/// The tiling with the lowest estimated time for `shape` under `params` on `network`, the
/// server computing on `server_threads` threads, for results mod 2^`result_bits`. The client
/// chooses and announces it; the server checks it.
pub fn tiling_for(
    params: &HeParams,
    shape: MatShape,
    network: &CostModel,
    server_threads: usize,
    result_bits: u32,
) -> Tiling {
    Tiling::choose(shape, params.degree(), &tiling_cost(params, network, server_threads, result_bits))
}

/// Bytes of products (transformed, every limb) computed at once in [`EncryptedRows::multiply`]:
/// a group of column tiles that shares one pass over the inputs.
const PRODUCT_GROUP_BYTES: usize = 32 << 20;

/// The server's [`Blocking`] for tiling `t` under `params`: the cost model's cheapest (it
/// depends only on the ratio of a weight transform's stage to a product, not on the network).
pub fn blocking_for(params: &HeParams, t: &Tiling) -> Blocking {
    t.blocking(&tiling_cost(params, &CostModel::LAN, 1, 64))
}

/// The client's ciphertexts of A (with the server's share added), transformed in the tiling's
/// [`Blocking`], laid out as one batch for [`Backend::mul_acc`]: for token tile ti, half h
/// (c0, c1) and block b, the J d-tiles limb-major, with their Shoup constants. Kept by the
/// server for every column tile of B.
#[derive(Debug)]
pub struct EncryptedRows {
    /// Entry (ti·2 + h)·blocks + b at offset ((ti·2 + h)·blocks + b)·L·J·M: limb l's block
    /// holds the J tiles' M-point transforms mod p_l.
    values: Vec<u64>,
    /// The Shoup constants of `values`, in the same layout; empty where the backend sums
    /// products exactly ([`Backend::exact_products`]).
    shoup: Vec<u64>,
    tiles_i: usize,
    blocking: Blocking,
    /// Transforms of M points over q's primes.
    tables: Vec<NttTable>,
}

impl EncryptedRows {
    /// Expands the client's seeded ciphertexts (tile (ti, tj) at index ti·J + tj), adds the
    /// server's share of A if any, and transforms them in `blocking` ([`blocking_for`]).
    pub fn prepare(
        p: &HeParams,
        be: &dyn Backend,
        t: &Tiling,
        blocking: Blocking,
        seeded: &[SeededCiphertext],
        a_share: Option<&[u64]>,
    ) -> HeResult<EncryptedRows> {
        let (ti_n, tj_n, _) = t.tile_counts();
        if seeded.len() != ti_n * tj_n {
            return Err(HeError::Shape(format!(
                "{} input ciphertexts for a tiling of {ti_n}×{tj_n} tiles of A",
                seeded.len()
            )));
        }
        let (n, limbs) = (p.degree(), p.moduli().len());
        let Blocking { size, stride, count } = blocking;
        let whole = blocking == Blocking::whole(n);
        let tables = p.moduli().iter().map(|&m| NttTable::new(size, m)).collect::<Result<Vec<_>, _>>()?;
        let cts: Vec<Ciphertext> = par_map(seeded.len(), |idx| {
            let mut ct = seeded[idx].expand(p);
            if let Some(a) = a_share {
                ct.add_plain_assign(p, &Plaintext::new(p, t.encode_a(a, idx / tj_n, idx % tj_n))?, be)?;
            }
            // whole: the N-point transform is the layout; blocks: cut from the coefficients
            if whole {
                ct.c0.to_ntt(p, be)?;
                ct.c1.to_ntt(p, be)?;
            } else {
                ct.c0.to_coeff(p, be)?;
                ct.c1.to_coeff(p, be)?;
            }
            Ok(ct)
        })
        .into_iter()
        .collect::<HeResult<_>>()?;
        // run (entry, l, tj) of the layout, entry = (ti·2 + h)·blocks + b: block b of the
        // coefficients, zero-padded to M
        let entry_len = limbs * tj_n * size;
        let mut values = vec![0u64; ti_n * 2 * count * entry_len];
        each_run(&mut values, size, |r, run| {
            let (entry, l, tj) = (r / (limbs * tj_n), (r / tj_n) % limbs, r % tj_n);
            let (row, b) = (entry / count, entry % count);
            let ct = &cts[(row / 2) * tj_n + tj];
            let limb = if row % 2 == 0 { ct.c0.limb(p, l) } else { ct.c1.limb(p, l) };
            let block = &limb[(b * stride).min(n)..((b + 1) * stride).min(n)];
            run[..block.len()].copy_from_slice(block);
        });
        drop(cts);
        if !whole {
            for entry in values.chunks_exact_mut(entry_len) {
                be.ntt_forward(&tables, entry)?;
            }
        }
        // Shoup constants only for a backend that reads them
        let mut shoup = vec![0u64; if be.exact_products(p.moduli(), size) { 0 } else { values.len() }];
        each_run(&mut shoup, size, |r, run| {
            let m = &p.moduli()[(r / tj_n) % limbs];
            run.iter_mut().zip(&values[r * size..][..size]).for_each(|(s, &v)| *s = m.shoup(v));
        });
        Ok(EncryptedRows { values, shoup, tiles_i: ti_n, blocking, tables })
    }

    /// The unmasked results for output tiles (ti, tk), tk in `ks`, in (tk, ti) order, in
    /// coefficient form. The column tiles go in groups of at most 32 MB of products: a group's
    /// weight polynomials, encoded on their support, meet every input in one
    /// [`Backend::mul_acc_sparse`] (which transforms them at M points), so the inputs are read
    /// once per group, and no transformed weight is stored; each result's blocks then return to
    /// coefficients and add up at their offsets, mod X^N + 1.
    pub fn multiply(
        &self,
        p: &HeParams,
        be: &dyn Backend,
        t: &Tiling,
        b: &[u64],
        ks: std::ops::Range<usize>,
    ) -> HeResult<Vec<Ciphertext>> {
        let (_, tj_n, _) = t.tile_counts();
        let (limbs, ti_n) = (p.moduli().len(), self.tiles_i);
        let Blocking { size, count, .. } = self.blocking;
        let support = t.support();
        let per_tile = ti_n * 2 * count * limbs * size * 8;
        let group = (PRODUCT_GROUP_BYTES / per_tile).clamp(1, ks.len().max(1));
        let mut results = Vec::with_capacity(ks.len() * ti_n);
        // one group's weights heads[l][g][tj] (their supports) and products out[entry][l][g],
        // entry = (ti·2 + h)·blocks + b, reused
        let mut heads = vec![0u64; limbs * group * tj_n * support];
        let mut out = vec![0u64; ti_n * 2 * count * limbs * group * size];
        for first in ks.clone().step_by(group) {
            let g_n = group.min(ks.end - first);
            let heads = &mut heads[..limbs * g_n * tj_n * support];
            // the group's weight polynomials (tk, tj), reduced mod each prime
            each_run(heads, support, |r, head| {
                let (l, idx) = (r / (g_n * tj_n), r % (g_n * tj_n));
                let m = &p.moduli()[l];
                t.encode_b_into(b, idx % tj_n, first + idx / tj_n, head);
                for v in head {
                    *v = m.reduce_signed(*v as i64);
                }
            });
            let out = &mut out[..ti_n * 2 * count * limbs * g_n * size];
            let prepared = if self.shoup.is_empty() { Prepared::Neither } else { Prepared::X(&self.shoup) };
            be.mul_acc_sparse(&self.tables, ti_n * 2 * count, &self.values, heads, support, prepared, out)?;
            // every entry's products back in coefficients, in place ([l][g][M] per entry)
            for entry in out.chunks_exact_mut(limbs * g_n * size) {
                be.ntt_inverse(&self.tables, entry)?;
            }
            let out = &*out;
            results.extend(par_map(g_n * ti_n, |r| self.result(p, out, g_n, (r / ti_n, r % ti_n))));
        }
        Ok(results)
    }

    /// Result (ti, member g of the group) of a group's products `out` back in coefficients
    /// ([`EncryptedRows::multiply`]): per half and limb, its blocks added at offsets b·B mod
    /// X^N + 1 (a block's product has B + s − 1 ≤ M coefficients: it wraps at most once, negated).
    fn result(&self, p: &HeParams, out: &[u64], g_n: usize, (g, ti): (usize, usize)) -> Ciphertext {
        let (n, limbs) = (p.degree(), p.moduli().len());
        let Blocking { size, stride, count } = self.blocking;
        // written before they are read: a zeroed allocation's first read would map the shared
        // zero page, and the write after it copy on write, with a TLB flush on every core
        let mut halves = [Vec::new(), Vec::new()];
        halves.iter_mut().for_each(|h| h.resize(limbs * n, 0u64));
        for (h, half) in halves.iter_mut().enumerate() {
            for (l, (m, dst)) in p.moduli().iter().zip(half.chunks_exact_mut(n)).enumerate() {
                for b in 0..count {
                    let entry = (ti * 2 + h) * count + b;
                    let run = &out[((entry * limbs + l) * g_n + g) * size..][..size];
                    let offset = b * stride;
                    let (kept, wrapped) = run.split_at(size.min(n - offset));
                    dst[offset..][..kept.len()].iter_mut().zip(kept).for_each(|(d, &v)| *d = m.add(*d, v));
                    dst[..wrapped.len()].iter_mut().zip(wrapped).for_each(|(d, &v)| *d = m.sub(*d, v));
                }
            }
        }
        let [c0, c1] = halves;
        Ciphertext::from_coeff_limbs(c0, c1)
    }
}

/// The client's keys a response is made under.
#[derive(Debug, Clone, Copy)]
pub struct ResponseKeys<'a> {
    /// For re-randomizing c1.
    pub pk: &'a PublicKey,
    /// For merging a group of sparse results (where the parameters pack).
    pub galois: Option<&'a GaloisKeys>,
    /// For re-randomizing the part under s² of a product that was not relinearized.
    pub square: Option<&'a SquareKey>,
}

/// A returned ciphertext's bytes, with the mask values it hides and their (row, column).
pub type Response = (Vec<u8>, Vec<(u64, (usize, usize))>);

/// Merges a group of results into one ciphertext (coefficient form) when packing: X^-(d_w−1)
/// moves each member's outputs to multiples of d_w = 2^pack, then the Galois keys merge them.
pub(crate) fn pack_group(
    p: &HeParams,
    keys: ResponseKeys<'_>,
    t: &Tiling,
    members: &[Ciphertext],
    be: &dyn Backend,
) -> HeResult<Ciphertext> {
    match keys.galois {
        Some(galois) if t.pack > 0 => {
            let shift = 2 * p.degree() - (t.d_w - 1);
            let mut slots: Vec<Option<Ciphertext>> = members
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    c.c0.to_coeff(p, be)?;
                    c.c1.to_coeff(p, be)?;
                    Ok(Some(Ciphertext { c0: c.c0.monomial_mul(p, shift), c1: c.c1.monomial_mul(p, shift) }))
                })
                .collect::<HeResult<_>>()?;
            slots.resize(1 << t.pack, None);
            galois.pack(p, slots, be)
        }
        _ => members.first().cloned().ok_or_else(|| HeError::Shape("an empty group of results".into())),
    }
}

/// Result group `g` of a product on its way to the client: merged (if the tiling packs), then
/// [`mask_and_seal`]ed at its output coefficients with scale 2^pack, keeping the plaintext's
/// low `plain_bits` ([`result_plain_bits`]). Returns its bytes and R mod 2^64 (the server's
/// share) at each output's (row, column).
#[allow(clippy::too_many_arguments)]
pub fn respond(
    p: &HeParams,
    keys: ResponseKeys<'_>,
    t: &Tiling,
    g: usize,
    members: &[Ciphertext],
    (flood, plain_bits): (u32, u32),
    be: &dyn Backend,
    rng: &mut ChaCha20Rng,
) -> HeResult<Response> {
    let ct = pack_group(p, keys, t, members, be)?;
    let pos = t.returned_positions(g);
    let keep: Vec<usize> = pos.iter().map(|&(c, _, _)| c).collect();
    let (bytes, mask) = mask_and_seal(p, keys, ct, &keep, (t.pack, plain_bits), flood, be, rng)?;
    Ok((bytes, mask.into_iter().zip(pos).map(|(r, (_, _, ik))| (r, ik)).collect()))
}

/// The one path of every result that leaves the server: a fresh mask 2^scale·R subtracted at
/// the output coefficients `keep` (R uniform mod 2^(log t − scale), so every bit of the value
/// 2^scale·y up to t is hidden), re-randomized with encryptions of zero under the client's keys,
/// flooded with `flood` bits of noise, shrunk to the output coefficients ([`response_shape`])
/// and narrowed to the plaintext's low `plain_bits` (log t where the client reads them all).
/// Returns the bytes and R mod 2^64 (the server's share of y) per coefficient of `keep`.
#[allow(clippy::too_many_arguments)]
pub fn mask_and_seal<T: Outgoing>(
    p: &HeParams,
    keys: ResponseKeys<'_>,
    mut ct: T,
    keep: &[usize],
    (scale, plain_bits): (u32, u32),
    flood: u32,
    be: &dyn Backend,
    rng: &mut ChaCha20Rng,
) -> HeResult<(Vec<u8>, Vec<u64>)> {
    let t_mask = (1u128 << p.plain_bits()) - 1;
    let r_mask = t_mask >> scale;
    let mut neg_mask = vec![0u128; p.degree()];
    let mut mask = Vec::with_capacity(keep.len());
    for &c in keep {
        let r = rng.random::<u128>() & r_mask;
        neg_mask[c] = (r << scale).wrapping_neg() & t_mask;
        mask.push(r as u64);
    }
    let mut parts = ct.parts();
    let shape = response_shape(p, parts.len(), keep.len());
    add_wide_plain(p, parts[0], &neg_mask, be)?;
    response::rerandomize(p, &mut parts, keys.pk, keys.square, be, rng)?;
    response::flood(p, &mut parts, flood, be, rng)?;
    let parts: Vec<&RnsPoly> = parts.into_iter().map(|part| &*part).collect();
    let shrunk = response::shrink(p, &parts, keep, shape.c0_bits, shape.c1_bits, be)?.narrow(plain_bits)?;
    Ok((shrunk.to_bytes(), mask))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::he::SecretKey;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Blocks are a way to compute, not a different result: every blocking gives the whole
    /// product's ciphertexts bit for bit, and they decrypt to A·B at the output positions.
    #[test]
    fn every_blocking_gives_the_whole_products_ciphertexts() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(5);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let shape = MatShape { n: 8, d: 40, m: 96 };
        let t = Tiling { shape, degree: 8192, n_w: 8, d_w: 16, m_w: 64, pack: 4 };
        let (ti_n, tj_n, tk_n) = t.tile_counts();
        let a: Vec<u64> = (0..shape.n * shape.d).map(|_| rng.random()).collect();
        let b: Vec<u64> = (0..shape.d * shape.m).map(|_| rng.random_range(-(1i64 << 26)..1 << 26) as u64).collect();
        let share: Vec<u64> = (0..shape.n * shape.d).map(|_| rng.random()).collect();
        let seeded: Vec<SeededCiphertext> = (0..ti_n * tj_n)
            .map(|idx| {
                let pt = Plaintext::new(&p, t.encode_a(&a, idx / tj_n, idx % tj_n)).unwrap_or_else(|e| panic!("{e}"));
                sk.encrypt_seeded(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let run = |blocking: Blocking| {
            let rows =
                EncryptedRows::prepare(&p, &be, &t, blocking, &seeded, Some(&share)).unwrap_or_else(|e| panic!("{e}"));
            rows.multiply(&p, &be, &t, &b, 0..tk_n).unwrap_or_else(|e| panic!("{e}"))
        };
        let whole = run(Blocking::whole(8192));
        let sum: Vec<u64> = a.iter().zip(&share).map(|(x, y)| x.wrapping_add(*y)).collect();
        let want = shape.plain_product(&sum, &b);
        for (r, ct) in whole.iter().enumerate() {
            let (ti, tk) = t.result_tile(r);
            let got = sk.decrypt_wide(ct, &be).unwrap_or_else(|e| panic!("{e}"));
            for (c, (i, k)) in t.output_positions(ti, tk) {
                assert_eq!(got[c] as u64, want[i * shape.m + k], "output ({i}, {k})");
            }
        }
        // s = 1024: blocks of 2048 (8 of 1025 coefficients) and 4096 (3 of 3073, the last
        // one short, wrapping)
        for size in [2048, 4096] {
            let blocking = Blocking::blocks(8192, size, t.support()).unwrap_or_else(|| panic!("{size}"));
            assert_eq!(run(blocking), whole, "{blocking:?}");
        }
        assert_eq!(Blocking::blocks(8192, 512, 1024), None, "no room for a block");
    }
}
