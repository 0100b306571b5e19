//! Matrix products with HE (Cheetah-style), for the linear layers and attention.
//!
//! The core is [`HeClient::product`] / [`HeServer::product`]: the client holds A_c (n×d), the
//! server holds B (d×m) in the clear and optionally its own share A_s; they end with additive
//! shares of (A_c + A_s)·B. The client encrypts its tiles of A ([`Tiling`], seeded ciphertexts);
//! the server adds A_s, multiplies by its tiles of B in NTT form, subtracts a fresh uniform mask R
//! at the output coefficients, re-randomizes c1 with an encryption of zero, floods c0 with noise
//! 2^κ above every B-dependent noise term, and returns each result shrunk to the kept
//! coefficients (c0 at 68 bits, c1 at 77 bits). The client decrypts (A·B − R); the server keeps R.
//!
//! Security (semi-honest): the server sees only RLWE ciphertexts under the client's key. The
//! client sees (A·B − R) with R uniform, the junk coefficients never leave the server, c1 is an
//! RLWE sample of the server's randomness, and the decrypted noise is statistically close
//! (2^-κ per coefficient) to a distribution independent of B.
//!
//! [`linear_client`] / [`linear_server`] apply it to a layer Y = X·W with X secret-shared and W
//! the server's; [`matmul_shared_client`] / [`matmul_shared_server`] multiply two secret-shared
//! matrices (Q·Kᵀ, P·V) with two such products and local terms.

use std::sync::Arc;

use rand::rngs::ChaCha20Rng;
use rand::{CryptoRng, RngExt, SeedableRng};
use rayon::prelude::*;
use tracing::instrument;

use super::tiling::{MatShape, Tiling, TilingCost};
use super::{ProtoError, ProtoResult, compute};
use crate::backend::{Backend, Prepared};
use crate::he::{
    Ciphertext, HeParams, MAX_FLOOD_BITS, Plaintext, PublicKey, SecretKey, SeededCiphertext, ShrunkCiphertext,
    ciphertext_len, seeded_ciphertext_len,
};
use crate::net::Channel;
use crate::ring::Share;

/// Bits of c0 in a returned ciphertext.
pub const C0_BITS: u32 = 68;
/// Bits of c1 in a returned ciphertext.
pub const C1_BITS: u32 = 77;
/// Statistical security of the noise flooding: the decrypted noise is within 2^-40 per
/// coefficient of a distribution that does not depend on the server's matrix.
pub const STAT_BITS: u32 = 40;
/// Bound on the centered binomial noise of a fresh encryption (η = 21).
const FRESH_NOISE: u64 = 21;
/// Byte budget for the weight polynomials the server holds in NTT form at once.
const WEIGHT_BATCH_BYTES: usize = 256 << 20;

const STATUS_OK: u8 = 0;
const STATUS_REFUSED: u8 = 1;

/// Cost estimates for [`Tiling::choose`] under `params` (both parties compute the same).
fn tiling_cost(params: &HeParams) -> TilingCost {
    let (n, limbs) = (params.degree() as f64, params.moduli().len() as f64);
    TilingCost {
        input_bytes: seeded_ciphertext_len(params) as f64,
        output_bytes: n * C1_BITS as f64 / 8.0,
        kept_bytes: C0_BITS as f64 / 8.0,
        // one forward NTT per limb (≈ 0.5 ns per butterfly, N/2·log N of them), and a
        // 2-polynomial pointwise multiply-accumulate per limb (≈ 1.5 ns per coefficient)
        weight_s: limbs * 0.25e-9 * n * n.log2(),
        product_s: limbs * 2.0 * 1.5e-9 * n,
        bandwidth: 125e6,
    }
}

/// The tiling both parties use for `shape` under `params`.
pub fn tiling_for(params: &HeParams, shape: MatShape) -> Tiling {
    Tiling::choose(shape, params.degree(), &tiling_cost(params))
}

