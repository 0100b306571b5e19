//! Cheetah's ciphertext×plaintext matrix product as a service of the HE layer: the server's side
//! of A·B for the client's encrypted tiles of A (plus, optionally, the server's own share A_s in
//! the clear) and the server's plaintext B, cut by a [`Tiling`]; and the one path every result
//! that leaves the server takes ([`respond`]): merge, mask, re-randomize, flood, shrink.
//!
//! The protocol around it (who sends what, the flooding policy, the shares) is
//! `proto::linear`; nothing there touches a ciphertext's polynomials.

use rand::RngExt;
use rand::rngs::ChaCha20Rng;
use rayon::prelude::*;

use super::bfv::add_wide_plain;
use super::response;
use super::tiling::{MatShape, Tiling, TilingCost};
use super::{
    Ciphertext, GaloisKeys, HeError, HeParams, HeResult, Outgoing, Plaintext, PublicKey, RnsPoly, SeededCiphertext,
    ShrunkShape, SquareKey, seeded_ciphertext_len,
};
use crate::backend::{Backend, Prepared, par_map};
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
        // per slot and stage, and a key switch with its merge and the results' return to
        // coefficients ≈ 13·(limbs + 1) transforms
        weight_stage_s: per_core * limbs * 0.30e-9 * n,
        product_s: per_core * limbs * 2.0 * 0.55e-9 * n,
        keyswitch_s: per_core * 13.0 * (limbs + 1.0) * 0.23e-9 * n * n.log2(),
        bandwidth: network.bandwidth_bps / 8.0,
        max_pack: max_pack(params),
    }
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

/// Bytes of products (NTT form, every limb) computed at once in [`EncryptedRows::multiply`]: a
/// group of column tiles that shares one pass over the inputs.
const PRODUCT_GROUP_BYTES: usize = 32 << 20;

/// The client's ciphertexts of A (with the server's share added), in NTT form, laid out as one
/// batch for [`Backend::mul_acc`]: for token tile ti and half h (c0, c1), the J d-tiles
/// limb-major, with their Shoup constants. Kept by the server for every column tile of B.
#[derive(Debug)]
pub struct EncryptedRows {
    /// Row ti·2 + h at offset (ti·2 + h)·L·J·N: limb l's block holds the J tiles' residues mod
    /// p_l.
    values: Vec<u64>,
    /// The Shoup constants of `values`, in the same layout; empty where the backend sums
    /// products exactly ([`Backend::exact_products`]).
    shoup: Vec<u64>,
    tiles_i: usize,
}

impl EncryptedRows {
    /// Expands the client's seeded ciphertexts (tile (ti, tj) at index ti·J + tj), adds the
    /// server's share of A if any, and lays them out.
    pub fn prepare(
        p: &HeParams,
        be: &dyn Backend,
        t: &Tiling,
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
        let cts: Vec<Ciphertext> = par_map(seeded.len(), |idx| {
            let mut ct = seeded[idx].expand(p);
            if let Some(a) = a_share {
                ct.add_plain_assign(p, &Plaintext::new(p, t.encode_a(a, idx / tj_n, idx % tj_n))?, be)?;
            }
            ct.c0.to_ntt(p, be)?;
            ct.c1.to_ntt(p, be)?;
            Ok(ct)
        })
        .into_iter()
        .collect::<HeResult<_>>()?;
        // run (row, l, tj) of the layout, row = ti·2 + h
        let runs = ti_n * 2 * limbs * tj_n;
        let mut values = vec![0u64; runs * n];
        each_run(&mut values, n, |r, run| {
            let (row, l, tj) = (r / (limbs * tj_n), (r / tj_n) % limbs, r % tj_n);
            let ct = &cts[(row / 2) * tj_n + tj];
            run.copy_from_slice(if row % 2 == 0 { ct.c0.limb(p, l) } else { ct.c1.limb(p, l) });
        });
        drop(cts);
        // Shoup constants only for a backend that reads them
        let mut shoup = vec![0u64; if be.exact_products(p.moduli(), n) { 0 } else { runs * n }];
        each_run(&mut shoup, n, |r, run| {
            let m = &p.moduli()[(r / tj_n) % limbs];
            run.iter_mut().zip(&values[r * n..][..n]).for_each(|(s, &v)| *s = m.shoup(v));
        });
        Ok(EncryptedRows { values, shoup, tiles_i: ti_n })
    }

