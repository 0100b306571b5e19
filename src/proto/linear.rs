//! Matrix products with HE (Cheetah-style), for the linear layers and attention.
//!
//! The core is [`HeClient::product`] / [`HeServer::product`]: the client holds A_c (n×d), the
//! server holds B (d×m) in the clear and optionally its own share A_s; they end with additive
//! shares of (A_c + A_s)·B. The client encrypts its tiles of A ([`Tiling`], seeded ciphertexts);
//! the server adds A_s and multiplies by its tiles of B in NTT form. Where the parameters have a
//! special prime, the sparse results are then merged 2^ℓ at a time into dense ciphertexts with
//! the client's Galois keys (BumbleBee-style packing; the merge multiplies them by 2^ℓ, which
//! t = 2^(64+ℓ) absorbs). The server subtracts a fresh mask 2^ℓ·R at the output coefficients,
//! R uniform over the whole plaintext ring above the packing shift (mod 2^(log t − ℓ)), keeps
//! R mod 2^64 as its share, re-randomizes c1 with an encryption of zero, floods c0 with noise
//! 2^κ above a bound on every B-dependent noise term, and returns each ciphertext shrunk to the
//! output coefficients (c0 at t+4 bits, c1 at t+13 bits). The client decrypts 2^ℓ·(A·B − R) mod t
//! and keeps (A·B − R) mod 2^64.
//!
//! Security (semi-honest): the server sees only RLWE ciphertexts and keys of the client. Every
//! bit the client decrypts is uniform and independent of B: (A_c + A_s)·B exceeds 2^64 (the
//! shares carry), so a mask of 64 bits would leave the top log t − 64 − ℓ bits of a function of
//! B in the clear — R covers all of them. The coefficients holding cross terms never leave the
//! server (unsent, or cancelled by the packing); c1 is an RLWE sample of the server's
//! randomness; and the flood (a sum of four uniforms, [`crate::he::flood`]) puts the decrypted
//! noise of m coefficients within statistical distance √(3.2·m)·2^-κ + m·2^-[`TAIL_BITS`] of a
//! distribution that does not depend on B (see [`HeServer::statistical_distance`] for a
//! session's total).
//!
//! [`linear`] applies it to a layer Y = X·W with X secret-shared and W the server's;
//! [`matmul_shared`] multiplies two secret-shared matrices (Q·Kᵀ, P·V) with two such products and
//! local terms. Both run over the HE keys of the session ([`Session::setup_he`]).

use std::sync::{Arc, Mutex};

use rand::rngs::ChaCha20Rng;
use rand::{CryptoRng, RngExt, SeedableRng};
use tracing::instrument;

use super::session::{HeKeys, HeUse, keys_for};
use super::{ProtoError, ProtoResult, Session};
use crate::backend::{Backend, Workers, par_map};
use crate::he::flood::tail_deviations;
use crate::he::matmul::{
    EncryptedRows, Response, ResponseKeys, blocking_for, max_pack, respond, response_shape, result_plain_bits,
    tiling_for,
};
use crate::he::tiling::{MatShape, Tiling};
use crate::he::{
    Ciphertext, Exposure, GaloisKeys, HeParams, MAX_DROPPED_BITS, NARROW_FLOOD_BITS, Plaintext, PublicKey, RelinKey,
    SecretKey, SeededCiphertext, ShrunkCiphertext, SquareKey, ciphertext_len, compressed_ciphertext_len,
};
use crate::net::{Channel, CostModel};
use crate::ring::{Shares, Weights, mask};

// κ is as large as the parameters leave room for (see `HeServer::statistical_distance`)
pub use crate::he::{MIN_STAT_BITS, TAIL_BITS};
/// Bound on the centered binomial noise of a fresh encryption (η = 21).
const FRESH_NOISE: f64 = 21.0;
/// Bound on the rounding of the encodings of A_c and A_s, per coefficient (each rounds
/// q·a/t to the nearest integer).
const ROUNDING_NOISE: f64 = 1.0;
/// log2 of a bound on the noise one key switch adds (k·N·21·p_i/P plus the rounding: 3·2^13·21·2^13
/// for the linear set's 58-bit primes and 45-bit special prime, rounded up with room).
const KEYSWITCH_NOISE_BITS: u32 = 35;
/// The client's public assumption on the server's weights in a linear layer: |w| < 2^(f + 8) at
/// the session's f fractional bits (|w| < 256), for which it chooses how far to compress its
/// input ciphertexts ([`dropped_bits`]). Larger weights still run: the server floods for its
/// actual bound, and refuses by name a product whose margin would fall below
/// [`MIN_STAT_BITS`].
pub const WEIGHT_INTEGER_BITS: u32 = 8;
/// Bits of the flooding margin κ the input compression may spend ([`dropped_bits`]).
pub const COMPRESSION_KAPPA_BITS: u32 = 1;
/// Byte budget for the unpacked results the server holds at once.
const RESULT_BATCH_BYTES: usize = 128 << 20;
/// Most host threads a server may announce at the HE setup.
const MAX_SERVER_THREADS: usize = 1 << 16;

const STATUS_OK: u8 = 0;
const STATUS_REFUSED: u8 = 1;

/// The server's answer to a request it checked: OK, or the refusal with its reason (which the
/// client reports as [`ProtoError::Refused`]); the check's result is passed through.
pub(crate) async fn answer<T>(ch: &mut Channel, checked: ProtoResult<T>) -> ProtoResult<T> {
    match checked {
        Ok(ok) => {
            ch.send(&[STATUS_OK]).await?;
            Ok(ok)
        }
        Err(e) => {
            let mut msg = vec![STATUS_REFUSED];
            msg.extend_from_slice(e.to_string().as_bytes());
            ch.send(&msg).await?;
            Err(e)
        }
    }
}

/// The client's side of [`answer`]: Ok, or the server's refusal.
pub(crate) async fn await_answer(ch: &mut Channel) -> ProtoResult<()> {
    let status = ch.recv().await?;
    match status.split_first() {
        Some((&STATUS_OK, [])) => Ok(()),
        Some((&STATUS_REFUSED, reason)) => Err(ProtoError::Refused(String::from_utf8_lossy(reason).into())),
        _ => Err(ProtoError::Refused("unreadable status from the server".into())),
    }
}

/// log2 of a bound on the B-dependent noise of one result coefficient, for B entries of at most
/// 2^b_bits in absolute value and input ciphertexts that dropped `dropped` bits of c0. Before
/// packing, a noise coefficient is a sum over T = d-tiles·d_w·m_w terms (e_i + c_i + ε_i)·b_i:
/// e_i the client's fresh noise (independent, centered binomial, |e_i| ≤ 21), c_i the
/// compression's rounding (independent, centered, |c_i| ≤ 2^(dropped−1): a function of the
/// uniform c0), ε_i the encodings' rounding (|ε_i| ≤ 1, taken at its worst). By Hoeffding's
/// inequality |Σ (e_i + c_i)·b_i| ≤ (21 + 2^(dropped−1))·2^b·√(2T·ln(2/δ)) except with
/// probability δ = 2^-[`TAIL_BITS`] (instead of the worst case, T times the bound); the roundings
/// add 2^b·T. Packing 2^ℓ results multiplies the noise by 2^ℓ and adds a key switch per level.
fn noise_bound_bits(t: &Tiling, b_bits: u32, dropped: u32) -> f64 {
    let (_, tj, _) = t.tile_counts();
    let terms = (tj * t.d_w * t.m_w) as f64;
    let b = 2f64.powi(b_bits as i32);
    let input = FRESH_NOISE + if dropped == 0 { 0.0 } else { 2f64.powi(dropped as i32 - 1) };
    let fresh = input * b * (terms.sqrt() * tail_deviations()).min(terms);
    let rounding = ROUNDING_NOISE * b * terms;
    (fresh + rounding + 2f64.powi(KEYSWITCH_NOISE_BITS as i32)).log2() + t.pack as f64
}