/// Flooding noise (bits) for a product whose B entries are at most 2^b_bits in absolute value:
/// every noise coefficient before flooding is a sum of at most (d-tiles·d_w·m_w) terms
/// (e + rounding)·b with |e| ≤ 21, plus rounding terms, so 2^flood ≥ 2^κ times that bound.
fn flood_bits(params: &HeParams, t: &Tiling, b_bits: u32) -> ProtoResult<u32> {
    let (_, tj, _) = t.tile_counts();
    let terms = (tj * t.d_w * t.m_w) as f64 * (FRESH_NOISE + 2) as f64;
    let bits = terms.log2().ceil() as u32 + b_bits + STAT_BITS;
    let room = params.log_q().floor() as u32 - 64 - 4;
    if bits > room || bits > MAX_FLOOD_BITS {
        return Err(ProtoError::Input(format!(
            "{} leaves {room} bits above the plaintext, but a {} product with {b_bits}-bit entries needs {bits} bits of flooding noise",
            params.name(),
            t.shape
        )));
    }
    Ok(bits)
}

/// The client's side: holds the secret key.
#[derive(Debug)]
pub struct HeClient {
    params: Arc<HeParams>,
    sk: SecretKey,
    backend: Arc<dyn Backend>,
}

/// The server's side: holds the client's public key (to re-randomize results).
#[derive(Debug)]
pub struct HeServer {
    params: Arc<HeParams>,
    pk: PublicKey,
    backend: Arc<dyn Backend>,
}

impl HeClient {
    /// Generates a key pair and sends the public key (once per session).
    #[instrument(skip_all, name = "he_setup", fields(params = params.name()))]
    pub async fn setup<R: CryptoRng + ?Sized>(
        ch: &mut Channel,
        params: Arc<HeParams>,
        backend: Arc<dyn Backend>,
        rng: &mut R,
    ) -> ProtoResult<HeClient> {
        let _s = ch.meter().scope("he-setup");
        let sk = SecretKey::generate(&params, backend.as_ref(), rng);
        ch.send(&sk.public_key(backend.as_ref(), rng).to_bytes()).await?;
        Ok(HeClient { params, sk, backend })
    }

    /// Shares of (A_c + A_s)·B for the client's A_c (n×d, row-major); returns the client's
    /// n×m share.
    #[instrument(skip_all, name = "he_product", fields(shape = %shape))]
    pub async fn product(&self, ch: &mut Channel, shape: MatShape, a: &[u64]) -> ProtoResult<Vec<u64>> {
        if a.len() != shape.n * shape.d {
            return Err(ProtoError::Input(format!(
                "A has {} entries, the shape {shape} needs {}",
                a.len(),
                shape.n * shape.d
            )));
        }
        let (p, be) = (&self.params, self.backend.as_ref());
        let t = tiling_for(p, shape);
        let (ti_n, tj_n, tk_n) = t.tile_counts();
        {
            let _s = ch.meter().scope("he-product/input");
            ch.send_u64s(&[shape.n as u64, shape.d as u64, shape.m as u64]).await?;
            let status = ch.recv().await?;
            match status.split_first() {
                Some((&STATUS_OK, [])) => {}
                Some((&STATUS_REFUSED, reason)) => {
                    return Err(ProtoError::Refused(String::from_utf8_lossy(reason).into()));
                }
                _ => return Err(ProtoError::Refused("unreadable status from the server".into())),
            }
            for ti in 0..ti_n {
                let cts: Vec<Vec<u8>> = compute(|| {
                    (0..tj_n)
                        .into_par_iter()
                        .map(|tj| {
                            let pt = Plaintext::new(p, t.encode_a(a, ti, tj))?;
                            Ok(self.sk.encrypt_seeded(&pt, be, &mut rand::make_rng::<ChaCha20Rng>()).to_bytes(p))
                        })
                        .collect::<ProtoResult<_>>()
                })?;
                for ct in cts {
                    ch.send(&ct).await?;
                }
            }
        }
        let _s = ch.meter().scope("he-product/output");
        let mut out = vec![0u64; shape.n * shape.m];
        for tk in 0..tk_n {
            for ti in 0..ti_n {
                let bytes = ch.recv().await?;
                let pos = t.output_positions(ti, tk);
                let keep: Vec<usize> = pos.iter().map(|&(c, _)| c).collect();
                let values = compute(|| {
                    let ct = ShrunkCiphertext::from_bytes(p, &bytes, keep.len(), C0_BITS, C1_BITS)?;
                    self.sk.decrypt_shrunk(&ct, &keep, be)
                })?;
                for (v, &(_, (i, k))) in values.into_iter().zip(&pos) {
                    out[i * shape.m + k] = v as u64;
                }
            }
        }
        Ok(out)
    }
}

