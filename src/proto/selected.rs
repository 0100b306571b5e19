//! Selected linear layers (the SecMoE paper's Protocol 1 as a protocol): R rows of a shared
//! matrix X (R×d), each times the d×m matrix of the expert its secret one-hot names, with the
//! client's bytes independent of the number of experts E.
//!
//! 1. [`send_choice`]: the client encrypts its XOR shares of the rows' one-hot vectors, 2^g rows
//!    per compact ciphertext ([`ChoiceLayout`]); the server separates the rows and keeps them,
//!    with its own share, for every matrix of the experts ([`Choice`]).
//! 2. [`selected_linear`]: the client announces the product and the layout, the server checks it
//!    against its own and answers; the client sends each row's input tiles (seeded, under the
//!    session's [`HeUse::Select`] keys), the server adds its share, selects the row's expert and
//!    multiplies ([`crate::he::selected`]), and returns one masked, flooded ciphertext per 2^pack
//!    output tiles. Each party's result is its share of X·W_e per row, at the sum of the
//!    operands' fractional bits.
//!
//! Privacy: the server receives only the client's ciphertexts (the one-hot shares and the
//! inputs); the messages' number and sizes depend on (R, d, m, E) alone. The client decrypts
//! x·W_e − R with R uniform and the noise flooded with [`MIN_STAT_BITS`] of margin beyond its
//! bound ([`crate::he::selected::noise_bits`]).

use std::sync::Arc;

use rand::rngs::ChaCha20Rng;
use rand::{RngExt, SeedableRng};
use tracing::instrument;

use super::linear::{
    HeServer, KeySet, MIN_STAT_BITS, WEIGHT_INTEGER_BITS, answer, await_answer, check_weights_shape, product_frac,
};
use super::session::keys_for;
use super::{HeKeys, HeUse, ProtoError, ProtoResult, Session};
use crate::backend::par_map;
use crate::he::selected::{
    ChoiceLayout, ProductForm, RowChoice, SelectKeys, SelectOrder, SelectedLayout, SelectedRow, check_experts,
    product_params, selected_batch,
};
use crate::he::tiling::MatShape;
use crate::he::{
    Ciphertext, HeParams, Plaintext, SeededCiphertext, ShrunkCiphertext, compressed_ciphertext_len_at,
    seeded_ciphertext_len,
};
use crate::net::Party;
use crate::ring::{Shares, Weights};

/// Rows whose input tiles the client encrypts (and the server decodes), and whose results the
/// client decrypts, in one parallel step: enough tasks for the workers, while the peer already
/// works on the rows before.
const ROWS_AT_ONCE: usize = 4;

/// The rows' encrypted one-hot vectors: on the server the client's compact ciphertexts, its
/// own XOR shares and the selectors expanded from them (kept for the next matrix within a
/// budget: [`RowChoice`]), on the client only the sizes.
#[derive(Debug)]
pub struct Choice {
    rows: usize,
    /// E and the rows per compact ciphertext.
    layout: ChoiceLayout,
    /// The session's selection set with the products' plaintext modulus ([`product_params`]).
    params: Arc<HeParams>,
    /// Server: each row's choice.
    choices: Vec<RowChoice>,
    /// Client: the order every product of these rows takes; `None`: the layout chooser's pick
    /// per product ([`SelectedLayout::choose`]).
    order: Option<SelectOrder>,
}

impl Choice {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of experts E.
    pub fn experts(&self) -> usize {
        self.layout.experts
    }

    /// The same rows with every product computed in `order` (the client's to decide: the
    /// server follows the order each product announces). The SecMoE paper's Protocol 1 as
    /// written selects the weights first.
    pub fn in_order(self, order: SelectOrder) -> Choice {
        Choice { order: Some(order), ..self }
    }
}

fn select_keys(he: &[(HeUse, HeKeys)]) -> ProtoResult<&HeKeys> {
    keys_for(he, HeUse::Select).ok_or_else(select_keys_missing)
}

fn select_keys_missing() -> ProtoError {
    ProtoError::Input(
        "selected products need the session's selection keys (Session::setup_he_for(HeUse::Select, HeParams::select(), KeySet::WithRelin or KeySet::WithSquare))".into(),
    )
}