    /// The unmasked results for output tiles (ti, tk), tk in `ks`, in (tk, ti) order, in NTT form.
    /// The column tiles go in groups of at most 32 MB of products: a group's
    /// weight polynomials, encoded on their support, meet every input in one
    /// [`Backend::mul_acc_sparse`] (which transforms them), so the inputs are read once per
    /// group, and no transformed weight is stored.
    pub fn multiply(
        &self,
        p: &HeParams,
        be: &dyn Backend,
        t: &Tiling,
        b: &[u64],
        ks: std::ops::Range<usize>,
    ) -> HeResult<Vec<Ciphertext>> {
        let (_, tj_n, _) = t.tile_counts();
        let (n, limbs, ti_n) = (p.degree(), p.moduli().len(), self.tiles_i);
        let support = t.d_w * t.m_w;
        let per_tile = ti_n * 2 * limbs * n * 8;
        let group = (PRODUCT_GROUP_BYTES / per_tile).clamp(1, ks.len().max(1));
        let mut results = Vec::with_capacity(ks.len() * ti_n);
        // one group's weights heads[l][g][tj] (their supports) and products out[row][l][g],
        // row = ti·2 + h, reused
        let mut heads = vec![0u64; limbs * group * tj_n * support];
        let mut out = vec![0u64; ti_n * 2 * limbs * group * n];
        for first in ks.clone().step_by(group) {
            let g_n = group.min(ks.end - first);
            let heads = &mut heads[..limbs * g_n * tj_n * support];
            // the group's weight polynomials (tk, tj), reduced mod each prime
            each_run(heads, support, |r, head| {
                let (l, idx) = (r / (g_n * tj_n), r % (g_n * tj_n));
                let m = &p.moduli()[l];
                t.encode_b_into(b, idx % tj_n, first + idx / tj_n, head);
                for v in head {
                    let signed = *v as i64;
                    *v = if signed >= 0 { m.reduce(*v) } else { m.neg(m.reduce(signed.unsigned_abs())) };
                }
            });
            let out = &mut out[..ti_n * 2 * limbs * g_n * n];
            let prepared = if self.shoup.is_empty() { Prepared::Neither } else { Prepared::X(&self.shoup) };
            be.mul_acc_sparse(p.tables(), ti_n * 2, &self.values, heads, support, prepared, out)?;
            let half = |ti: usize, h: usize, g: usize| -> Vec<u64> {
                let mut limbs_of = Vec::with_capacity(limbs * n);
                for l in 0..limbs {
                    limbs_of.extend_from_slice(&out[(((ti * 2 + h) * limbs + l) * g_n + g) * n..][..n]);
                }
                limbs_of
            };
            for g in 0..g_n {
                for ti in 0..ti_n {
                    results.push(Ciphertext::from_ntt_limbs(half(ti, 0, g), half(ti, 1, g)));
                }
            }
        }
        Ok(results)
    }
}

/// Runs `f(r, run)` on every run of `n` values of `data`, in parallel on a worker's pool.
fn each_run(data: &mut [u64], n: usize, f: impl Fn(usize, &mut [u64]) + Sync) {
    if rayon::current_thread_index().is_some() {
        data.par_chunks_mut(n).enumerate().for_each(|(r, run)| f(r, run));
    } else {
        data.chunks_mut(n).enumerate().for_each(|(r, run)| f(r, run));
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
