//! Cheetah's ciphertext×plaintext matrix product as a service of the HE layer: the server's side
//! of A·B for the client's encrypted tiles of A (plus, optionally, the server's own share A_s in
//! the clear) and the server's plaintext B, cut by a [`Tiling`]; and the one path every result
//! that leaves the server takes ([`respond`]): merge, mask, re-randomize, flood, shrink.
//!
//! The protocol around it (who sends what, the flooding policy, the shares) is
//! `proto::linear`; nothing there touches a ciphertext's polynomials.

use rand::RngExt;
use rand::rngs::ChaCha20Rng;

use super::tiling::{MatShape, Tiling, TilingCost};
use super::{
    Ciphertext, GaloisKeys, HeError, HeParams, HeResult, Plaintext, PublicKey, SeededCiphertext, seeded_ciphertext_len,
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

/// Most Galois levels a client's keys cover (2^10 results per packed ciphertext, 2^10
/// selectors per expanded one): each level is one key switching key in the setup.
pub const MAX_GALOIS_LEVELS: u32 = 10;

/// Packing levels the parameters allow: t = 2^(64+ℓ) absorbs the factor 2^ℓ of a merge, up to
/// [`MAX_GALOIS_LEVELS`]. Also the levels of the Galois keys a client sends for the set.
pub fn max_pack(p: &HeParams) -> u32 {
    if p.special().is_some() { (p.plain_bits() - 64).min(MAX_GALOIS_LEVELS) } else { 0 }
}

/// Cost estimates for [`Tiling::choose`] under `params`, trading bytes against server time at
/// the bandwidth of `network`.
pub(crate) fn tiling_cost(params: &HeParams, network: &CostModel) -> TilingCost {
    let (n, limbs) = (params.degree() as f64, params.moduli().len() as f64);
    TilingCost {
        input_bytes: seeded_ciphertext_len(params) as f64,
        output_bytes: n * response_c1_bits(params) as f64 / 8.0,
        kept_bytes: response_c0_bits(params) as f64 / 8.0,
        // measured on a 2-core AVX-512 machine, per core: an NTT stage ≈ 0.45 ns per
        // coefficient and limb, a multiply-accumulate ≈ 1.2 ns per coefficient and limb, a key
        // switch ≈ 5·(limbs + 1) transforms
        weight_stage_s: limbs * 0.45e-9 * n,
        product_s: limbs * 2.0 * 1.2e-9 * n,
        keyswitch_s: 5.0 * (limbs + 1.0) * 0.45e-9 * n * n.log2(),
        bandwidth: network.bandwidth_bps / 8.0,
        max_pack: max_pack(params),
    }
}

/// The tiling with the lowest estimated time for `shape` under `params` on `network`. The
/// client chooses and announces it; the server checks it.
pub fn tiling_for(params: &HeParams, shape: MatShape, network: &CostModel) -> Tiling {
    Tiling::choose(shape, params.degree(), &tiling_cost(params, network))
}

/// The client's ciphertexts of A (with the server's share added), in NTT form, laid out for
/// [`Backend::mul_acc`]: for token tile ti and half h (c0, c1), the J d-tiles limb-major, with
/// their Shoup constants. Kept by the server for every column tile of B.
#[derive(Debug)]
pub struct EncryptedRows {
    /// rows[ti·2 + h] = (values, Shoup constants), each L·J·N long: limb l's block holds the J
    /// tiles' residues mod p_l.
    rows: Vec<(Vec<u64>, Vec<u64>)>,
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
        let rows = par_map(ti_n * 2, |row| {
            let (ti, h) = (row / 2, row % 2);
            let (mut values, mut shoup) = (Vec::with_capacity(limbs * tj_n * n), Vec::with_capacity(limbs * tj_n * n));
            for (l, m) in p.moduli().iter().enumerate() {
                for tj in 0..tj_n {
                    let ct = &cts[ti * tj_n + tj];
                    let limb = if h == 0 { ct.c0.limb(p, l) } else { ct.c1.limb(p, l) };
                    values.extend_from_slice(limb);
                    shoup.extend(limb.iter().map(|&v| m.shoup(v)));
                }
            }
            (values, shoup)
        });
        Ok(EncryptedRows { rows, tiles_i: ti_n })
    }

    /// The unmasked results for output tiles (ti, tk), tk in `ks`, in (tk, ti) order, in NTT form.
    /// Each column tile is one task: its weight polynomials are transformed and used while they
    /// are in cache, never stored for the whole matrix.
    pub fn multiply(
        &self,
        p: &HeParams,
        be: &dyn Backend,
        t: &Tiling,
        b: &[u64],
        ks: std::ops::Range<usize>,
    ) -> HeResult<Vec<Ciphertext>> {
        let (_, tj_n, _) = t.tile_counts();
        let (n, limbs) = (p.degree(), p.moduli().len());
        let per_k = par_map(ks.len(), |idx| -> HeResult<_> {
            let k = ks.start + idx;
            let support = t.d_w * t.m_w;
            // the column tile's J weight polynomials, every limb (limb-major), NTT form
            let mut w = vec![0u64; limbs * tj_n * n];
            for tj in 0..tj_n {
                let coeffs = t.encode_b(b, tj, k);
                for (l, m) in p.moduli().iter().enumerate() {
                    let poly = &mut w[(l * tj_n + tj) * n..][..support];
                    for (dst, &v) in poly.iter_mut().zip(&coeffs) {
                        let v = v as i64;
                        *dst = if v >= 0 { m.reduce(v as u64) } else { m.neg(m.reduce(v.unsigned_abs())) };
                    }
                }
            }
            be.ntt_forward_sparse(p.tables(), &mut w, support)?;
            (0..self.tiles_i)
                .map(|ti| {
                    let [c0, c1] = [0, 1].map(|h| {
                        let (x, xs) = &self.rows[ti * 2 + h];
                        let mut out = vec![0u64; limbs * n];
                        be.mul_acc(p.moduli(), n, x, &w, Prepared::X(xs), &mut out).map(|()| out)
                    });
                    Ok(Ciphertext::from_ntt_limbs(c0?, c1?))
                })
                .collect::<HeResult<Vec<_>>>()
        });
        Ok(per_k.into_iter().collect::<HeResult<Vec<_>>>()?.into_iter().flatten().collect())
    }
}