impl HeServer {
    /// Receives the client's public key (once per session).
    #[instrument(skip_all, name = "he_setup", fields(params = params.name()))]
    pub async fn setup(ch: &mut Channel, params: Arc<HeParams>, backend: Arc<dyn Backend>) -> ProtoResult<HeServer> {
        let _s = ch.meter().scope("he-setup");
        let bytes = ch.recv().await?;
        let pk = PublicKey::from_bytes(&params, &bytes)?;
        Ok(HeServer { params, pk, backend })
    }

    /// The server's side of [`HeClient::product`]: B (d×m, row-major, entries read as signed
    /// and at most 2^b_bits in absolute value), and optionally its share A_s (n×d) of the
    /// encrypted matrix. Returns the server's n×m share (the mask R).
    #[instrument(skip_all, name = "he_product", fields(shape = %shape))]
    pub async fn product(
        &self,
        ch: &mut Channel,
        shape: MatShape,
        b: &[u64],
        b_bits: u32,
        a_share: Option<&[u64]>,
    ) -> ProtoResult<Vec<u64>> {
        let (p, be) = (&self.params, self.backend.as_ref());
        let t = tiling_for(p, shape);
        let (ti_n, tj_n, tk_n) = t.tile_counts();
        let _s = ch.meter().scope("he-product/input");
        let header = ch.recv_u64s("product shape", 3).await?;
        let flood = match check_server_inputs(p, &t, &header, b, b_bits, a_share) {
            Ok(bits) => bits,
            Err(e) => {
                let mut msg = vec![STATUS_REFUSED];
                msg.extend_from_slice(e.to_string().as_bytes());
                ch.send(&msg).await?;
                return Err(e);
            }
        };
        ch.send(&[STATUS_OK]).await?;
        let mut inputs = Vec::with_capacity(ti_n * tj_n);
        for _ in 0..ti_n * tj_n {
            let bytes = ch.recv_exact("input ciphertext", seeded_ciphertext_len(p)).await?;
            inputs.push(SeededCiphertext::from_bytes(p, &bytes)?);
        }
        drop(_s);
        let _s = ch.meter().scope("he-product/output");
        let inputs = compute(|| Inputs::prepare(p, be, &t, &inputs, a_share))?;
        let mut rng = rand::make_rng::<ChaCha20Rng>();
        let mut mask = vec![0u64; shape.n * shape.m];
        let per_k = tj_n * p.degree() * p.moduli().len() * 8;
        let batch = (WEIGHT_BATCH_BYTES / per_k).clamp(1, tk_n);
        for first in (0..tk_n).step_by(batch) {
            let ks = first..(first + batch).min(tk_n);
            let responses = compute(|| -> ProtoResult<Vec<Vec<u8>>> {
                let products = inputs.multiply(p, be, &t, b, ks.clone());
                let seeds: Vec<[u8; 32]> = (0..products.len()).map(|_| rng.random()).collect();
                products
                    .into_par_iter()
                    .zip(seeds)
                    .map(|((ti, tk, ct), seed)| {
                        respond(p, be, &self.pk, &t, ct, ti, tk, flood, &mut ChaCha20Rng::from_seed(seed))
                    })
                    .collect::<ProtoResult<Vec<_>>>()
                    .map(|rs| {
                        rs.into_iter()
                            .map(|(bytes, r)| {
                                for (v, (i, k)) in r {
                                    mask[i * shape.m + k] = v;
                                }
                                bytes
                            })
                            .collect()
                    })
            })?;
            for bytes in responses {
                ch.send(&bytes).await?;
            }
        }
        Ok(mask)
    }
}