/// Flooding noise (bits) and its margin κ for a product whose B entries are at most 2^b_bits in
/// absolute value: the noise bound plus the largest κ the parameters leave room for (the flood
/// must stay 4 bits below q/t for the shrunk result to decrypt), at least [`MIN_STAT_BITS`].
fn flood_bits(params: &HeParams, t: &Tiling, b_bits: u32, dropped: u32) -> ProtoResult<(u32, u32)> {
    let bound = noise_bound_bits(t, b_bits, dropped).ceil() as u32;
    let room = flood_room(params);
    let kappa = room.saturating_sub(bound);
    if kappa < MIN_STAT_BITS {
        return Err(ProtoError::Input(format!(
            "{} leaves {room} bits above the plaintext, but a {} product with {b_bits}-bit entries on inputs that \
             dropped {dropped} bits needs {} bits of flooding noise",
            params.name(),
            t.shape,
            bound + MIN_STAT_BITS
        )));
    }
    Ok((bound + kappa, kappa))
}

/// Bits of flooding noise the parameters leave room for: 4 bits below q/t, so that the shrunk
/// result still decrypts.
fn flood_room(params: &HeParams) -> u32 {
    (params.log_q().floor() as u32 - params.plain_bits() - 4).min(NARROW_FLOOD_BITS)
}

/// Bits of c0 the client's input ciphertexts for tiling `t` drop
/// ([`SeededCiphertext::to_compressed`]): the most that cost at most [`COMPRESSION_KAPPA_BITS`]
/// of the flooding margin κ for weights of up to 2^`weight_bits` (public: the client's
/// assumption, never the server's actual bound). While the compression's rounding (up to
/// 2^(k−1) per coefficient) stays below the fresh noise, the encodings' roundings and the key
/// switches, it is nearly free; past that point each dropped bit costs one bit of κ for 1/173 of
/// the input bytes, the rate at which the linear set's modulus was chosen the other way (8 bits
/// of κ for 4–5% more input bytes), so the compression stops there.
pub fn dropped_bits(params: &HeParams, t: &Tiling, weight_bits: u32) -> u32 {
    let limit = MAX_DROPPED_BITS.min(params.moduli()[0].bits() - 1);
    let bound = |k: u32| noise_bound_bits(t, weight_bits, k).ceil() as u32;
    (0..=limit).rev().find(|&k| bound(k) <= bound(0) + COMPRESSION_KAPPA_BITS).unwrap_or(0)
}

/// The evaluation keys the client sends at setup besides its public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeySet {
    /// Galois keys (where the parameters allow packing): what the linear layers need.
    #[default]
    Linear,
    /// Also a relinearization key, for products of two ciphertexts on the server (an encrypted
    /// input times an obliviously selected expert): about 1.2 MB more for the linear set.
    WithRelin,
    /// Also a public key for s² ([`SquareKey`], one RLWE sample) instead of a relinearization
    /// key: the server's products of two ciphertexts leave unrelinearized and the client opens
    /// them with s² ([`crate::he::selected::ProductForm::Tensored`]).
    WithSquare,
}

/// The server's key for products of two ciphertexts, by [`KeySet`].
#[derive(Debug)]
enum ProductKey {
    None,
    Relin(RelinKey),
    Square(SquareKey),
}

/// The client's side: holds the secret key, and chooses the tiling of each product for the
/// network it expects (WAN by default: fewer bytes at some more server time).
#[derive(Debug)]
pub struct HeClient {
    params: Arc<HeParams>,
    sk: SecretKey,
    backend: Arc<dyn Backend>,
    workers: Workers,
    network: CostModel,
    keys: KeySet,
    /// The host threads the server computes on (announced at setup; public): the tilings
    /// weigh its compute at the time it takes there.
    server_threads: usize,
}

/// The server's side: holds the client's public key (to re-randomize results) and Galois keys
/// (to pack them), where the parameters allow packing.
#[derive(Debug)]
pub struct HeServer {
    params: Arc<HeParams>,
    pk: PublicKey,
    galois: Option<GaloisKeys>,
    product: ProductKey,
    backend: Arc<dyn Backend>,
    workers: Workers,
    /// What the client has decrypted so far, for the flooding's statistical distance.
    exposure: Mutex<Exposure>,
}

impl HeClient {
    /// Generates a key pair and sends the public key and the evaluation keys of `keys` (once
    /// per session; the server must expect the same set).
    #[instrument(skip_all, name = "he_setup", fields(params = params.name()))]
    pub async fn setup<R: CryptoRng + Send + ?Sized>(
        ch: &mut Channel,
        params: Arc<HeParams>,
        backend: Arc<dyn Backend>,
        workers: Workers,
        keys: KeySet,
        rng: &mut R,
    ) -> ProtoResult<HeClient> {
        let _s = ch.meter().scope("he-setup");
        let be = backend.as_ref();
        let sk = SecretKey::generate(&params, be, rng)?;
        ch.send(&sk.public_key(be, rng)?.to_bytes()).await?;
        let levels = max_pack(&params);
        if levels > 0 {
            let galois = workers.compute(|| sk.galois_keys(levels, be, rng))?;
            ch.send(&galois.to_bytes(&params)?).await?;
        }
        match keys {
            KeySet::WithRelin => ch.send(&workers.compute(|| sk.relin_key(be, rng))?.to_bytes(&params)).await?,
            KeySet::WithSquare => ch.send(&sk.square_key(be, rng)?.to_bytes()).await?,
            KeySet::Linear => {}
        }
        let threads = ch.recv_u64s("the server's thread count", 1).await?[0];
        let server_threads = match usize::try_from(threads) {
            Ok(t @ 1..=MAX_SERVER_THREADS) => t,
            _ => {
                return Err(ProtoError::BadRequest(format!(
                    "the server announced {threads} threads (1..={MAX_SERVER_THREADS} expected)"
                )));
            }
        };
        Ok(HeClient { params, sk, backend, workers, network: CostModel::WAN, keys, server_threads })
    }

    /// The parameter set.
    pub(crate) fn params(&self) -> &Arc<HeParams> {
        &self.params
    }

