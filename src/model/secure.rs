//! The model in 2PC: the client's token ids and the server's weights in, the output (logits or
//! hidden states) to the client alone.
//!
//! Per forward, after the statement exchange ([`crate::proto::agree`]):
//! 1. *Embedding*: the client's one-hot ids (n×V, its share; the server's is 0) times the
//!    server's table through the HE linear layer — an oblivious lookup: the server sees
//!    ciphertexts, the client a masked product. Or, with [`Embedding::Public`] (BumbleBee's and
//!    BOLT's assumption, stated by both parties), the client's own rows of a public table.
//! 2. *Blocks*: RMSNorm → q|k|v in one HE product (+ the server's biases on its share) →
//!    [q/k RMSNorm] (or multi-head latent attention's maps: x's in one HE product, the RMSNorms
//!    of q's rank and of the latent, two more products, each head's key and value put together
//!    locally) → rotary embedding and the score scale as public constants on each share,
//!    one truncation → per head Q·Kᵀ and P·V as products of two shared matrices over Z_2^(2f+14)
//!    ([`crate::proto::linear::matmul_shared`]; scores and outputs below 2^12) → softmax with the public causal mask
//!    ([`crate::proto::softmax::softmax_masked`]), T5's position bias added to the server's
//!    share → the output map → residual; RMSNorm → dense expert or MoE layer → residual.
//! 3. *Head*: final RMSNorm, the LM head as an HE product; the server sends its shares of the
//!    output to the client.
//!
//! Everything the server receives is a ciphertext, an OT message or a masked share, in a
//! sequence fixed by the public config and n; the routing, the token ids and every activation
//! stay hidden (the MoE layer's argument covers the routing).

use super::config::{Ffn, LatentAttention, ModelConfig, Positions, Scales, relative_bucket};
use super::encode::{Block, BlockFfn, BlockQkv, CheckedWeights, Encoder};
use super::reference::{columns, latent_keys_values, rope_table, rotary_pair};
use super::weights::WeightSource;
use super::{ModelError, ModelResult};
use crate::he::HeParams;
use crate::he::tiling::MatShape;
use crate::moe::{Method, dense_expert, moe_layer};
use crate::proto::agree::{Statement, exchange};
use crate::proto::arith::{truncate, truncate_extend};
use crate::proto::layernorm::{Affine, NormRange, rmsnorm};
use crate::proto::linear::{KeySet, linear, matmul_shared};
use crate::proto::softmax::softmax_masked;
use crate::proto::{HeUse, ProtoError, Session};
use crate::ring::{RingError, Shares, Weights};

/// Longest prompt (the softmax rows of attention).
pub const MAX_TOKENS: usize = 1024;

/// How the client's token ids become the first hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Embedding {
    /// The table is the server's secret: the client's one-hot ids times the table in one HE
    /// product, an oblivious lookup (the server sees ciphertexts, the client a masked product).
    #[default]
    Private,
    /// The table is public, as BumbleBee and BOLT assume: the client, which must hold it, looks
    /// its rows up itself and the server's share is zero. Saves the lookup's product; the
    /// table is then no secret of the server's.
    Public,
}

/// How a forward is evaluated; both parties state it and must agree.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Plan {
    /// How MoE layers are evaluated.
    pub method: Method,
    /// How the tokens are embedded.
    pub embedding: Embedding,
    /// The norms' input range (|x| < 2^B for the residual stream and the q/k norms).
    pub norms: NormRange,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "method={}", self.method)?;
        if self.embedding == Embedding::Public {
            f.write_str(" embedding=public")?;
        }
        if self.norms != NormRange::DEFAULT {
            write!(f, " norms=2^{}", self.norms.bits())?;
        }
        Ok(())
    }
}

/// The client's input to a forward: its token ids, for [`Embedding::Public`] the public
/// embedding table (vocab×d, row-major, as the checkpoint stores it), and whether only the
/// last position's output is wanted.
#[derive(Debug, Clone, Copy)]
pub struct Prompt<'a> {
    /// The token ids.
    pub ids: &'a [u32],
    /// The public table, for [`Embedding::Public`] only.
    pub table: Option<&'a [f32]>,
    /// Only the last position's output (generation): the final norm and the LM head run on
    /// one row instead of n — the head's product is the model's largest. The server is told.
    pub last_only: bool,
}