/// Checks the server's own inputs and the client's announced shape; returns the flooding bits.
fn check_server_inputs(
    p: &HeParams,
    t: &Tiling,
    header: &[u64],
    b: &[u64],
    b_bits: u32,
    a_share: Option<&[u64]>,
) -> ProtoResult<u32> {
    let s = t.shape;
    if header != [s.n as u64, s.d as u64, s.m as u64] {
        return Err(ProtoError::Input(format!(
            "the client asked for a {}×{} · {}×{} product, the server expects {s}",
            header[0], header[1], header[1], header[2]
        )));
    }
    if b.len() != s.d * s.m {
        return Err(ProtoError::Input(format!("B has {} entries, the shape {s} needs {}", b.len(), s.d * s.m)));
    }
    if let Some(a) = a_share.filter(|a| a.len() != s.n * s.d) {
        return Err(ProtoError::Input(format!(
            "the server's share of A has {} entries, {s} needs {}",
            a.len(),
            s.n * s.d
        )));
    }
    if b_bits < 63 {
        if let Some(j) = b.iter().position(|&v| (v as i64).unsigned_abs() > 1 << b_bits) {
            return Err(ProtoError::Input(format!(
                "entry {j} of B ({}) exceeds the declared bound 2^{b_bits}",
                b[j] as i64
            )));
        }
    }
    flood_bits(p, t, b_bits.min(63))
}

/// The client's ciphertexts (with the server's share added), in NTT form, laid out for
/// [`Backend::mul_acc`]: for token tile ti, half h (c0, c1) and limb l, the J d-tiles in a row,
/// with their Shoup constants.
struct Inputs {
    /// rows[(ti·2 + h)·L + l] = (values, Shoup constants), each J·N long.
    rows: Vec<(Vec<u64>, Vec<u64>)>,
    tiles_i: usize,
}

impl Inputs {
    fn prepare(
        p: &HeParams,
        be: &dyn Backend,
        t: &Tiling,
        seeded: &[SeededCiphertext],
        a_share: Option<&[u64]>,
    ) -> ProtoResult<Inputs> {
        let (ti_n, tj_n, _) = t.tile_counts();
        let (n, limbs) = (p.degree(), p.moduli().len());
        let cts: Vec<Ciphertext> = seeded
            .par_iter()
            .enumerate()
            .map(|(idx, s)| {
                let mut ct = s.expand(p);
                if let Some(a) = a_share {
                    ct.add_plain_assign(p, &Plaintext::new(p, t.encode_a(a, idx / tj_n, idx % tj_n))?, be)?;
                }
                Ok(ct)
            })
            .collect::<ProtoResult<_>>()?;
        let rows = (0..ti_n * 2 * limbs)
            .into_par_iter()
            .map(|row| {
                let (ti, h, l) = (row / (2 * limbs), (row / limbs) % 2, row % limbs);
                let m = &p.moduli()[l];
                let mut values = Vec::with_capacity(tj_n * n);
                for tj in 0..tj_n {
                    let ct = &cts[ti * tj_n + tj];
                    values.extend_from_slice(if h == 0 { ct.c0.limb(p, l) } else { ct.c1.limb(p, l) });
                }
                let shoup = values.iter().map(|&v| m.shoup(v)).collect();
                (values, shoup)
            })
            .collect();
        Ok(Inputs { rows, tiles_i: ti_n })
    }