    /// The host workers of this party's heavy steps.
    pub(crate) fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The secret key (decryption of this client's results).
    pub(crate) fn secret_key(&self) -> &SecretKey {
        &self.sk
    }

    /// The evaluation keys this client sent.
    pub(crate) fn key_set(&self) -> KeySet {
        self.keys
    }

    /// The network the tilings are chosen for.
    pub(crate) fn network(&self) -> CostModel {
        self.network
    }

    /// The host threads the server announced at setup (the tilings weigh its compute by them).
    pub fn server_threads(&self) -> usize {
        self.server_threads
    }

    /// Tunes the tilings of later products for another network.
    pub fn set_network(&mut self, network: CostModel) {
        self.network = network;
    }

    /// Shares of (A_c + A_s)·B mod 2^`result_bits` for the client's A_c (n×d, row-major);
    /// returns the client's n×m share. `weight_bits` is the public bound |B| < 2^weight_bits
    /// the client assumes (64 where B is a share): its input ciphertexts are compressed as far
    /// as it allows ([`dropped_bits`]). Results below 64 bits leave the server narrowed
    /// ([`result_plain_bits`]): fewer bytes, the same security.
    #[instrument(skip_all, name = "he_product", fields(shape = %shape))]
    pub async fn product<R: CryptoRng + Send + ?Sized>(
        &self,
        ch: &mut Channel,
        shape: MatShape,
        a: &[u64],
        (weight_bits, result_bits): (u32, u32),
        rng: &mut R,
    ) -> ProtoResult<Vec<u64>> {
        let (t, decrypted) = self.product_decrypted(ch, shape, a, (weight_bits, result_bits), rng).await?;
        // 2^pack·(A·B − R) mod 2^(pack + result bits): the division is exact, and the share is
        // its value mod 2^result_bits
        Ok(decrypted.into_iter().map(|v| (v >> t.pack) as u64 & mask(result_bits)).collect())
    }

    /// [`HeClient::product`] up to decryption: the tiling, and everything the client decrypts —
    /// the whole plaintext it receives at each output (row-major n×m).
    async fn product_decrypted<R: CryptoRng + Send + ?Sized>(
        &self,
        ch: &mut Channel,
        shape: MatShape,
        a: &[u64],
        (weight_bits, result_bits): (u32, u32),
        rng: &mut R,
    ) -> ProtoResult<(Tiling, Vec<u128>)> {
        check_result_bits(result_bits)?;
        if a.len() != shape.n * shape.d {
            return Err(ProtoError::Input(format!(
                "A has {} entries, the shape {shape} needs {}",
                a.len(),
                shape.n * shape.d
            )));
        }
        let (p, be) = (&self.params, self.backend.as_ref());
        let t = tiling_for(p, shape, &self.network, self.server_threads, result_bits);
        tracing::debug!(n_w = t.n_w, d_w = t.d_w, m_w = t.m_w, pack = t.pack, "tiling");
        let dropped = dropped_bits(p, &t, weight_bits);
        let (ti_n, tj_n, _) = t.tile_counts();
        {
            let _s = ch.meter().scope("he-product/input");
            let header = [
                shape.n,
                shape.d,
                shape.m,
                t.n_w,
                t.d_w,
                t.m_w,
                t.pack as usize,
                dropped as usize,
                result_bits as usize,
            ];
            ch.send_u64s(&header.map(|v| v as u64)).await?;
            await_answer(ch).await?;
            for ti in 0..ti_n {
                let seeds: Vec<[u8; 32]> = (0..tj_n).map(|_| rng.random()).collect();
                let cts: Vec<Vec<u8>> = self.workers.compute(|| {
                    par_map(tj_n, |tj| {
                        let pt = Plaintext::new(p, t.encode_a(a, ti, tj))?;
                        let ct = self.sk.encrypt_seeded(&pt, be, &mut ChaCha20Rng::from_seed(seeds[tj]))?;
                        Ok(ct.to_compressed(p, dropped, be)?)
                    })
                    .into_iter()
                    .collect::<ProtoResult<_>>()
                })?;
                for ct in cts {
                    ch.send(&ct).await?;
                }
            }
        }
        let _s = ch.meter().scope("he-product/output");
        let mut out = vec![0u128; shape.n * shape.m];
        let plain_bits = result_plain_bits(p, t.pack, result_bits);
        for g in 0..t.returned() {
            let bytes = ch.recv().await?;
            let pos = t.returned_positions(g);
            let keep: Vec<usize> = pos.iter().map(|&(c, _, _)| c).collect();
            let values = self.workers.compute(|| {
                let shape = response_shape(p, 2, keep.len()).narrowed(plain_bits);
                let ct = ShrunkCiphertext::from_bytes(p, &bytes, shape)?;
                self.sk.decrypt_shrunk(&ct, &keep, be)
            })?;
            for (v, &(_, _, (i, k))) in values.into_iter().zip(&pos) {
                out[i * shape.m + k] = v;
            }
        }
        Ok((t, out))
    }
}

impl HeServer {
    /// Receives the client's public key and the evaluation keys of `keys` (once per session).
    #[instrument(skip_all, name = "he_setup", fields(params = params.name()))]
    pub async fn setup(
        ch: &mut Channel,
        params: Arc<HeParams>,
        backend: Arc<dyn Backend>,
        workers: Workers,
        keys: KeySet,
    ) -> ProtoResult<HeServer> {
        let _s = ch.meter().scope("he-setup");
        let bytes = ch.recv().await?;
        let pk = PublicKey::from_bytes(&params, &bytes)?;
        let galois = if max_pack(&params) > 0 {
            let bytes = ch.recv().await?;
            let mut keys = GaloisKeys::from_bytes(&params, &bytes)?;
            if keys.levels() < max_pack(&params) {
                return Err(ProtoError::BadRequest(format!(
                    "the client's Galois keys cover {} levels, {} needs {}",
                    keys.levels(),
                    params.name(),
                    max_pack(&params)
                )));
            }
            keys.hold(&*backend)?;
            Some(keys)
        } else {
            None
        };
        let product = match keys {
            KeySet::WithRelin => {
                let mut key = RelinKey::from_bytes(&params, &ch.recv().await?)?;
                key.hold(&*backend)?;
                ProductKey::Relin(key)
            }
            KeySet::WithSquare => ProductKey::Square(SquareKey::from_bytes(&params, &ch.recv().await?)?),
            KeySet::Linear => ProductKey::None,
        };
        ch.send_u64s(&[workers.threads() as u64]).await?;
        Ok(HeServer { params, pk, galois, product, backend, workers, exposure: Mutex::default() })
    }

    /// The parameter set.
    pub(crate) fn params(&self) -> &Arc<HeParams> {
        &self.params
    }

    /// The host workers of this party's heavy steps.
    pub(crate) fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The client's public key (re-randomization of results).
    pub(crate) fn public_key(&self) -> &PublicKey {
        &self.pk
    }

    /// The client's Galois keys, where the parameters pack.
    pub(crate) fn galois_keys(&self) -> Option<&GaloisKeys> {
        self.galois.as_ref()
    }

    /// The client's relinearization key, if the session set one up ([`KeySet::WithRelin`]).
    pub fn relin_key(&self) -> Option<&RelinKey> {
        match &self.product {
            ProductKey::Relin(key) => Some(key),
            _ => None,
        }
    }

    /// The client's square key, if the session set one up ([`KeySet::WithSquare`]).
    pub fn square_key(&self) -> Option<&SquareKey> {
        match &self.product {
            ProductKey::Square(key) => Some(key),
            _ => None,
        }
    }