/// The client's keys a response is made under.
#[derive(Debug, Clone, Copy)]
pub struct ResponseKeys<'a> {
    /// For re-randomizing c1.
    pub pk: &'a PublicKey,
    /// For merging a group of sparse results (where the parameters pack).
    pub galois: Option<&'a GaloisKeys>,
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
/// [`mask_and_seal`]ed at its output coefficients with scale 2^pack. Returns its bytes and R mod
/// 2^64 (the server's share) at each output's (row, column).
#[allow(clippy::too_many_arguments)]
pub fn respond(
    p: &HeParams,
    keys: ResponseKeys<'_>,
    t: &Tiling,
    g: usize,
    members: &[Ciphertext],
    flood: u32,
    be: &dyn Backend,
    rng: &mut ChaCha20Rng,
) -> HeResult<Response> {
    let ct = pack_group(p, keys, t, members, be)?;
    let pos = t.returned_positions(g);
    let keep: Vec<usize> = pos.iter().map(|&(c, _, _)| c).collect();
    let (bytes, mask) = mask_and_seal(p, keys.pk, ct, &keep, t.pack, flood, be, rng)?;
    Ok((bytes, mask.into_iter().zip(pos).map(|(r, (_, _, ik))| (r, ik)).collect()))
}

/// The one path of every result that leaves the server: a fresh mask 2^scale·R subtracted at
/// the output coefficients `keep` (R uniform mod 2^(log t − scale), so every bit of the value
/// 2^scale·y up to t is hidden), re-randomized with an encryption of zero under `pk`, flooded
/// with `flood` bits of noise and shrunk to the output coefficients. Returns the bytes and R mod
/// 2^64 (the server's share of y) per coefficient of `keep`.
#[allow(clippy::too_many_arguments)]
pub fn mask_and_seal(
    p: &HeParams,
    pk: &PublicKey,
    mut ct: Ciphertext,
    keep: &[usize],
    scale: u32,
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
    ct.add_wide_plain_assign(p, &neg_mask, be)?;
    ct.rerandomize(p, pk, be, rng)?;
    ct.flood(p, flood, be, rng)?;
    Ok((ct.shrink(p, keep, response_c0_bits(p), response_c1_bits(p), be)?.to_bytes(), mask))
}