    /// The unmasked products for output tiles (ti, tk), tk in `ks`, in (tk, ti) order.
    fn multiply(
        &self,
        p: &HeParams,
        be: &dyn Backend,
        t: &Tiling,
        b: &[u64],
        ks: std::ops::Range<usize>,
    ) -> Vec<(usize, usize, Ciphertext)> {
        let (_, tj_n, _) = t.tile_counts();
        let (n, limbs) = (p.degree(), p.moduli().len());
        let count = ks.len();
        // weights[l] = [k in ks][tj][N], in NTT form mod p_l
        let weights: Vec<Vec<u64>> = (0..limbs)
            .map(|l| {
                let m = &p.moduli()[l];
                let mut w = vec![0u64; count * tj_n * n];
                w.par_chunks_mut(n).enumerate().for_each(|(idx, poly)| {
                    let (k, tj) = (ks.start + idx / tj_n, idx % tj_n);
                    for (dst, v) in poly.iter_mut().zip(t.encode_b(b, tj, k)) {
                        let v = v as i64;
                        *dst = if v >= 0 { m.reduce(v as u64) } else { m.neg(m.reduce(v.unsigned_abs())) };
                    }
                });
                be.ntt_forward(&p.tables()[l], &mut w);
                w
            })
            .collect();
        let mut out = Vec::with_capacity(count * self.tiles_i);
        let mut acc = vec![0u64; count * n];
        let mut halves: Vec<Vec<Vec<u64>>> = vec![vec![Vec::new(); 2]; self.tiles_i];
        for (ti, halves) in halves.iter_mut().enumerate() {
            for (h, half) in halves.iter_mut().enumerate() {
                // half = [k][l][N] for this (ti, h)
                *half = vec![0u64; count * limbs * n];
                for (l, w) in weights.iter().enumerate() {
                    let (x, xs) = &self.rows[(ti * 2 + h) * limbs + l];
                    be.mul_acc(&p.moduli()[l], n, x, w, Prepared::X(xs), &mut acc);
                    for k in 0..count {
                        half[(k * limbs + l) * n..][..n].copy_from_slice(&acc[k * n..][..n]);
                    }
                }
            }
        }
        for k in 0..count {
            for (ti, halves) in halves.iter().enumerate() {
                let poly = |h: usize| halves[h][k * limbs * n..(k + 1) * limbs * n].to_vec();
                out.push((ti, ks.start + k, Ciphertext::from_ntt_limbs(poly(0), poly(1))));
            }
        }
        out
    }
}

/// Masks, re-randomizes, floods and shrinks one output tile; returns its bytes and the mask
/// values with their (row, column).
#[allow(clippy::too_many_arguments)]
fn respond(
    p: &HeParams,
    be: &dyn Backend,
    pk: &PublicKey,
    t: &Tiling,
    mut ct: Ciphertext,
    ti: usize,
    tk: usize,
    flood: u32,
    rng: &mut ChaCha20Rng,
) -> ProtoResult<(Vec<u8>, Vec<(u64, (usize, usize))>)> {
    let pos = t.output_positions(ti, tk);
    let mut neg_mask = vec![0u64; p.degree()];
    let mut mask = Vec::with_capacity(pos.len());
    for &(c, ik) in &pos {
        let r: u64 = rng.random();
        neg_mask[c] = r.wrapping_neg();
        mask.push((r, ik));
    }
    ct.add_plain_assign(p, &Plaintext::new(p, neg_mask)?, be)?;
    ct.rerandomize(p, pk, be, rng)?;
    ct.flood(p, flood, be, rng)?;
    let keep: Vec<usize> = pos.iter().map(|&(c, _)| c).collect();
    Ok((ct.shrink(p, &keep, C0_BITS, C1_BITS, be)?.to_bytes(), mask))
}

/// Bytes of a full (unshrunk) result ciphertext, for comparison in reports.
pub fn unshrunk_output_len(params: &HeParams) -> usize {
    ciphertext_len(params, params.moduli().len())
}

/// The client's side of a linear layer Y = X·W: its share of X (n×d) in, its share of Y out.
pub async fn linear_client(he: &HeClient, ch: &mut Channel, shape: MatShape, x: &[Share]) -> ProtoResult<Vec<Share>> {
    let y = he.product(ch, shape, bytemuck::cast_slice(x)).await?;
    Ok(y.into_iter().map(Share::from_raw).collect())
}