    /// The server's side of [`HeClient::product`]: the weights B (d×m), and optionally its
    /// share A_s (n×d) of the encrypted matrix, for results mod 2^`result_bits`. Returns the
    /// server's n×m share (the mask R mod 2^result_bits). Weights of another shape or beyond
    /// their bound are refused (the client learns that much).
    #[instrument(skip_all, name = "he_product", fields(shape = %shape))]
    pub async fn product<R: CryptoRng + Send + ?Sized>(
        &self,
        ch: &mut Channel,
        (shape, result_bits): (MatShape, u32),
        w: Weights<'_>,
        a_share: Option<&[u64]>,
        rng: &mut R,
    ) -> ProtoResult<Vec<u64>> {
        let (p, be) = (&self.params, self.backend.as_ref());
        let b = w.as_slice();
        let _s = ch.meter().scope("he-product/input");
        let header = ch.recv_u64s("product header", 9).await?;
        let checked = self.check_request((shape, result_bits), &header).and_then(|(t, dropped)| {
            let flood = check_server_inputs(p, &t, w, a_share, dropped)?;
            Ok((t, dropped, flood))
        });
        let (t, dropped, (flood, kappa)) = answer(ch, checked).await?;
        tracing::debug!(flood, kappa, "flooding");
        self.add_exposure(shape.n * shape.m, kappa);
        let (ti_n, tj_n, tk_n) = t.tile_counts();
        let mut received = Vec::with_capacity(ti_n * tj_n);
        for _ in 0..ti_n * tj_n {
            received.push(ch.recv_exact("input ciphertext", compressed_ciphertext_len(p, dropped)).await?);
        }
        let inputs: Vec<SeededCiphertext> = self.workers.compute(|| {
            par_map(received.len(), |i| Ok(SeededCiphertext::from_compressed(p, &received[i], be)?.0))
                .into_iter()
                .collect::<ProtoResult<_>>()
        })?;
        drop(_s);
        let _s = ch.meter().scope("he-product/output");
        let inputs =
            self.workers.compute(|| EncryptedRows::prepare(p, be, &t, blocking_for(p, &t), &inputs, a_share))?;
        let mut mask = vec![0u64; shape.n * shape.m];
        let group = 1usize << t.pack;
        // results per batch: whole groups, within the memory budget for unpacked results
        let result_bytes = 2 * p.moduli().len() * p.degree() * 8;
        let results_per_batch = (RESULT_BATCH_BYTES / result_bytes / group).max(1) * group;
        let mut pending: Vec<Ciphertext> = Vec::new();
        let mut next_group = 0;
        let mut first_k = 0;
        while first_k < tk_n {
            let ks = first_k..(first_k + results_per_batch.div_ceil(ti_n)).min(tk_n);
            first_k = ks.end;
            let last = first_k == tk_n;
            let responses = self.workers.compute(|| -> ProtoResult<Vec<Response>> {
                pending.extend(inputs.multiply(p, be, &t, b, ks)?);
                let ready = if last { pending.len().div_ceil(group) } else { pending.len() / group };
                let taken: Vec<Ciphertext> = pending.drain(..(ready * group).min(pending.len())).collect();
                let seeds: Vec<[u8; 32]> = (0..ready).map(|_| rng.random()).collect();
                let keys = ResponseKeys { pk: &self.pk, galois: self.galois.as_ref(), square: None };
                par_map(ready, |i| {
                    let members = &taken[i * group..((i + 1) * group).min(taken.len())];
                    let mut rng = ChaCha20Rng::from_seed(seeds[i]);
                    let seal = (flood, result_plain_bits(p, t.pack, result_bits));
                    Ok(respond(p, keys, &t, next_group + i, members, seal, be, &mut rng)?)
                })
                .into_iter()
                .collect()
            })?;
            next_group += responses.len();
            for (bytes, values) in responses {
                for (v, (i, k)) in values {
                    mask[i * shape.m + k] = v & crate::ring::mask(result_bits);
                }
                ch.send(&bytes).await?;
            }
        }
        Ok(mask)
    }

    /// An upper bound on the statistical distance between the noise in everything this session's
    /// client has decrypted so far and noise that does not depend on the server's matrices
    /// ([`Exposure::distance`]: √(2·Σh) over the returned coefficients' squared Hellinger
    /// bounds, κ ≥ [`MIN_STAT_BITS`] per product and as large as the parameters allow, plus
    /// 2^-[`TAIL_BITS`] per coefficient).
    pub fn statistical_distance(&self) -> f64 {
        self.exposure().distance()
    }