impl<'a> Prompt<'a> {
    /// Token ids, the embedding private, every position's output.
    pub fn new(ids: &'a [u32]) -> Prompt<'a> {
        Prompt { ids, table: None, last_only: false }
    }

    /// With the public embedding table.
    pub fn with_table(self, table: Option<&'a [f32]>) -> Prompt<'a> {
        Prompt { table, ..self }
    }

    /// Only the last position's output, or every position's.
    pub fn last_only(self, last_only: bool) -> Prompt<'a> {
        Prompt { last_only, ..self }
    }
}

/// Told as a forward advances (a progress bar, logs); `()` ignores it.
pub trait Progress: Sync {
    /// Block `done` of `layers` is finished (then the head runs).
    fn layer_done(&self, done: usize, layers: usize);
}

impl Progress for () {
    fn layer_done(&self, _: usize, _: usize) {}
}

/// The client's result of one forward.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// A row of `width` values per position asked for (all n, or the last one).
    pub values: Vec<f64>,
    /// Values per position ([`ModelConfig::output_width`]).
    pub width: usize,
}

impl Output {
    /// The row of position `p`.
    pub fn row(&self, p: usize) -> &[f64] {
        &self.values[p * self.width..(p + 1) * self.width]
    }

    /// The index of the largest value of each position's row (the first among equals).
    pub fn argmax(&self) -> Vec<usize> {
        self.values
            .chunks_exact(self.width)
            .map(|r| r.iter().enumerate().fold(0, |b, (i, v)| if *v > r[b] { i } else { b }))
            .collect()
    }
}

/// This party's shares of the keys (after the rotary embedding) and values of every position
/// processed so far, per layer: what a causal model's next forward attends to, so that greedy
/// generation computes one new token per step. Both parties keep one, in step.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<(Vec<u64>, Vec<u64>)>,
    len: usize,
}