/// The server's side of a linear layer: its share of X and the weights W (d×m, fixed-point ring
/// elements bounded by 2^w_bits), its share of Y out.
pub async fn linear_server(
    he: &HeServer,
    ch: &mut Channel,
    shape: MatShape,
    x: &[Share],
    w: &[u64],
    w_bits: u32,
) -> ProtoResult<Vec<Share>> {
    let r = he.product(ch, shape, w, w_bits, Some(bytemuck::cast_slice(x))).await?;
    Ok(r.into_iter().map(Share::from_raw).collect())
}

/// Local product of two plain matrices over Z_2^64.
fn local_product(shape: MatShape, a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut c = vec![0u64; shape.n * shape.m];
    c.par_chunks_mut(shape.m).enumerate().for_each(|(i, row)| {
        for j in 0..shape.d {
            let aij = a[i * shape.d + j];
            for (dst, &bjk) in row.iter_mut().zip(&b[j * shape.m..(j + 1) * shape.m]) {
                *dst = dst.wrapping_add(aij.wrapping_mul(bjk));
            }
        }
    });
    c
}

fn transpose(rows: usize, cols: usize, a: &[u64]) -> Vec<u64> {
    let mut t = vec![0u64; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

/// The client's side of Z = X·Y with both X (n×d) and Y (d×m) secret-shared:
/// X·Y = X·Y_s + X_c·Y_c + (Y_cᵀ·X_sᵀ)ᵀ, where the server's shares act as plaintexts.
pub async fn matmul_shared_client(
    he: &HeClient,
    ch: &mut Channel,
    shape: MatShape,
    x: &[Share],
    y: &[Share],
) -> ProtoResult<Vec<Share>> {
    let (x, y): (&[u64], &[u64]) = (bytemuck::cast_slice(x), bytemuck::cast_slice(y));
    let first = he.product(ch, shape, x).await?;
    let flipped = MatShape { n: shape.m, d: shape.d, m: shape.n };
    let second = he.product(ch, flipped, &transpose(shape.d, shape.m, y)).await?;
    let local = local_product(shape, x, y);
    let second = transpose(shape.m, shape.n, &second);
    Ok((0..shape.n * shape.m)
        .map(|i| Share::from_raw(first[i].wrapping_add(second[i]).wrapping_add(local[i])))
        .collect())
}

/// The server's side of [`matmul_shared_client`].
pub async fn matmul_shared_server(
    he: &HeServer,
    ch: &mut Channel,
    shape: MatShape,
    x: &[Share],
    y: &[Share],
) -> ProtoResult<Vec<Share>> {
    let (x, y): (&[u64], &[u64]) = (bytemuck::cast_slice(x), bytemuck::cast_slice(y));
    let first = he.product(ch, shape, y, 64, Some(x)).await?;
    let flipped = MatShape { n: shape.m, d: shape.d, m: shape.n };
    let second = he.product(ch, flipped, &transpose(shape.n, shape.d, x), 64, None).await?;
    let second = transpose(shape.m, shape.n, &second);
    Ok((0..shape.n * shape.m).map(|i| Share::from_raw(first[i].wrapping_add(second[i]))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilings_for_the_bench_shapes() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        for shape in [MatShape { n: 128, d: 768, m: 3072 }, MatShape { n: 128, d: 3072, m: 768 }] {
            let t = tiling_for(&p, shape);
            let (a, b, c) = t.tile_counts();
            let bytes = (a * b) as f64 * seeded_ciphertext_len(&p) as f64
                + (a * c) as f64 * (8192.0 * 77.0 / 8.0)
                + (shape.n * shape.m) as f64 * 68.0 / 8.0;
            println!(
                "{shape}: {t:?} tiles {a}×{b}×{c}, weights {}, products {}, {:.1} MB",
                b * c,
                a * b * c,
                bytes / 1e6
            );
        }
    }
}