/// Sends (client) or receives and keeps (server) the rows' one-hot vectors, given as each party's
/// XOR shares (R×E bits, row-major).
#[instrument(level = "debug", skip_all, fields(rows, experts))]
pub async fn send_choice(sess: &mut Session, bits: &[bool], rows: usize, experts: usize) -> ProtoResult<Choice> {
    if rows.checked_mul(experts) != Some(bits.len()) || experts == 0 {
        return Err(ProtoError::Input(format!("{} one-hot bits are not {rows} rows of {experts} experts", bits.len())));
    }
    let meter = sess.meter().clone();
    let _s = meter.scope("he-choice");
    let party = sess.party();
    let layout = ChoiceLayout::new(rows, experts)?;
    let seeds: Vec<[u8; 32]> = (0..layout.ciphertexts(rows)).map(|_| sess.rng.random()).collect();
    let be = sess.backend().clone();
    let ch = sess.ot.channel();
    let per = layout.rows_per_ciphertext();
    match (select_keys(&sess.he)?, party) {
        (HeKeys::Client(he), Party::Client) => {
            let p = product_params(he.params())?;
            let compact_params = layout.compact_params(&p)?;
            let sk = he.secret_key().for_params(&compact_params)?;
            let cts: Vec<Vec<u8>> = he.workers().compute(|| {
                par_map(seeds.len(), |c| {
                    let group = &bits[c * per * experts..((c + 1) * per).min(rows) * experts];
                    let pt = Plaintext::new(&compact_params, layout.encode(group)?)?;
                    let rng = &mut ChaCha20Rng::from_seed(seeds[c]);
                    Ok(sk.encrypt_seeded(&pt, be.as_ref(), rng)?.to_bytes(&compact_params))
                })
                .into_iter()
                .collect::<ProtoResult<_>>()
            })?;
            for ct in cts {
                ch.send(&ct).await?;
            }
            Ok(Choice { rows, layout, params: p, choices: Vec::new(), order: None })
        }
        (HeKeys::Server(he), Party::Server) => {
            let p = product_params(he.params())?;
            let compact_params = layout.compact_params(&p)?;
            let Some(galois) = he.galois_keys() else {
                return Err(ProtoError::Input("the selection keys lack Galois keys".into()));
            };
            let kept = RowChoice::kept_rows(&p, experts);
            let mut choices = Vec::with_capacity(rows);
            for c in 0..seeds.len() {
                let bytes = ch.recv_exact("one-hot ciphertext", seeded_ciphertext_len(&compact_params)).await?;
                let compact = SeededCiphertext::from_bytes(&compact_params, &bytes)?.expand(&compact_params);
                let separated = he.workers().compute(|| layout.separate(&p, galois, &compact, be.as_ref()))?;
                for (r, compact) in (c * per..rows).zip(separated) {
                    choices.push(RowChoice::new(compact, bits[r * experts..(r + 1) * experts].to_vec(), r < kept));
                }
            }
            Ok(Choice { rows, layout, params: p, choices, order: None })
        }
        _ => Err(ProtoError::Input("the session's selection keys are the other party's".into())),
    }
}