impl KvCache {
    /// An empty cache (a new conversation).
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Sets up the session's HE keys for a model run by `plan` (both parties once per session, with
/// the same plan): the linear set (a special prime, so results are packed before they are
/// sent) for the products with the server's weights, n8192 — whose noise room lets attention's
/// Q·Kᵀ and P·V flood over the server's 64-bit shares — for the products of two shared
/// matrices, and for the selected-weights methods the selection set with the keys the method needs
/// ([`Method::selection_keys`]).
pub async fn setup_he(sess: &mut Session, plan: Plan) -> ModelResult<()> {
    let select = plan.method.selection_keys();
    let ours = format!("he-keys linear shared{}", select.map(|k| format!(" select({k:?})")).unwrap_or_default());
    let theirs = exchange(sess, &Ok(ours.clone())).await?;
    if theirs != ours {
        return Err(ModelError::Mismatch { ours, theirs });
    }
    let linear = HeParams::linear().map_err(ProtoError::from)?;
    sess.setup_he_for(HeUse::Linear, linear, KeySet::Linear).await?;
    let shared = HeParams::n8192().map_err(ProtoError::from)?;
    sess.setup_he_for(HeUse::Shared, shared, KeySet::Linear).await?;
    if let Some(keys) = select {
        let select = HeParams::select().map_err(ProtoError::from)?;
        sess.setup_he_for(HeUse::Select, select, keys).await?;
    }
    Ok(())
}

fn prefix(cfg: &ModelConfig, plan: Plan) -> String {
    format!("model {} {plan}", cfg.canonical())
}

/// The client: one private forward of `ids`; only it learns the output.
pub async fn infer(
    sess: &mut Session,
    cfg: &ModelConfig,
    plan: Plan,
    prompt: Prompt<'_>,
    progress: &dyn Progress,
) -> ModelResult<Output> {
    infer_cached(sess, cfg, plan, prompt, &mut KvCache::new(), progress).await
}

/// The client: a forward of the new tokens `ids` after the positions in `cache` (causal
/// models; an empty cache starts a new sequence), which it extends; the output holds the new
/// positions' rows. The server keeps its cache in step ([`serve`]).
#[tracing::instrument(level = "info", skip_all, fields(n = prompt.ids.len(), cached = cache.len()))]
pub async fn infer_cached(
    sess: &mut Session,
    cfg: &ModelConfig,
    plan: Plan,
    prompt: Prompt<'_>,
    cache: &mut KvCache,
    progress: &dyn Progress,
) -> ModelResult<Output> {
    let ids = prompt.ids;
    let (n, past) = (ids.len(), cache.len());
    let local = (|| {
        cfg.validate()?;
        if sess.is_server() {
            return Err(ModelError::Input("the server serves (model::serve); it has no prompt".into()));
        }
        if n == 0 || past + n > MAX_TOKENS {
            return Err(ModelError::Input(format!("{past} cached and {n} new tokens (1..={MAX_TOKENS} in all)")));
        }
        if past > 0 && !cfg.causal {
            return Err(ModelError::Input("a bidirectional (encoder) model cannot extend a cached sequence".into()));
        }
        if let Some(id) = ids.iter().find(|&&id| id as usize >= cfg.vocab) {
            return Err(ModelError::Input(format!("token id {id} is not below the vocabulary size {}", cfg.vocab)));
        }
        match (plan.embedding, prompt.table) {
            (Embedding::Public, Some(t)) if t.len() == cfg.vocab * cfg.d_model => {}
            (Embedding::Public, t) => {
                return Err(ModelError::Input(format!(
                    "the public embedding needs the table ({}×{} values, given {})",
                    cfg.vocab,
                    cfg.d_model,
                    t.map_or(0, |t| t.len())
                )));
            }
            (Embedding::Private, Some(_)) => {
                return Err(ModelError::Input("an embedding table was given but the embedding is private".into()));
            }
            (Embedding::Private, None) => {}
        }
        for ffn in &cfg.ffn {
            if let Ffn::Moe(moe) = ffn {
                plan.method.validate(moe, n)?;
            }
        }
        Ok(())
    })();
    let statement: Statement = local
        .as_ref()
        .map(|_| format!("{} cached={past} {}", prefix(cfg, plan), request(n, prompt.last_only)))
        .map_err(|e| e.to_string());
    let theirs = exchange(sess, &statement).await;
    local?;
    let theirs = peer(theirs)?;
    if theirs != prefix(cfg, plan) {
        return Err(ModelError::Mismatch { ours: prefix(cfg, plan), theirs });
    }
    let shares = Box::pin(forward(sess, cfg, plan, n, prompt.last_only, Side::Client(prompt), cache, progress)).await?;
    let theirs =
        sess.channel().recv_u64s("the server's output shares", shares.len()).await.map_err(ProtoError::from)?;
    let format = sess.format();
    let values = shares.as_slice().iter().zip(&theirs).map(|(a, b)| format.decode(a.wrapping_add(*b))).collect();
    Ok(Output { values, width: cfg.output_width() })
}

/// The client: tells the server it has no more requests.
pub async fn finish(sess: &mut Session) -> ModelResult<()> {
    peer(exchange(sess, &Ok("done".into())).await)?;
    Ok(())
}

/// The server: serves the client's forwards with its weights, checked for the session's fixed
/// point, until the client is done; returns how many it served. It keeps its side of the
/// key/value cache for forwards that extend the previous ones. It learns each forward's
/// length, nothing else. It refuses the first request when the weights were checked for
/// another format than the one the handshake agreed on.
#[tracing::instrument(level = "info", skip_all)]
pub async fn serve(
    sess: &mut Session,
    model: &CheckedWeights<'_>,
    plan: Plan,
    progress: &dyn Progress,
) -> ModelResult<usize> {
    let (cfg, weights) = (model.config(), model.source());
    let mut served = 0;
    let mut cache = KvCache::new();
    let mut ready = Some(if !sess.is_server() {
        Err(ModelError::Input("the client cannot serve".into()))
    } else if model.format() != sess.format() {
        Err(ModelError::Input(format!(
            "the weights were checked for {} fractional bits, the session agreed on {}",
            model.format().frac_bits(),
            sess.format().frac_bits()
        )))
    } else {
        Ok(())
    });
    loop {
        let local = ready.take().unwrap_or(Ok(()));
        let statement: Statement = local.as_ref().map(|_| prefix(cfg, plan)).map_err(|e| e.to_string());
        let theirs = exchange(sess, &statement).await;
        local?;
        let theirs = peer(theirs)?;
        if theirs == "done" {
            return Ok(served);
        }
        let (past, n, last_only) = theirs
            .strip_prefix(&prefix(cfg, plan))
            .and_then(|t| t.strip_prefix(" cached="))
            .and_then(|t| t.split_once(' '))
            .and_then(|(p, r)| {
                let (n, last) = parse_request(r)?;
                Some((p.parse::<usize>().ok()?, n, last))
            })
            .filter(|&(p, n, _)| n > 0 && p + n <= MAX_TOKENS && (p == 0 || (p == cache.len() && cfg.causal)))
            .ok_or_else(|| ModelError::Mismatch {
                ours: format!("{} cached={}", prefix(cfg, plan), cache.len()),
                theirs: theirs.clone(),
            })?;
        if past == 0 {
            cache = KvCache::new();
        }
        let shares =
            Box::pin(forward(sess, cfg, plan, n, last_only, Side::Server(weights), &mut cache, progress)).await?;
        sess.channel().send_u64s(shares.as_slice()).await.map_err(ProtoError::from)?;
        served += 1;
    }
}

/// A forward's request in the client's statement: its new tokens, and whether only the last
/// position's output is wanted.
fn request(n: usize, last_only: bool) -> String {
    format!("tokens={n}{}", if last_only { " outputs=last" } else { "" })
}

fn parse_request(r: &str) -> Option<(usize, bool)> {
    let r = r.strip_prefix("tokens=")?;
    let (n, last_only) = match r.split_once(' ') {
        Some((n, "outputs=last")) => (n, true),
        Some(_) => return None,
        None => (r, false),
    };
    Some((n.parse().ok()?, last_only))
}

fn peer(r: Result<String, ProtoError>) -> ModelResult<String> {
    match r {
        Err(ProtoError::Refused(reason)) => Err(ModelError::PeerRefused(reason)),
        other => Ok(other?),
    }
}

/// The server's `values` as the d×m weights of `shape`.
fn weights(shape: MatShape, values: Option<&[u64]>) -> Result<Option<Weights<'_>>, RingError> {
    values.map(|v| Weights::new((shape.d, shape.m), v)).transpose()
}