    /// What the client has decrypted so far (to add to other key sets' before bounding a
    /// session's distance).
    pub fn exposure(&self) -> Exposure {
        *self.exposure.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add_exposure(&self, coefficients: usize, kappa: u32) {
        self.exposure.lock().unwrap_or_else(|e| e.into_inner()).add(coefficients, kappa);
    }

    /// The tiling the client announced for `shape`, if it is one this server can run, and the
    /// bits its input ciphertexts drop.
    fn check_request(&self, (shape, result_bits): (MatShape, u32), header: &[u64]) -> ProtoResult<(Tiling, u32)> {
        check_result_bits(result_bits)?;
        let asked = MatShape { n: header[0] as usize, d: header[1] as usize, m: header[2] as usize };
        if asked != shape {
            return Err(ProtoError::BadRequest(format!(
                "the client asked for a {asked} product, the server expects {shape}"
            )));
        }
        if header[8] != result_bits as u64 {
            return Err(ProtoError::BadRequest(format!(
                "the client asked for results mod 2^{}, the server expects mod 2^{result_bits}",
                header[8]
            )));
        }
        let degree = self.params.degree();
        let [n_w, d_w, m_w, pack] = [3, 4, 5, 6].map(|i| header[i].min(1 << 20) as usize);
        let t = Tiling { shape, degree, n_w, d_w, m_w, pack: pack as u32 };
        let fits = (1..=shape.n).contains(&n_w)
            && (1..=shape.d).contains(&d_w)
            && (1..=shape.m).contains(&m_w)
            && n_w * d_w * m_w <= degree;
        let packs = pack == 0 || (pack as u32 <= max_pack(&self.params) && d_w == 1 << pack);
        if !fits || !packs {
            return Err(ProtoError::BadRequest(format!(
                "the client's tiling {n_w}×{d_w}×{m_w} (packing 2^{pack}) does not fit {} for {shape}",
                self.params.name()
            )));
        }
        if !t.fills_ring() {
            return Err(ProtoError::BadRequest(format!(
                "the client's tiling {n_w}×{d_w}×{m_w} for {shape} uses less than half of what the ring of {degree} coefficients allows"
            )));
        }
        let dropped = header[7];
        if dropped > MAX_DROPPED_BITS.min(self.params.moduli()[0].bits() - 1) as u64 {
            return Err(ProtoError::BadRequest(format!(
                "the client's inputs drop {dropped} bits of c0, at most {MAX_DROPPED_BITS}"
            )));
        }
        Ok((t, dropped as u32))
    }
}

/// Checks the server's own inputs and the client's announced shape; returns the flooding bits
/// and their margin κ. The refusal of a weight beyond its bound names neither the weight nor its
/// value (the message goes to the client); both are logged here.
fn check_server_inputs(
    p: &HeParams,
    t: &Tiling,
    w: Weights<'_>,
    a_share: Option<&[u64]>,
    dropped: u32,
) -> ProtoResult<(u32, u32)> {
    let s = t.shape;
    check_weights_shape(&w, s)?;
    let (b, b_bits) = (w.as_slice(), w.bits());
    if let Some(a) = a_share.filter(|a| a.len() != s.n * s.d) {
        return Err(ProtoError::Input(format!(
            "the server's share of A has {} entries, {s} needs {}",
            a.len(),
            s.n * s.d
        )));
    }
    if b_bits < 63
        && let Some(j) = b.iter().position(|&v| (v as i64).unsigned_abs() > 1 << b_bits)
    {
        tracing::warn!(index = j, value = b[j] as i64, bound_bits = b_bits, "a weight exceeds its declared bound");
        return Err(ProtoError::Input(format!(
            "a weight exceeds the declared bound 2^{b_bits} (its index and value are in the server's log)"
        )));
    }
    flood_bits(p, t, b_bits.min(63), dropped)
}

/// Bytes of a full (unshrunk) result ciphertext, for comparison in reports.
pub fn unshrunk_output_len(params: &HeParams) -> usize {
    ciphertext_len(params, params.moduli().len())
}

/// A linear layer Y = X·W over the session's HE keys for linear layers ([`Session::setup_he_for`]): each party's
/// share of X (n×d, over Z_2^64) in, its share of Y (n×m) out, with the fractional bits of X plus
/// the session's (the weights are in its fixed point). The server passes `Some(weights)` (d×m),
/// the client `None`.
pub async fn linear(
    sess: &mut Session,
    shape: MatShape,
    x: &Shares,
    weights: Option<Weights<'_>>,
) -> ProtoResult<Shares> {
    linear_in(sess, shape, x, weights, 64).await
}

/// [`linear`] with Y's shares over Z_2^`bits` (more than Y's fractional bits, at most 64), for
/// a consumer that reads no more — values known to satisfy |Y| < 2^(bits − 1) at their scale:
/// the results leave the server without the plaintext's bits above (about 2·(64 − bits) bits
/// fewer per output). Both parties pass the same `bits`; the server refuses another.
pub async fn linear_in(
    sess: &mut Session,
    shape: MatShape,
    x: &Shares,
    weights: Option<Weights<'_>>,
    bits: u32,
) -> ProtoResult<Shares> {
    let frac = product_frac(x, (shape.n, shape.d), sess.format().frac_bits(), 64)?;
    check_result_bits(bits)?;
    if frac >= bits {
        return Err(ProtoError::Input(format!("results mod 2^{bits} cannot hold {frac} fractional bits")));
    }
    let x = x.as_slice();
    let y = match (keys_for(&sess.he, HeUse::Linear), weights) {
        (Some(HeKeys::Client(he)), None) => {
            let weight_bits = sess.format().frac_bits() + WEIGHT_INTEGER_BITS;
            he.product(sess.ot.channel(), shape, x, (weight_bits, bits), &mut sess.rng).await?
        }
        (Some(HeKeys::Server(he)), Some(w)) => {
            he.product(sess.ot.channel(), (shape, bits), w, Some(x), &mut sess.rng).await?
        }
        (None, _) => return Err(no_keys()),
        (Some(HeKeys::Client(_)), Some(_)) => return Err(ProtoError::Input("the client holds no weights".into())),
        (Some(HeKeys::Server(_)), None) => return Err(ProtoError::Input("the server must pass the weights".into())),
    };
    Ok(Shares::new((shape.n, shape.m), y, bits, frac)?)
}

/// Result rings a product can be asked for: Z_2^1 … Z_2^64.
fn check_result_bits(bits: u32) -> ProtoResult<()> {
    if !(1..=64).contains(&bits) {
        return Err(ProtoError::Input(format!("products give shares mod 2^1 … 2^64, not mod 2^{bits}")));
    }
    Ok(())
}

/// The fractional bits of X·W for shares X over Z_2^`width` of the announced `rows × cols`
/// and factors of `other_frac` fractional bits; an error names what does not fit.
pub(crate) fn product_frac(x: &Shares, (rows, cols): (usize, usize), other_frac: u32, width: u32) -> ProtoResult<u32> {
    let frac = x.frac_bits() + other_frac;
    if x.shape() != (rows, cols) || x.width() != width || frac > width {
        return Err(ProtoError::Input(format!(
            "a matrix product over {rows}×{cols} shares over Z_2^{width} (with {other_frac} more fractional bits) got {}",
            x.describe()
        )));
    }
    Ok(frac)
}

/// Weights of the d×m shape that `shape` multiplies by, or an error naming both shapes.
pub(crate) fn check_weights_shape(w: &Weights<'_>, shape: MatShape) -> ProtoResult<()> {
    let (rows, cols) = w.shape();
    if (rows, cols) != (shape.d, shape.m) {
        return Err(ProtoError::Input(format!(
            "weights of {rows}×{cols} for the product {shape}, which needs {}×{}",
            shape.d, shape.m
        )));
    }
    Ok(())
}

/// Checks, before anything moves, that the session's keys for products of two shared matrices
/// can run [`matmul_shared`] on `shape`: they exist, and their parameters leave room to flood
/// over the server's 64-bit shares at any tiling of the shape (the noise of the narrowest,
/// d_w = 1, bounds every other's). An error names the shape and what is missing.
pub fn check_shared_product(sess: &Session, shape: MatShape) -> ProtoResult<()> {
    let params = match keys_for(&sess.he, HeUse::Shared) {
        Some(HeKeys::Client(he)) => he.params().clone(),
        Some(HeKeys::Server(he)) => he.params().clone(),
        None => return Err(no_keys()),
    };
    let degree = params.degree();
    let widest = Tiling { shape, degree, n_w: 1, d_w: 1, m_w: shape.m.clamp(1, degree), pack: 0 };
    flood_bits(&params, &widest, 64, 0).map(drop).map_err(|e| {
        ProtoError::Input(format!(
            "a product of two shared matrices ({shape}) needs keys for such products (Session::setup_he_for(HeUse::Shared, HeParams::n8192(), KeySet::Linear)): {e}"
        ))
    })
}

fn no_keys() -> ProtoError {
    ProtoError::Input("HE products need the session's HE keys (Session::setup_he) first".into())
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

/// Z = X·Y with both X (n×d) and Y (d×m) secret-shared over one ring Z_2^ℓ, over the session's
/// HE keys for such products ([`HeUse::Shared`]):
/// X·Y = X·Y_s + X_c·Y_c + (Y_cᵀ·X_sᵀ)ᵀ, where the server's shares act as plaintexts (two HE
/// products, the client's local term added to its share); shares of Z over Z_2^ℓ. The server's
/// shares enter as weights centred below 2^(ℓ−1), so a narrower ring ([`Shares::narrowed`])
/// leaves 64 − ℓ more bits of flooding margin κ and returns fewer bytes.
pub async fn matmul_shared(sess: &mut Session, shape: MatShape, x: &Shares, y: &Shares) -> ProtoResult<Shares> {
    let bits = x.width();
    let frac = product_frac(x, (shape.n, shape.d), y.frac_bits(), bits)?;
    product_frac(y, (shape.d, shape.m), x.frac_bits(), bits)?;
    let (x, y) = (x.as_slice(), y.as_slice());
    let flipped = MatShape { n: shape.m, d: shape.d, m: shape.n };
    let ch = sess.ot.channel();
    let (first, second, local) = match keys_for(&sess.he, HeUse::Shared) {
        Some(HeKeys::Client(he)) => {
            // the server's shares act as weights, centred: below 2^(ℓ−1)
            let first = he.product(ch, shape, x, (bits - 1, bits), &mut sess.rng).await?;
            let second =
                he.product(ch, flipped, &transpose(shape.d, shape.m, y), (bits - 1, bits), &mut sess.rng).await?;
            (first, second, shape.plain_product(x, y))
        }
        Some(HeKeys::Server(he)) => {
            // the server's own shares act as weights, centred: below 2^(ℓ−1)
            let (y, x_t) = (centred(y, bits), centred(&transpose(shape.n, shape.d, x), bits));
            let (y, x_t) = (
                Weights::bounded((shape.d, shape.m), &y, bits - 1)?,
                Weights::bounded((shape.d, shape.n), &x_t, bits - 1)?,
            );
            let first = he.product(ch, (shape, bits), y, Some(x), &mut sess.rng).await?;
            let second = he.product(ch, (flipped, bits), x_t, None, &mut sess.rng).await?;
            (first, second, vec![0; shape.n * shape.m])
        }
        None => return Err(no_keys()),
    };
    let second = transpose(shape.m, shape.n, &second);
    let z = (0..shape.n * shape.m).map(|i| first[i].wrapping_add(second[i]).wrapping_add(local[i])).collect();
    Ok(Shares::new((shape.n, shape.m), z, bits, frac)?)
}

/// Values mod 2^`bits` as signed integers in [−2^(bits−1), 2^(bits−1)) (two's complement).
fn centred(values: &[u64], bits: u32) -> Vec<u64> {
    let shift = 64 - bits;
    values.iter().map(|&v| (((v << shift) as i64) >> shift) as u64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers() -> Workers {
        Workers::new(2, "test-worker").unwrap_or_else(|e| panic!("{e}"))
    }

    /// The server's announced thread count steers the client's tilings: one outside
    /// 1..=MAX_SERVER_THREADS stops the setup with an error naming it, and a real server's is
    /// its workers'.
    #[test]
    fn the_server_announces_its_threads_and_a_client_refuses_an_absurd_count() {
        use crate::backend::CpuBackend;
        use rand::rngs::StdRng;
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
            let be: Arc<dyn Backend> = Arc::new(CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}")));
            let mut rng = StdRng::seed_from_u64(5);
            let (mut cc, mut sc) = Channel::in_memory_pair(std::time::Duration::from_secs(60));
            let (hc, hs) = tokio::join!(
                HeClient::setup(&mut cc, p.clone(), be.clone(), workers(), KeySet::Linear, &mut rng),
                HeServer::setup(&mut sc, p.clone(), be.clone(), workers(), KeySet::Linear)
            );
            hs.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(hc.unwrap_or_else(|e| panic!("{e}")).server_threads(), 2);
            for bad in [0u64, u64::MAX] {
                let fake_server = async {
                    for _ in 0..2 {
                        sc.recv().await?; // the public key, the Galois keys
                    }
                    sc.send_u64s(&[bad]).await
                };
                let (hc, sent) = tokio::join!(
                    HeClient::setup(&mut cc, p.clone(), be.clone(), workers(), KeySet::Linear, &mut rng),
                    fake_server
                );
                sent.unwrap_or_else(|e| panic!("{e}"));
                let err = hc.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(err.contains(&format!("announced {bad} threads")), "{err}");
            }
        });
    }

    /// The worst case for noise: the largest packing (64 results per ciphertext), a long inner
    /// dimension and weights at the declared bound. Every step keeps a margin, and the flooded
    /// result still decrypts to the product.
    #[test]
    fn noise_budget_keeps_a_margin_through_every_step() {
        use crate::backend::CpuBackend;
        use rand::rngs::StdRng;
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let be: Arc<dyn Backend> = Arc::new(CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}")));
        let mut rng = StdRng::seed_from_u64(31);
        let sk = SecretKey::generate(&p, be.as_ref(), &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let server = HeServer {
            params: p.clone(),
            pk: sk.public_key(be.as_ref(), &mut rng).unwrap_or_else(|e| panic!("{e}")),
            galois: Some(sk.galois_keys(max_pack(&p), be.as_ref(), &mut rng).unwrap_or_else(|e| panic!("{e}"))),
            product: ProductKey::None,
            backend: be.clone(),
            workers: workers(),
            exposure: Mutex::default(),
        };
        let shape = MatShape { n: 128, d: 3072, m: 64 };
        let t = Tiling { shape, degree: 8192, n_w: 128, d_w: 64, m_w: 1, pack: 6 };
        let a: Vec<u64> = (0..shape.n * shape.d).map(|_| rng.random()).collect();
        let b: Vec<u64> = (0..shape.d * shape.m)
            .map(|_| if rng.random::<bool>() { 1u64 << 20 } else { (-(1i64 << 20)) as u64 })
            .collect();
        // the inputs as the client sends them: compressed as far as 20-bit weights allow
        let dropped = dropped_bits(&p, &t, 20);
        assert!(dropped >= 4, "{dropped} bits dropped");
        assert!(noise_bound_bits(&t, 20, dropped).ceil() <= noise_bound_bits(&t, 20, 0).ceil() + 1.0);
        let (flood, kappa) = flood_bits(&p, &t, 20, dropped).unwrap_or_else(|e| panic!("{e}"));
        let (_, tj_n, _) = t.tile_counts();
        let seeded: Vec<SeededCiphertext> = (0..tj_n)
            .map(|tj| {
                let pt = Plaintext::new(&p, t.encode_a(&a, 0, tj)).unwrap_or_else(|e| panic!("{e}"));
                let ct = sk.encrypt_seeded(&pt, be.as_ref(), &mut rng).unwrap_or_else(|e| panic!("{e}"));
                let bytes = ct.to_compressed(&p, dropped, be.as_ref()).unwrap_or_else(|e| panic!("{e}"));
                SeededCiphertext::from_compressed(&p, &bytes, be.as_ref()).unwrap_or_else(|e| panic!("{e}")).0
            })
            .collect();
        let fresh = sk.noise_budget(&seeded[0].expand(&p), be.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        let inputs = EncryptedRows::prepare(&p, be.as_ref(), &t, blocking_for(&p, &t), &seeded, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let results = inputs.multiply(&p, be.as_ref(), &t, &b, 0..64).unwrap_or_else(|e| panic!("{e}"));
        let product = sk.noise_budget(&results[0], be.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        let keys = ResponseKeys { pk: &server.pk, galois: server.galois.as_ref(), square: None };
        let mut packed =
            crate::he::matmul::pack_group(&p, keys, &t, &results, be.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        let after_pack = sk.noise_budget(&packed, be.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        packed.rerandomize(&p, &server.pk, be.as_ref(), &mut rng).unwrap_or_else(|e| panic!("{e}"));
        packed.flood(&p, flood, be.as_ref(), &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let after_flood = sk.noise_budget(&packed, be.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        // the budget is log2((q/t)/2) minus the noise's bits
        let half_delta = p.log_q() - p.plain_bits() as f64 - 1.0;
        let bound = noise_bound_bits(&t, 20, dropped);
        println!(
            "noise budget (bits): fresh with {dropped} bits dropped {fresh:.1}, after {tj_n} products {product:.1}, after packing 64 {after_pack:.1} \
             (noise 2^{:.1}, bound 2^{bound:.1}), after flooding 2^{flood} (κ = {kappa}) {after_flood:.1}",
            half_delta - after_pack
        );
        assert!(product > after_pack && half_delta - after_pack <= bound, "the bound covers the packed noise");
        assert!(kappa >= MIN_STAT_BITS && after_flood >= 2.0, "{after_flood}");
        // the flooded, shrunk result still holds 64·(A·B) at the output coefficients
        let pos = t.returned_positions(0);
        let keep: Vec<usize> = pos.iter().map(|x| x.0).collect();
        let shrunk = packed
            .shrink(
                &p,
                &keep,
                crate::he::matmul::response_c0_bits(&p),
                crate::he::matmul::response_c1_bits(&p),
                be.as_ref(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let got = sk.decrypt_shrunk(&shrunk, &keep, be.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        for (v, &(_, _, (i, k))) in got.iter().zip(&pos) {
            let want =
                (0..shape.d).fold(0u64, |s, j| s.wrapping_add(a[i * shape.d + j].wrapping_mul(b[j * shape.m + k])));
            assert_eq!((v >> 6) as u64, want);
        }
    }

    /// With [`KeySet::WithRelin`] the server holds a working relinearization key: its product of
    /// two of the client's ciphertexts decrypts to the product of the plaintexts.
    #[test]
    fn a_relinearization_key_sent_at_setup_multiplies_the_clients_ciphertexts() {
        use crate::backend::CpuBackend;
        use rand::rngs::StdRng;
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
            let be: Arc<dyn Backend> = Arc::new(CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}")));
            let (mut cc, mut sc) = Channel::in_memory_pair(std::time::Duration::from_secs(60));
            let mut rng = StdRng::seed_from_u64(43);
            let (hc, hs) = tokio::join!(
                HeClient::setup(&mut cc, p.clone(), be.clone(), workers(), KeySet::WithRelin, &mut rng),
                HeServer::setup(&mut sc, p.clone(), be.clone(), workers(), KeySet::WithRelin)
            );
            let (hc, hs) = (hc.unwrap_or_else(|e| panic!("{e}")), hs.unwrap_or_else(|e| panic!("{e}")));
            let rlk = hs.relin_key().unwrap_or_else(|| panic!("no relinearization key"));
            let a: Vec<u64> = (0..p.degree()).map(|_| rng.random_range(0..1u64 << 40)).collect();
            let b: Vec<u64> = (0..32).map(|_| rng.random_range(-50i64..50) as u64).collect();
            let encrypt = |v: &[u64], rng: &mut StdRng| {
                let pt = Plaintext::new(&p, v.to_vec()).unwrap_or_else(|e| panic!("{e}"));
                hc.sk.encrypt(&pt, be.as_ref(), rng).unwrap_or_else(|e| panic!("{e}"))
            };
            let (ca, cb) = (encrypt(&a, &mut rng), encrypt(&b, &mut rng));
            let product = ca.mul(&cb, &p, rlk, be.as_ref()).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                hc.sk.decrypt(&product, be.as_ref()).unwrap_or_else(|e| panic!("{e}")).coeffs()
                    == &crate::he::negacyclic_mod_2_64(&a, &b)[..]
            );
        });
    }

    /// What the client decrypts in `runs` products of its fixed share `a` with the server's `w`
    /// (the server's share of A zero, or fresh uniform each run), for results mod
    /// 2^`result_bits`: every value it decrypts, per run.
    #[allow(clippy::too_many_arguments)]
    async fn client_views(
        (hc, hs): (&HeClient, &HeServer),
        (cc, sc): (&mut Channel, &mut Channel),
        (shape, result_bits): (MatShape, u32),
        a: &[u64],
        w: &[u64],
        server_share: bool,
        runs: usize,
    ) -> (Tiling, Vec<Vec<u128>>) {
        let mut rng = rand::make_rng::<ChaCha20Rng>();
        let (mut client_rng, mut server_rng) = (rand::make_rng::<ChaCha20Rng>(), rand::make_rng::<ChaCha20Rng>());
        let mut views = Vec::new();
        let mut tiling = None;
        for _ in 0..runs {
            let a_s: Vec<u64> = (0..a.len()).map(|_| if server_share { rng.random() } else { 0 }).collect();
            let (c, s) = tokio::join!(
                hc.product_decrypted(cc, shape, a, (20, result_bits), &mut client_rng),
                hs.product(
                    sc,
                    (shape, result_bits),
                    Weights::bounded((shape.d, shape.m), w, 20).unwrap_or_else(|e| panic!("{e}")),
                    server_share.then_some(&a_s[..]),
                    &mut server_rng
                )
            );
            let (t, view) = c.unwrap_or_else(|e| panic!("{e}"));
            s.unwrap_or_else(|e| panic!("{e}"));
            tiling = Some(t);
            views.push(view);
        }
        (tiling.unwrap_or_else(|| panic!("no runs")), views)
    }

    /// Six-bit fields [lo, lo + 6) covering all t bits.
    fn fields(t_bits: u32) -> Vec<u32> {
        (0..t_bits - 6).step_by(6).chain([t_bits - 6]).collect()
    }

    /// Two-sample χ² of the pooled histograms of one field, with its degrees of freedom.
    fn chi_square(x: &[Vec<u128>], y: &[Vec<u128>], lo: u32) -> (f64, usize) {
        let histogram = |views: &[Vec<u128>]| {
            let mut h = [0f64; 64];
            views.iter().flatten().for_each(|&v| h[((v >> lo) & 63) as usize] += 1.0);
            h
        };
        let (hx, hy) = (histogram(x), histogram(y));
        let cells: Vec<(f64, f64)> = hx.into_iter().zip(hy).filter(|(a, b)| a + b > 0.0).collect();
        (cells.iter().map(|(a, b)| (a - b) * (a - b) / (a + b)).sum(), cells.len().saturating_sub(1))
    }

    /// Pairs of runs that decrypted the same field value at the same output, summed over outputs.
    fn collisions(views: &[Vec<u128>], lo: u32) -> usize {
        let field = |run: usize, i: usize| (views[run][i] >> lo) & 63;
        (0..views[0].len())
            .map(|i| {
                (0..views.len())
                    .flat_map(|r| (0..r).map(move |q| (q, r)))
                    .filter(|&(q, r)| field(q, i) == field(r, i))
                    .count()
            })
            .sum()
    }

    /// The client's view of a product: for fixed client inputs and two different weight
    /// matrices, everything the client decrypts — every bit of the plaintext it receives at every
    /// output, before the shift and the reduction to the result's ring — has the same
    /// distribution: below the packing shift the bits are zero, above it uniform and fresh in
    /// every run. Checked for every tiling the cost model picks (packed under the linear set,
    /// unpacked under n8192), with the
    /// server's share of A zero (the client holds the whole input, whose signed entries carry)
    /// and uniform, for results over Z_2^64 and narrowed to Z_2^44. Per field of six bits: a two-sample χ² of
    /// the pooled histograms, and the number of runs that repeat a value at the same output
    /// against what uniform bits give (a deterministic function of the weights repeats always).
    #[test]
    fn client_view_does_not_depend_on_the_weights() {
        use crate::backend::CpuBackend;
        use rand::rngs::StdRng;
        const RUNS: usize = 8;
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            // the linear set packs (its cost model always merges results now: a returned
            // ciphertext costs more than a key switch); n8192 has no special prime and returns
            // every result unpacked
            let mut seen = Vec::new();
            for p in [HeParams::linear(), HeParams::n8192()] {
            let p = p.unwrap_or_else(|e| panic!("{e}"));
            let be: Arc<dyn Backend> = Arc::new(CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}")));
            let (mut cc, mut sc) = Channel::in_memory_pair(std::time::Duration::from_secs(60));
            let mut rng = StdRng::seed_from_u64(41);
            let (hc, hs) = tokio::join!(
                HeClient::setup(&mut cc, p.clone(), be.clone(), workers(), KeySet::Linear, &mut rng),
                HeServer::setup(&mut sc, p.clone(), be.clone(), workers(), KeySet::Linear)
            );
            let (mut hc, hs) = (hc.unwrap_or_else(|e| panic!("{e}")), hs.unwrap_or_else(|e| panic!("{e}")));
            let shape = MatShape { n: 16, d: 64, m: 32 };
            // small signed fixed-point inputs: the client's share alone carries past 2^64
            let a: Vec<u64> = (0..shape.n * shape.d).map(|_| rng.random_range(-(1i64 << 24)..1 << 24) as u64).collect();
            let w_random: Vec<u64> = (0..shape.d * shape.m).map(|_| rng.random_range(-(1i64 << 20)..1 << 20) as u64).collect();
            let w_flat = vec![(1u64 << 20) - 1; shape.d * shape.m];
            for bps in [1e15, 1e9, 4e8, 1e8, 1e7, 1e6] {
                let net = CostModel { name: "sweep", bandwidth_bps: bps, latency_s: 0.0 };
                let tiling = tiling_for(&p, shape, &net, hc.server_threads(), 64);
                if seen.contains(&tiling) {
                    continue;
                }
                seen.push(tiling);
                hc.set_network(net);
                for (server_share, bits) in [(false, 64), (true, 64), (true, 44)] {
                    let ch = (&mut cc, &mut sc);
                    let (t, x) = client_views((&hc, &hs), ch, (shape, bits), &a, &w_random, server_share, RUNS).await;
                    let ch = (&mut cc, &mut sc);
                    let (_, y) = client_views((&hc, &hs), ch, (shape, bits), &a, &w_flat, server_share, RUNS).await;
                    let what = format!("{t:?}, server share {}", if server_share { "uniform" } else { "zero" });
                    let t_bits = result_plain_bits(&p, t.pack, bits);
                    assert!(x.iter().chain(&y).flatten().all(|&v| v >> t_bits == 0), "bits above {t_bits}, {what}");
                    for lo in fields(t_bits) {
                        let (chi, dof) = chi_square(&x, &y, lo);
                        let limit = dof as f64 + 8.0 * (2.0 * dof as f64).sqrt() + 10.0;
                        assert!(chi <= limit, "bits {lo}..{}: χ² {chi:.0} > {limit:.0} ({dof} dof), {what}", lo + 6);
                        // uniform bits above the shift give 2^-random collisions per pair
                        let random = (lo + 6).saturating_sub(lo.max(t.pack)).min(6);
                        let pairs = (shape.n * shape.m * RUNS * (RUNS - 1) / 2) as f64;
                        let expected = pairs / 2f64.powi(random as i32);
                        let limit = expected + 8.0 * expected.sqrt() + 10.0;
                        for (name, views) in [("random", &x), ("flat", &y)] {
                            let c = collisions(views, lo) as f64;
                            assert!(
                                c <= limit && (random < 6 || c >= expected - 8.0 * expected.sqrt() - 10.0),
                                "bits {lo}..{}: {c} repeats with {name} weights, uniform bits give {expected:.0}, {what}",
                                lo + 6
                            );
                        }
                    }
                }
            }
            }
            let packs: Vec<u32> = seen.iter().map(|t| t.pack).collect();
            assert!(packs.contains(&0) && packs.iter().any(|&l| l > 0), "tilings exercised: {seen:?}");
        });
    }

    #[test]
    #[ignore = "prints the tiling trade-off for the bench shapes"]
    fn tiling_trade_offs() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let cost = crate::he::matmul::tiling_cost(&p, &CostModel::LAN, 1, 64);
        let shape = MatShape { n: 128, d: 768, m: 3072 };
        let mut all = Vec::new();
        for n_w in 1..=128usize {
            for l in 0..=6u32 {
                let d_w = 1usize << l;
                let m_w = 3072.min(8192 / (n_w * d_w));
                if m_w == 0 {
                    continue;
                }
                let t = Tiling { shape, degree: 8192, n_w, d_w, m_w, pack: l };
                let (a, b, c) = t.tile_counts();
                let bytes = (a * b) as f64 * cost.input_bytes
                    + t.returned() as f64 * cost.output_bytes
                    + (128 * 3072) as f64 * cost.kept_bytes;
                let secs = t.estimate(&cost) - bytes / cost.bandwidth;
                all.push((bytes / 1e6, secs, n_w, d_w, m_w, a * b, a * c));
            }
        }
        all.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut best = f64::INFINITY;
        for r in all {
            if r.1 < best {
                best = r.1;
                println!(
                    "{:.1} MB, {:.2} s single-core: n_w {} d_w {} m_w {} in {} out {}",
                    r.0, r.1, r.2, r.3, r.4, r.5, r.6
                );
            }
        }
    }

    #[test]
    fn tilings_for_the_bench_shapes() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        for shape in [MatShape { n: 128, d: 768, m: 3072 }, MatShape { n: 128, d: 3072, m: 768 }] {
            let t = tiling_for(&p, shape, &CostModel::WAN, 2, 64);
            assert!(t.pack > 0, "{t:?}");
            let (a, b, c) = t.tile_counts();
            let cost = crate::he::matmul::tiling_cost(&p, &CostModel::WAN, 2, 64);
            let bytes = (a * b) as f64 * cost.input_bytes
                + t.returned() as f64 * cost.output_bytes
                + (shape.n * shape.m) as f64 * cost.kept_bytes;
            let (flood, kappa) = flood_bits(&p, &t, 20, 0).unwrap_or_else(|e| panic!("{e}"));
            println!(
                "{shape}: {t:?} tiles {a}×{b}×{c}, weights {}, products {}, {:.1} MB, flood 2^{flood} (κ = {kappa}): \
                 statistical distance ≤ 2^{:.1} for the {} outputs",
                b * c,
                a * b * c,
                bytes / 1e6,
                ((shape.n * shape.m) as f64).log2() - kappa as f64,
                shape.n * shape.m
            );
        }
    }
}