/// Each party's shares of X·W_(e_r) per row r: `x` its share of X (R×d, R = the choice's rows),
/// the server passes the E experts' d×m weights (in the session's fixed point; the flooding
/// covers the largest bound among them), the client `None`. Returns its R×m share mod
/// 2^`bits` (64, or fewer for a consumer that reads no more: the results then leave the server
/// narrowed, [`SelectedLayout::with_result_bits`]), with the fractional bits of X plus the
/// session's. Both parties pass the same `bits`.
#[instrument(level = "debug", skip_all, fields(rows = choice.rows, d = x.cols(), m))]
pub async fn selected_linear(
    sess: &mut Session,
    choice: &Choice,
    m: usize,
    x: &Shares,
    experts: Option<&[Weights<'_>]>,
    bits: u32,
) -> ProtoResult<Shares> {
    let frac = product_frac(x, (choice.rows, x.cols()), sess.format().frac_bits(), 64)?;
    if !(frac + 1..=64).contains(&bits) {
        return Err(ProtoError::Input(format!("selected products mod 2^{bits} cannot hold {frac} fractional bits")));
    }
    let y = selected_product(sess, choice, (x.cols(), m, bits), x.as_slice(), experts).await?;
    Ok(Shares::new((choice.rows, m), y, bits, frac)?)
}

async fn selected_product(
    sess: &mut Session,
    choice: &Choice,
    (d, m, bits): (usize, usize, u32),
    x: &[u64],
    experts: Option<&[Weights<'_>]>,
) -> ProtoResult<Vec<u64>> {
    let rows = choice.rows;
    if rows.checked_mul(d) != Some(x.len()) {
        return Err(ProtoError::Input(format!("{} input values are not {rows} rows of d = {d}", x.len())));
    }
    let meter = sess.meter().clone();
    let party = sess.party();
    // the client's public assumption on the weights, for how far it compresses its inputs
    let weight_bits = sess.format().frac_bits() + WEIGHT_INTEGER_BITS;
    let seeds: Vec<[u8; 32]> = (0..rows).map(|_| sess.rng.random()).collect();
    let be = sess.backend().clone();
    let ch = sess.ot.channel();
    match (select_keys(&sess.he)?, party, experts) {
        (HeKeys::Client(he), Party::Client, None) => {
            let p = choice.params.clone();
            let form = match he.key_set() {
                KeySet::WithRelin => ProductForm::Relinearized,
                KeySet::WithSquare => ProductForm::Tensored,
                KeySet::Linear => return Err(select_keys_missing()),
            };
            let network = (&he.network(), he.server_threads());
            let layout = SelectedLayout::choose(&p, (d, m), choice.layout, (form, weight_bits), network, choice.order)?
                .with_result_bits(bits)?;
            let sk = he.secret_key().for_params(&p)?;
            let t = layout.tiling;
            let _s = meter.scope("he-selected/input");
            let header = [
                rows,
                d,
                m,
                choice.layout.experts,
                t.d_w,
                t.m_w,
                t.pack as usize,
                layout.choice.levels() as usize,
                form.parts(),
                bits as usize,
                layout.dropped as usize,
                layout.order.code() as usize,
            ];
            ch.send_u64s(&header.map(|v| v as u64)).await?;
            await_answer(ch).await?;
            let level = ch.recv_u64s("selected product level", 1).await?[0];
            let layout =
                usize::try_from(level).ok().and_then(|level| layout.with_level(&p, level).ok()).ok_or_else(|| {
                    ProtoError::BadRequest(format!("the server chose selected products at {level} limbs"))
                })?;
            let j_n = layout.inputs();
            // each row's tiles encrypted from seeds drawn from the row's own
            let tile_seeds: Vec<[u8; 32]> = seeds
                .iter()
                .flat_map(|&seed| {
                    let mut rng = ChaCha20Rng::from_seed(seed);
                    (0..j_n).map(move |_| rng.random())
                })
                .collect();
            for first in (0..rows).step_by(ROWS_AT_ONCE) {
                let count = ROWS_AT_ONCE.min(rows - first) * j_n;
                let cts: Vec<Vec<u8>> = he.workers().compute(|| {
                    par_map(count, |i| {
                        let (r, j) = (first + i / j_n, i % j_n);
                        let pt = Plaintext::new(&p, t.encode_a(&x[r * d..(r + 1) * d], 0, j))?;
                        let mut rng = ChaCha20Rng::from_seed(tile_seeds[r * j_n + j]);
                        let ct = sk.encrypt_seeded_at(&pt, layout.level, be.as_ref(), &mut rng)?;
                        Ok(ct.to_compressed(&p, layout.dropped, be.as_ref())?)
                    })
                    .into_iter()
                    .collect::<ProtoResult<_>>()
                })?;
                for ct in cts {
                    ch.send(&ct).await?;
                }
            }
            drop(_s);
            let _s = meter.scope("he-selected/output");
            let mut y = vec![0u64; rows * m];
            let returned = layout.returned();
            for first in (0..rows).step_by(ROWS_AT_ONCE) {
                let count = ROWS_AT_ONCE.min(rows - first) * returned;
                let mut received = Vec::with_capacity(count);
                for _ in 0..count {
                    received.push(ch.recv().await?);
                }
                let decrypted = he.workers().compute(|| {
                    par_map(count, |i| {
                        let keep: Vec<usize> =
                            layout.returned_positions(i % returned).iter().map(|&(c, _)| c).collect();
                        let shape = layout.response_shape(&p, keep.len());
                        sk.decrypt_shrunk(&ShrunkCiphertext::from_bytes(&p, &received[i], shape)?, &keep, be.as_ref())
                    })
                });
                for (i, values) in decrypted.into_iter().enumerate() {
                    let r = first + i / returned;
                    for (v, (_, col)) in values?.into_iter().zip(layout.returned_positions(i % returned)) {
                        y[r * m + col] = layout.decode(v);
                    }
                }
            }
            Ok(y)
        }
        (HeKeys::Server(he), Party::Server, Some(experts)) => {
            if he.relin_key().is_none() && he.square_key().is_none() {
                return Err(select_keys_missing());
            }
            let server = ServerSide { he, rows, d, m, bits, choice };
            let ch_meter = meter.scope("he-selected/input");
            let header = ch.recv_u64s("selected product header", 12).await?;
            let checked = server.check_request(&header).and_then(|layout| server.check(&layout, experts));
            let (layout, flood, kappa) = answer(ch, checked).await?;
            let (_, j_tiles, k_tiles) = layout.tiling.tile_counts();
            tracing::debug!(
                d_w = layout.tiling.d_w,
                m_w = layout.tiling.m_w,
                pack = layout.tiling.pack,
                inputs = j_tiles,
                outputs = k_tiles,
                order = ?layout.order,
                level = layout.level,
                out_level = layout.out_level,
                dropped = layout.dropped,
                flood,
                kappa,
                "selected product layout"
            );
            ch.send_u64s(&[layout.level as u64]).await?;
            let weights: Vec<&[u64]> = experts.iter().map(Weights::as_slice).collect();
            let p = choice.params.clone();
            let j_n = layout.inputs();
            let mut inputs = Vec::with_capacity(rows * j_n);
            let len = compressed_ciphertext_len_at(&p, layout.level, layout.dropped);
            for first in (0..rows).step_by(ROWS_AT_ONCE) {
                let count = ROWS_AT_ONCE.min(rows - first) * j_n;
                let mut received = Vec::with_capacity(count);
                for _ in 0..count {
                    received.push(ch.recv_exact("input ciphertext", len).await?);
                }
                let decoded = he.workers().compute(|| {
                    par_map(count, |i| {
                        SeededCiphertext::from_compressed_at(&p, &received[i], layout.level, be.as_ref())
                    })
                });
                for decoded in decoded {
                    let (ct, dropped) = decoded?;
                    if dropped != layout.dropped {
                        return Err(ProtoError::BadRequest(format!(
                            "an input ciphertext dropped {dropped} bits of c0, the request announced {}",
                            layout.dropped
                        )));
                    }
                    inputs.push(ct);
                }
            }
            drop(ch_meter);
            let _s = meter.scope("he-selected/output");
            he.add_exposure(rows * m, kappa);
            let Some(galois) = he.galois_keys() else {
                return Err(ProtoError::Input("the selection keys lack Galois keys".into()));
            };
            let keys = SelectKeys { pk: he.public_key(), galois, relin: he.relin_key(), square: he.square_key() };
            let t = layout.tiling;
            let mut mask = vec![0u64; rows * m];
            for range in layout.row_batches(&p, &choice.choices) {
                let responses = he.workers().compute(|| -> ProtoResult<_> {
                    // the client's tiles with this party's share added, row by row
                    let tiles = par_map(range.len() * j_n, |i| {
                        let (r, j) = (range.start + i / j_n, i % j_n);
                        let mut ct = inputs[r * j_n + j].expand(&p);
                        let own = Plaintext::new(&p, t.encode_a(&x[r * d..(r + 1) * d], 0, j))?;
                        ct.add_plain_assign(&p, &own, be.as_ref())?;
                        Ok(ct)
                    });
                    let mut tiles = tiles.into_iter();
                    let xs: Vec<Vec<Ciphertext>> = range
                        .clone()
                        .map(|_| tiles.by_ref().take(j_n).collect::<ProtoResult<_>>())
                        .collect::<ProtoResult<_>>()?;
                    let batch: Vec<SelectedRow<'_>> =
                        range.clone().zip(&xs).map(|(r, x)| SelectedRow { x, choice: &choice.choices[r] }).collect();
                    Ok(selected_batch(&p, keys, &layout, &batch, &weights, flood, &seeds[range.clone()], be.as_ref())?)
                })?;
                for (r, row) in range.zip(responses) {
                    for (bytes, values) in row {
                        for (v, col) in values {
                            mask[r * m + col] = v & crate::ring::mask(bits);
                        }
                        ch.send(&bytes).await?;
                    }
                }
            }
            Ok(mask)
        }
        (_, Party::Server, None) => Err(ProtoError::Input("the server must pass the experts' matrices".into())),
        (_, Party::Client, Some(_)) => Err(ProtoError::Input("the client holds no weights".into())),
        _ => Err(ProtoError::Input("the session's selection keys are the other party's".into())),
    }
}

/// The server's checks of its own inputs and of the client's request.
struct ServerSide<'a> {
    he: &'a HeServer,
    rows: usize,
    d: usize,
    m: usize,
    bits: u32,
    choice: &'a Choice,
}

impl ServerSide<'_> {
    /// `layout` at the lowest level that holds these weights' products, the flooding bits
    /// there and their margin κ.
    fn check(&self, layout: &SelectedLayout, experts: &[Weights<'_>]) -> ProtoResult<(SelectedLayout, u32, u32)> {
        let p = &self.choice.params;
        if self.choice.choices.len() != self.rows {
            return Err(ProtoError::Input(format!(
                "the choice holds {} rows, the product {}",
                self.choice.choices.len(),
                self.rows
            )));
        }
        let shape = MatShape { n: self.rows, d: self.d, m: self.m };
        experts.iter().try_for_each(|w| check_weights_shape(w, shape))?;
        let weights: Vec<&[u64]> = experts.iter().map(Weights::as_slice).collect();
        check_experts(layout, &weights).map_err(|e| ProtoError::Input(e.to_string()))?;
        // the flooding covers the largest bound among the experts
        let bits = experts.iter().map(Weights::bits).max().unwrap_or(1);
        let limit = 1u64 << bits.min(63);
        if let Some(bad) = weights.iter().position(|w| w.iter().any(|&v| (v as i64).unsigned_abs() > limit)) {
            tracing::warn!(expert = bad, bits, "a weight exceeds its declared bound");
            return Err(ProtoError::Input(format!("a weight exceeds the declared bound 2^{bits}")));
        }
        // the lowest level whose modulus holds the noise and its flooding with κ to spare, and
        // the lowest the results can leave from with the same margin
        let (layout, room, kappa) = layout.at_lowest_levels(p, bits)?;
        if kappa < MIN_STAT_BITS {
            return Err(ProtoError::Input(format!(
                "{} leaves {room} bits above the plaintext for flooding noise, {kappa} beyond the noise bound of a selected product with {bits}-bit weights (at least {MIN_STAT_BITS} needed)",
                p.name()
            )));
        }
        Ok((layout, room, kappa))
    }

    /// The layout the client announced, if it names this product and a layout this server runs.
    fn check_request(&self, header: &[u64]) -> ProtoResult<SelectedLayout> {
        let bad = |why: String| {
            ProtoError::BadRequest(format!(
                "the client's selected product {header:?} (rows, d, m, E, d_w, m_w, pack, ℓ, parts, result bits, dropped bits, order): {why}"
            ))
        };
        let ours = [self.rows, self.d, self.m, self.choice.layout.experts];
        if header[..4].iter().zip(ours).any(|(&h, o)| h != o as u64) {
            return Err(bad(format!("the server runs {ours:?}")));
        }
        if header[9] != u64::from(self.bits) {
            return Err(bad(format!("the server's results are shared mod 2^{}", self.bits)));
        }
        let form = match (header[8], self.he.relin_key(), self.he.square_key()) {
            (2, Some(_), _) => ProductForm::Relinearized,
            (3, _, Some(_)) => ProductForm::Tensored,
            (2, None, _) => {
                return Err(bad("relinearized products, but this session has no relinearization key".into()));
            }
            (3, _, None) => return Err(bad("tensored products, but this session has no square key".into())),
            (parts, _, _) => return Err(bad(format!("results of {parts} parts (2 or 3)"))),
        };
        let pack = u32::try_from(header[6]).map_err(|_| bad("no such packing".into()))?;
        let dropped = u32::try_from(header[10]).map_err(|_| bad("no such compression".into()))?;
        let order = SelectOrder::from_code(header[11]).ok_or_else(|| bad(format!("no order {}", header[11])))?;
        let layout = SelectedLayout::with_pack(&self.choice.params, self.d, self.m, self.choice.layout, pack, form)
            .and_then(|l| l.with_order(order))
            .and_then(|l| l.with_result_bits(self.bits))
            .and_then(|l| l.with_dropped(&self.choice.params, dropped))
            .map_err(|e| bad(e.to_string()))?;
        let t = layout.tiling;
        let expected = [t.d_w, t.m_w, pack as usize, layout.choice.levels() as usize];
        if expected.iter().zip(&header[4..]).any(|(&o, &h)| h != o as u64) {
            return Err(bad(format!(
                "the layout packing 2^{pack} has d_w = {}, m_w = {}, ℓ = {}",
                t.d_w,
                t.m_w,
                layout.choice.levels()
            )));
        }
        Ok(layout)
    }
}