/// What a party brings to a forward.
enum Side<'a> {
    /// The client's prompt.
    Client(Prompt<'a>),
    /// The server's weights.
    Server(&'a dyn WeightSource),
}

/// One forward on both sides: this party's shares of the output.
#[allow(clippy::too_many_arguments)]
async fn forward(
    sess: &mut Session,
    cfg: &ModelConfig,
    plan: Plan,
    n: usize,
    last_only: bool,
    side: Side<'_>,
    cache: &mut KvCache,
    progress: &dyn Progress,
) -> ModelResult<Shares> {
    let (prompt, source) = match side {
        Side::Client(prompt) => (Some(prompt), None),
        Side::Server(weights) => (None, Some(weights)),
    };
    let meter = sess.meter().clone();
    let format = sess.format();
    let (d, v) = (cfg.d_model, cfg.vocab);
    let enc = source.map(|source| Encoder { format, source, scales: cfg.scales });
    // both parties stated the plan
    sess.set_norm_range(plan.norms);
    let mut h = {
        let _s = meter.scope("embed");
        let ids = prompt.map(|p| p.ids).unwrap_or_default();
        match (plan.embedding, prompt.and_then(|p| p.table)) {
            (Embedding::Private, _) => {
                // the client's one-hot rows (integers), the server's share zero
                let mut onehot = vec![0u64; n * v];
                for (row, &id) in ids.iter().enumerate() {
                    onehot[row * v + id as usize] = 1;
                }
                let onehot = Shares::matrix((n, v), onehot, 0)?;
                let table = enc.as_ref().map(|e| e.embedding()).transpose()?;
                {
                    let shape = MatShape { n, d: v, m: d };
                    linear(sess, shape, &onehot, weights(shape, table.as_deref())?).await?.into_vec()
                }
            }
            // the client's rows, the server's share zero: no message
            (Embedding::Public, Some(table)) => {
                let mut rows: Vec<f32> =
                    ids.iter().flat_map(|&id| table[id as usize * d..][..d].iter().copied()).collect();
                Scales::fold(cfg.scales.embedding, &mut rows);
                format.encode_named("embedding (public)", &rows, None)?
            }
            (Embedding::Public, None) => vec![0u64; n * d],
        }
    };
    let bias = enc.as_ref().map(|e| e.position_bias()).transpose()?.flatten();
    for i in 0..cfg.layers() {
        let block = enc.as_ref().map(|e| e.block(cfg, i)).transpose()?;
        let normed = {
            let _s = meter.scope("norm");
            norm(sess, cfg, &h, d, block.as_ref().map(|b| b.attn_norm.as_slice())).await?
        };
        let o = {
            let _s = meter.scope("attention");
            if cache.layers.len() <= i {
                cache.layers.push((Vec::new(), Vec::new()));
            }
            let past = cache.len;
            let layer = (i, &mut cache.layers[i]);
            attention(sess, cfg, n, past, &normed, block.as_ref(), bias.as_deref(), layer).await?
        };
        h.iter_mut().zip(o).for_each(|(h, o)| *h = h.wrapping_add(o));
        let normed = {
            let _s = meter.scope("norm");
            norm(sess, cfg, &h, d, block.as_ref().map(|b| b.ffn_norm.as_slice())).await?
        };
        let _s = meter.scope("ffn");
        let x = sess.shares((n, d), normed)?;
        let ffn = block.map(|b| b.ffn);
        let y = match (cfg.ffn[i], ffn) {
            (Ffn::Dense { d_ff, kind }, Some(BlockFfn::Dense(w))) => {
                dense_expert(sess, kind, d_ff, &x, Some(&w)).await?
            }
            (Ffn::Dense { d_ff, kind }, None) => dense_expert(sess, kind, d_ff, &x, None).await?,
            (Ffn::Moe(m), Some(BlockFfn::Moe(w))) => moe_layer(sess, &m, plan.method, &x, Some(&w)).await?.y,
            (Ffn::Moe(m), None) => moe_layer(sess, &m, plan.method, &x, None).await?.y,
            (_, Some(_)) => return Err(ModelError::Weights(format!("layer {i}: weights of another block kind"))),
        };
        h.iter_mut().zip(y.as_slice()).for_each(|(h, y)| *h = h.wrapping_add(*y));
        progress.layer_done(i + 1, cfg.layers());
    }
    cache.len += n;
    let _s = meter.scope("head");
    // each party keeps its shares of the rows whose outputs are wanted
    let (rows, h) = if last_only { (1, h.split_off((n - 1) * d)) } else { (n, h) };
    let gamma = enc.as_ref().map(|e| e.final_norm()).transpose()?;
    let x = norm(sess, cfg, &h, d, gamma.as_deref()).await?;
    let x = sess.shares((rows, d), x)?;
    if !cfg.lm_head {
        return Ok(x);
    }
    let head = enc.as_ref().map(|e| e.lm_head(cfg)).transpose()?.flatten();
    let shape = MatShape { n: rows, d, m: v };
    let logits = linear(sess, shape, &x, weights(shape, head.as_deref())?).await?;
    Ok(truncate(sess, &logits, format.frac_bits()).await?)
}

/// RMSNorm over rows of `width` with the server's γ.
async fn norm(
    sess: &mut Session,
    cfg: &ModelConfig,
    x: &[u64],
    width: usize,
    gamma: Option<&[u64]>,
) -> ModelResult<Vec<u64>> {
    let zeros = vec![0u64; width];
    let affine = match gamma {
        Some(gamma) => Affine::Weights { gamma, beta: &zeros },
        None => Affine::None,
    };
    let eps = sess.format().encode(cfg.norm_eps)?;
    let x = sess.shares((x.len() / width, width), x.to_vec())?;
    Ok(rmsnorm(sess, &x, affine, eps).await?.into_vec())
}

/// Rows (positions past, past + 1, …) of `heads` heads of `dim` times the public scale,
/// entries [at, at + dims) of each head rotated when the model uses rotary embeddings:
/// products at 2f fractional bits, then one truncation.
async fn rotate(
    sess: &mut Session,
    cfg: &ModelConfig,
    x: Vec<u64>,
    past: usize,
    (heads, dim, at): (usize, usize, usize),
    scale: f64,
) -> ModelResult<Vec<u64>> {
    let format = sess.format();
    let out: Vec<u64> = match cfg.positions {
        Positions::Rope { theta, dims, interleaved, yarn } => {
            let mut out = vec![0u64; x.len()];
            let one = format.encode(scale)?;
            for (p, (row, o)) in x.chunks_exact(heads * dim).zip(out.chunks_exact_mut(heads * dim)).enumerate() {
                let table: Vec<(u64, u64)> = rope_table(theta, dims, yarn, past + p)
                    .into_iter()
                    .map(|(c, s)| Ok((format.encode(c * scale)?, format.encode(s * scale)?)))
                    .collect::<ModelResult<_>>()?;
                for (head, o) in row.chunks_exact(dim).zip(o.chunks_exact_mut(dim)) {
                    let rotated = &head[at..at + dims];
                    for (j, o) in o[at..at + dims].iter_mut().enumerate() {
                        let (partner, negated, i) = rotary_pair(j, dims, interleaved);
                        let (c, s) = table[i];
                        let other = if negated { rotated[partner].wrapping_neg() } else { rotated[partner] };
                        *o = rotated[j].wrapping_mul(c).wrapping_add(other.wrapping_mul(s));
                    }
                    // the entries outside the rotary ones only take the scale
                    for (k, o) in o.iter_mut().enumerate().filter(|(k, _)| !(at..at + dims).contains(k)) {
                        *o = head[k].wrapping_mul(one);
                    }
                }
            }
            out
        }
        Positions::RelativeBias { .. } if scale == 1.0 => return Ok(x),
        Positions::RelativeBias { .. } => {
            let c = format.encode(scale)?;
            x.iter().map(|v| v.wrapping_mul(c)).collect()
        }
    };
    Ok(truncate_extend(sess, &out, 64, format.frac_bits()).await?)
}

/// The transpose of a rows×cols matrix.
fn transposed(rows: usize, cols: usize, a: &[u64]) -> Vec<u64> {
    (0..cols).flat_map(|j| (0..rows).map(move |i| a[i * cols + j])).collect()
}

/// The ring Z_2^ℓ of attention's products of two shared matrices: ℓ = 2f + 14, room for scores
/// and outputs below 2^12 in magnitude at 2f fractional bits (the softmax takes |x| < 64), 50
/// bits at f = 18. The server's shares enter those products as weights, so each bit below 64
/// is a bit more of flooding margin κ.
fn attention_ring(frac: u32) -> u32 {
    (2 * frac + 14).min(64)
}

/// x (n×`d_in`) times the server's `d_in`×`m` weights, truncated to f fractional bits.
async fn project(
    sess: &mut Session,
    x: Vec<u64>,
    (d_in, m): (usize, usize),
    w: Option<&[u64]>,
) -> ModelResult<Vec<u64>> {
    let n = x.len() / d_in;
    let shape = MatShape { n, d: d_in, m };
    let y = linear(sess, shape, &sess.shares((n, d_in), x)?, weights(shape, w)?).await?;
    Ok(truncate(sess, &y, sess.format().frac_bits()).await?.into_vec())
}

/// q, k and v of one block's new rows (n×d normed), q times the score scale and q and k
/// rotated: one HE product for q|k|v, the server's biases on its share, the q/k norms; or
/// multi-head latent attention's maps and norms ([`latent_qkv`]).
async fn qkv(
    sess: &mut Session,
    cfg: &ModelConfig,
    x: &[u64],
    past: usize,
    block: Option<&Block>,
) -> ModelResult<(Vec<u64>, Vec<u64>, Vec<u64>)> {
    let hd = cfg.head_dim;
    let (qw, kw) = (cfg.heads * hd, cfg.kv_heads * hd);
    if let Some(l) = cfg.latent {
        return latent_qkv(sess, cfg, l, x, past, block).await;
    }
    let (wqkv, bias, qk_norm) = match block.map(|b| &b.qkv) {
        None => (None, None, None),
        Some(BlockQkv::Heads { wqkv, bias, qk_norm }) => (Some(wqkv.as_slice()), bias.as_ref(), qk_norm.as_ref()),
        Some(BlockQkv::Latent { .. }) => {
            return Err(ModelError::Weights("latent attention maps for q/k/v maps".into()));
        }
    };
    let width = qw + 2 * kw;
    let mut qkv = project(sess, x.to_vec(), (cfg.d_model, width), wqkv).await?;
    if let Some(b) = bias {
        qkv.chunks_exact_mut(width).for_each(|r| r.iter_mut().zip(b.iter()).for_each(|(v, b)| *v = v.wrapping_add(*b)));
    }
    let (mut q, mut k, v) =
        (columns(&qkv, width, 0, qw), columns(&qkv, width, qw, kw), columns(&qkv, width, qw + kw, kw));
    if let Some((qn, kn)) = cfg.qk_norm_widths() {
        q = norm(sess, cfg, &q, qn, qk_norm.map(|g| g[0].as_slice())).await?;
        k = norm(sess, cfg, &k, kn, qk_norm.map(|g| g[1].as_slice())).await?;
    }
    let q = rotate(sess, cfg, q, past, (cfg.heads, hd, cfg.rotary_at()), cfg.score_scale).await?;
    let k = rotate(sess, cfg, k, past, (cfg.kv_heads, hd, cfg.rotary_at()), 1.0).await?;
    Ok((q, k, v))
}

/// Multi-head latent attention's q, k and v (as [`crate::model::reference`]'s): one HE
/// product for x's maps (to q or its rank, and to the latent with the rotated key part),
/// the RMSNorms of q's rank and of the latent, their products to the heads, the rotations
/// (q's last entries of each head, the key part once for all heads) and the heads' keys and
/// values put together by each party on its shares.
async fn latent_qkv(
    sess: &mut Session,
    cfg: &ModelConfig,
    l: LatentAttention,
    x: &[u64],
    past: usize,
    block: Option<&Block>,
) -> ModelResult<(Vec<u64>, Vec<u64>, Vec<u64>)> {
    let (hd, qw) = (cfg.head_dim, cfg.heads * cfg.head_dim);
    let nope = hd - l.rope;
    let (wa, q_b, kv_norm, wkv_b) = match block.map(|b| &b.qkv) {
        None => (None, None, None, None),
        Some(BlockQkv::Latent { wa, q_b, kv_norm, wkv_b }) => {
            (Some(wa.as_slice()), q_b.as_ref(), Some(kv_norm.as_slice()), Some(wkv_b.as_slice()))
        }
        Some(BlockQkv::Heads { .. }) => return Err(ModelError::Weights("q/k/v maps for latent attention".into())),
    };
    let q_in = l.q_rank.unwrap_or(qw);
    let width = q_in + l.kv_rank + l.rope;
    let a = project(sess, x.to_vec(), (cfg.d_model, width), wa).await?;
    let q = columns(&a, width, 0, q_in);
    let q = match l.q_rank {
        Some(r) => {
            let q = norm(sess, cfg, &q, r, q_b.map(|(g, _)| g.as_slice())).await?;
            project(sess, q, (r, qw), q_b.map(|(_, w)| w.as_slice())).await?
        }
        None => q,
    };
    let latent = norm(sess, cfg, &columns(&a, width, q_in, l.kv_rank), l.kv_rank, kv_norm).await?;
    let kv = project(sess, latent, (l.kv_rank, cfg.heads * (nope + l.v_dim)), wkv_b).await?;
    let q = rotate(sess, cfg, q, past, (cfg.heads, hd, cfg.rotary_at()), cfg.score_scale).await?;
    let k_rot = rotate(sess, cfg, columns(&a, width, q_in + l.kv_rank, l.rope), past, (1, l.rope, 0), 1.0).await?;
    let (k, v) = latent_keys_values(&kv, &k_rot, cfg.heads, nope, l.v_dim);
    Ok((q, k, v))
}

/// Self-attention of one block on the n normed rows of positions past.. (module notes, step
/// 2), against the cached keys and values of the positions before, which it extends.
#[allow(clippy::too_many_arguments)]
async fn attention(
    sess: &mut Session,
    cfg: &ModelConfig,
    n: usize,
    past: usize,
    x: &[u64],
    block: Option<&Block>,
    position_bias: Option<&[u64]>,
    (layer, (keys, values)): (usize, &mut (Vec<u64>, Vec<u64>)),
) -> ModelResult<Vec<u64>> {
    let frac = sess.format().frac_bits();
    let (hd, vd) = (cfg.head_dim, cfg.v_head_dim());
    let (qw, kw, vw, ow) = (cfg.heads * hd, cfg.kv_heads * hd, cfg.kv_heads * vd, cfg.heads * vd);
    let (q, k, v) = qkv(sess, cfg, x, past, block).await?;
    // the keys and values of all positions so far: the cache's, then the new rows
    keys.truncate(past * kw);
    values.truncate(past * vw);
    keys.extend(k);
    values.extend(v);
    let (k, v, total) = (&*keys, &*values, past + n);
    let group = cfg.heads / cfg.kv_heads;
    let mut scores = Vec::with_capacity(cfg.heads * n * total);
    let ring = attention_ring(frac);
    for h in 0..cfg.heads {
        let qh = sess.shares((n, hd), columns(&q, qw, h * hd, hd))?.narrowed(ring)?;
        let kt =
            sess.shares((hd, total), transposed(total, hd, &columns(k, kw, (h / group) * hd, hd)))?.narrowed(ring)?;
        scores.extend(matmul_shared(sess, MatShape { n, d: hd, m: total }, &qh, &kt).await?.into_vec());
    }
    let mut scores = truncate_extend(sess, &scores, ring, frac).await?;
    if let (Some(table), Positions::RelativeBias { buckets, max_distance }) = (position_bias, cfg.positions) {
        let bias: Vec<u64> = (0..cfg.heads)
            .flat_map(|h| {
                (0..n * n).map(move |ij| {
                    let (i, j) = (ij / n, ij % n);
                    table[relative_bucket(j as i64 - i as i64, buckets, max_distance) * cfg.heads + h]
                })
            })
            .collect();
        scores.iter_mut().zip(bias).for_each(|(s, b)| *s = s.wrapping_add(b));
    }
    // row i (position past + i) attends to positions 0..=past + i within the layer's window;
    // with sinks, each row ends with its head's sink logit (the server's share; the client's 0)
    let sink = block.and_then(|b| b.sinks.as_deref());
    let row = total + usize::from(cfg.sinks);
    let mut rows = Vec::with_capacity(cfg.heads * n * row);
    let mut keep = Vec::with_capacity(cfg.heads * n * row);
    for (r, s) in scores.chunks_exact(total).enumerate() {
        rows.extend_from_slice(s);
        keep.extend((0..total).map(|j| cfg.attends(layer, past + r % n, j)));
        if cfg.sinks {
            rows.push(sink.map_or(0, |s| s[r / n]));
            keep.push(true);
        }
    }
    let masked = cfg.causal || cfg.sinks;
    let scores = sess.shares((cfg.heads * n, row), rows)?;
    let p = softmax_masked(sess, &scores, masked.then_some(keep.as_slice())).await?.into_vec();
    let p: Vec<u64> = p.chunks_exact(row).flat_map(|r| r[..total].iter().copied()).collect();
    let mut o = vec![0u64; n * ow];
    for h in 0..cfg.heads {
        let ph = sess.shares((n, total), p[h * n * total..(h + 1) * n * total].to_vec())?.narrowed(ring)?;
        let vh = sess.shares((total, vd), columns(v, vw, (h / group) * vd, vd))?.narrowed(ring)?;
        let oh = matmul_shared(sess, MatShape { n, d: total, m: vd }, &ph, &vh).await?;
        for (i, row) in oh.as_slice().chunks_exact(vd).enumerate() {
            o[i * ow + h * vd..i * ow + (h + 1) * vd].copy_from_slice(row);
        }
    }
    let o = truncate_extend(sess, &o, ring, frac).await?;
    let mut y = project(sess, o, (ow, cfg.d_model), block.map(|b| b.wo.as_slice())).await?;
    if let Some(b) = block.and_then(|b| b.bo.as_deref()) {
        y.chunks_exact_mut(cfg.d_model).for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v = v.wrapping_add(*b)));
    }
    Ok(y)
}
