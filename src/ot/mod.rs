//! Oblivious transfer: random OT in large batches from an OT extension (`cryprot-ot`: IKNP, or
//! silent OT), and the derived chosen-input OTs the non-linear protocols use — additively
//! correlated OT over Z_2^w and 1-of-N OT.
//!
//! Everything runs on a [`Link`]: the extension on its own sub-connections, the derivation
//! messages on an own channel; all bytes and rounds are charged to the link's meter. Each party is
//! sender in one direction and receiver in the other, so both roles exist on both sides.
//!
//! Random OTs are generated in batches ahead of use into a pool ([`Ot::prepare`]); a protocol
//! that works in batches can have the next batch generated in the background while it uses the
//! current one ([`Ot::prefetch`]), so that the extension's compute and round trips overlap the
//! online phase instead of alternating with it.
//!
//! Security (semi-honest): the extension is the library's semi-honest IKNP (Ishai et al.,
//! CRYPTO 2003) with Simplest-OT base OTs, or silent OT (Boyle et al. / Ferret-style, with
//! expand-convolute codes). Keys are turned into pads by the backend's tweakable
//! correlation-robust hash; every hash in a session gets a fresh tweak.

mod derived;
mod kind;

pub use derived::{OneOfN, cross_term_widths};
pub use kind::OtKind;

use std::sync::Arc;
use std::time::Duration;

use cryprot_core::aes_hash::FIXED_KEY_HASH;
use cryprot_core::alloc::HugePageMemory;
use cryprot_core::tokio_rayon::spawn_compute;
use cryprot_ot::extension::{SemiHonestOtExtensionReceiver, SemiHonestOtExtensionSender};
use cryprot_ot::silent_ot::{SemiHonestSilentOtReceiver, SemiHonestSilentOtSender};
use cryprot_ot::{RandChoiceRotReceiver, RotSender};
use rand::RngExt;
use rand::rngs::ChaCha20Rng;
use thiserror::Error;
use tracing::instrument::WithDispatch;

use crate::backend::{Backend, Block};
use crate::net::{Background, Channel, Link, Meter, NetError, Party};

/// Errors of the OT layer.
#[derive(Debug, Error)]
pub enum OtError {
    /// The link failed (peer gone, timeout, garbage).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The OT extension library reported an error (usually: the peer went away).
    #[error("{kind} OT extension failed during step `{step}`: {reason}")]
    Extension {
        /// Which extension.
        kind: OtKind,
        /// Protocol step that was running.
        step: String,
        /// The library's message.
        reason: String,
    },
    /// The OT extension did not finish in time.
    #[error("{kind} OT extension did not finish within {} s during step `{step}`", .after.as_secs_f64())]
    Timeout {
        /// Which extension.
        kind: OtKind,
        /// Protocol step that was running.
        step: String,
        /// The limit.
        after: Duration,
    },
    /// Arguments that cannot describe an OT batch.
    #[error("invalid OT request: {0}")]
    Invalid(String),
    /// The backend failed hashing the OT keys.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
}

/// Result alias of the OT layer.
pub type OtResult<T> = Result<T, OtError>;

/// Random OTs as seen by the sender: for OT `i`, two independent random keys.
#[derive(Debug)]
pub struct RandomOtSender {
    /// `keys[i] = [k_i0, k_i1]`.
    pub keys: Vec<[Block; 2]>,
}

/// Random OTs as seen by the receiver: a random choice bit and the chosen key.
#[derive(Debug)]
pub struct RandomOtReceiver {
    /// `choices[i] = c_i`.
    pub choices: Vec<bool>,
    /// `keys[i] = k_{i,c_i}`.
    pub keys: Vec<Block>,
}

/// Sizes the global rayon pool for the OT extension library. Its IKNP sender parks a rayon
/// worker while it waits for rows from the network, so with as few workers as cores (2 here) a
/// process running both parties, or several sessions, can run out of workers and stall. Call once
/// at process start, before any OT; later calls (and a pool already built) are harmless.
pub fn configure_extension_threads() {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(4) * 4;
    // Err only means the global pool already exists: then it is the embedder's choice.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
}

/// Round trips of one extension call, from the protocols' message flow: IKNP sends one message
/// (receiver → sender); silent OT runs an IKNP batch for its base OTs, then the sender's PPRF
/// message. The first call in each direction adds the base OTs' round trip.
const IKNP_ROUNDS: u64 = 1;
const SILENT_ROUNDS: u64 = 2;
const BASE_OT_ROUNDS: u64 = 1;

/// One party's OT engine: both directions, both extension kinds.
pub struct Ot {
    party: Party,
    channel: Channel,
    backend: Arc<dyn Backend>,
    source: Source,
    next_tweak: u64,
    timeout: Duration,
    pools: [Pool; 2],
    /// The batch generating in the background, if any ([`Ot::prefetch`]).
    pending: Option<Pending>,
}

/// Where the random OTs come from.
enum Source {
    /// The OT extensions over the link (every real run).
    Extension(Box<Extensions>),
    /// The ideal functionality of [`Ot::ideal_pair`] (tests only).
    Ideal(IdealOt),
    /// The extensions are lent to the background batch ([`Ot::prefetch`]); they come back when
    /// it is settled, and are lost if it panicked.
    Lent,
}

/// A batch of random OTs generating in the background ([`Ot::prefetch`]).
struct Pending {
    kind: OtKind,
    task: tokio::task::JoinHandle<Generated>,
}

/// What a background batch hands back: the extensions it borrowed, its OTs, and its step with
/// the round trips it took, to be booked when it is settled.
struct Generated {
    extensions: Box<Extensions>,
    ots: OtResult<(Vec<[Block; 2]>, RandomOtReceiver)>,
    step: Background,
    rounds: u64,
}

/// Both extension kinds, both roles.
struct Extensions {
    iknp_sender: SemiHonestOtExtensionSender,
    iknp_receiver: SemiHonestOtExtensionReceiver,
    silent_sender: SilentSender,
    silent_receiver: SemiHonestSilentOtReceiver,
}

/// The silent extension's sender, with the CSPRNG that draws each call's correlation Δ.
struct SilentSender {
    ext: SemiHonestSilentOtSender,
    rng: ChaCha20Rng,
}

/// An in-process random-OT functionality for protocol unit tests: both parties draw batch k of
/// a direction from one stream keyed by the shared seed, the direction and k, so the sender's
/// key pairs and the receiver's choices and chosen keys agree with no message at all. No
/// security whatsoever (each party could compute the other's view); never reachable from a
/// link, only from [`Ot::ideal_pair`].
struct IdealOt {
    seed: [u8; 32],
    /// Batches drawn so far with this party as sender, and as receiver.
    sent: u64,
    received: u64,
}

impl IdealOt {
    /// The next batch: `send` OTs with `party` as sender, `receive` with it as receiver.
    fn batch(&mut self, party: Party, send: usize, receive: usize) -> (Vec<[Block; 2]>, RandomOtReceiver) {
        let sent = self.draw(party, self.sent, send).map(|(keys, _)| keys).collect();
        let (keys, choices) =
            self.draw(party.peer(), self.received, receive).map(|(k, c)| (k[usize::from(c)], c)).unzip();
        self.sent += 1;
        self.received += 1;
        (sent, RandomOtReceiver { choices, keys })
    }

    /// Batch `batch` of `n` OTs with `sender` sending: per OT (k0, k1, choice).
    fn draw(&self, sender: Party, batch: u64, n: usize) -> impl Iterator<Item = ([Block; 2], bool)> {
        use rand::{RngExt, SeedableRng};
        use sha2::Digest;
        let key = sha2::Sha256::new()
            .chain_update(b"secmoe ideal OT")
            .chain_update(self.seed)
            .chain_update([u8::from(sender == Party::Server)])
            .chain_update(batch.to_le_bytes())
            .finalize();
        let mut rng = rand::rngs::ChaCha20Rng::from_seed(key.into());
        (0..n).map(move |_| {
            let k0 = Block::from([rng.random::<u64>(), rng.random::<u64>()]);
            let k1 = Block::from([rng.random::<u64>(), rng.random::<u64>()]);
            ([k0, k1], rng.random::<bool>())
        })
    }
}

impl std::fmt::Debug for Ot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ot").field("party", &self.party).field("backend", &self.backend.name()).finish_non_exhaustive()
    }
}

impl Ot {
    /// Sets up OT on `link`. Both parties must call this at the same point of their run; it
    /// opens streams but sends no OT traffic yet (base OTs run on first use).
    pub async fn new(link: &mut Link, backend: Arc<dyn Backend>) -> OtResult<Ot> {
        // Sub-connections pair up by creation order: the client's sender meets the server's
        // receiver on the first, and so on.
        let (s0, s1, s2, s3) =
            (link.sub_connection(), link.sub_connection(), link.sub_connection(), link.sub_connection());
        let (iknp_s, iknp_r, silent_s, silent_r) = match link.party() {
            Party::Client => (s0, s1, s2, s3),
            Party::Server => (s1, s0, s3, s2),
        };
        let channel = link.open_channel().await?;
        let extensions = Extensions {
            iknp_sender: SemiHonestOtExtensionSender::new(iknp_s),
            iknp_receiver: SemiHonestOtExtensionReceiver::new(iknp_r),
            silent_sender: SilentSender { ext: SemiHonestSilentOtSender::new(silent_s), rng: rand::make_rng() },
            silent_receiver: SemiHonestSilentOtReceiver::new(silent_r),
        };
        Ok(Ot {
            party: link.party(),
            channel,
            backend,
            source: Source::Extension(Box::new(extensions)),
            next_tweak: 0,
            timeout: link.timeout(),
            pools: Default::default(),
            pending: None,
        })
    }

    /// Both parties' engines (client, server) in this process, for protocol unit tests: the
    /// messages go over an in-memory channel pair (metered like the link's) and the random OTs
    /// come from an ideal functionality keyed by `seed` — no OT traffic, no security, exact and
    /// fast. Real runs use [`Ot::new`].
    pub fn ideal_pair(backend: Arc<dyn Backend>, seed: [u8; 32], timeout: Duration) -> (Ot, Ot) {
        let (client, server) = Channel::in_memory_pair(timeout);
        let engine = |party, channel| Ot {
            party,
            channel,
            backend: backend.clone(),
            source: Source::Ideal(IdealOt { seed, sent: 0, received: 0 }),
            next_tweak: 0,
            timeout,
            pools: Default::default(),
            pending: None,
        };
        (engine(Party::Client, client), engine(Party::Server, server))
    }

    /// The meter OT traffic is charged to.
    pub fn meter(&self) -> &Meter {
        self.channel.meter()
    }

    /// This party's role.
    pub fn party(&self) -> Party {
        self.party
    }

    /// The engine's message channel, for the protocols built on the OTs (their messages then
    /// stay in order with the OT messages).
    pub fn channel(&mut self) -> &mut Channel {
        &mut self.channel
    }

    /// Reserves `n` fresh tweaks; both parties reserve in the same order, so they agree.
    fn tweaks(&mut self, n: usize) -> u64 {
        let base = self.next_tweak;
        self.next_tweak += n as u64;
        base
    }

    /// Generates random OTs ahead of use (the offline phase) until the pool holds at least `send`
    /// with this party as sender and `receive` as receiver, both directions at once (a batch in
    /// the background is settled first and counts). Later requests that fit in what is left are
    /// served from the pool without a round trip. The peer must call this with the two counts
    /// swapped, at the same point of the run, so that both pools stay in step.
    ///
    /// A silent batch smaller than [`SILENT_MIN`] runs on IKNP instead (per direction; both
    /// parties decide alike from the counts): below it the silent extension's noise is too light.
    #[tracing::instrument(level = "debug", skip(self), fields(party = %self.party))]
    pub async fn prepare(&mut self, kind: OtKind, send: usize, receive: usize) -> OtResult<()> {
        self.prepare_carrying(kind, send, receive, None).await
    }

    /// [`Ot::prepare`] for OTs that will carry `payload_bits` bits each on average (messages,
    /// corrections; both directions): a silent batch is then cut into calls as small as
    /// [`silent_call_max`] allows for that payload. Both parties must state the same payload.
    #[tracing::instrument(level = "debug", skip(self), fields(party = %self.party))]
    pub async fn prepare_carrying(
        &mut self,
        kind: OtKind,
        send: usize,
        receive: usize,
        payload_bits: Option<f64>,
    ) -> OtResult<()> {
        self.settle().await?;
        let pool = &self.pools[kind as usize];
        let (send, receive) = (send.saturating_sub(pool.sent_left()), receive.saturating_sub(pool.received_left()));
        if send == 0 && receive == 0 {
            return Ok(());
        }
        let party = self.party;
        let meter = self.channel.meter().clone();
        let extensions = match &mut self.source {
            Source::Extension(extensions) => extensions,
            Source::Ideal(ideal) => {
                let (sent, received) = ideal.batch(party, send, receive);
                self.pools[kind as usize].add(sent, received);
                return Ok(());
            }
            Source::Lent => return Err(lost()),
        };
        let _s = meter.scope(kind.step_name());
        // boxed: the extensions' futures are deep, and every protocol's future would nest them
        let calls = silent_call_max(payload_bits);
        let (ots, rounds) =
            Box::pin(generate(extensions, (kind, calls), send, receive, self.timeout, Traffic::Open(&meter))).await;
        meter.add_rounds(rounds);
        let (sent, received) = ots?;
        self.pools[kind as usize].add(sent, received);
        Ok(())
    }

    /// Starts generating `send` more random OTs with this party as sender and `receive` as
    /// receiver in the background, for a later step: the protocol goes on with what the pool
    /// holds, and the batch joins the pool when a request no longer fits in it or the next
    /// [`Ot::prepare`] — points both parties reach alike, so both pools stay in step. Its bytes
    /// and round trips are booked to its own step, nested in the step open now, when it joins.
    /// One batch at a time: a batch still pending is settled first. The peer must call this
    /// with the two counts swapped, at the same point of the run.
    #[tracing::instrument(level = "debug", skip(self), fields(party = %self.party))]
    pub async fn prefetch(&mut self, kind: OtKind, send: usize, receive: usize) -> OtResult<()> {
        self.prefetch_carrying(kind, send, receive, None).await
    }

    /// [`Ot::prefetch`] for OTs that will carry `payload_bits` bits each on average, as
    /// [`Ot::prepare_carrying`].
    #[tracing::instrument(level = "debug", skip(self), fields(party = %self.party))]
    pub async fn prefetch_carrying(
        &mut self,
        kind: OtKind,
        send: usize,
        receive: usize,
        payload_bits: Option<f64>,
    ) -> OtResult<()> {
        self.settle().await?;
        if send == 0 && receive == 0 {
            return Ok(());
        }
        let mut extensions = match std::mem::replace(&mut self.source, Source::Lent) {
            Source::Extension(extensions) => extensions,
            Source::Ideal(mut ideal) => {
                let (sent, received) = ideal.batch(self.party, send, receive);
                self.source = Source::Ideal(ideal);
                self.pools[kind as usize].add(sent, received);
                return Ok(());
            }
            Source::Lent => return Err(lost()),
        };
        let step = self.channel.meter().background(kind.step_name());
        let (timeout, calls) = (self.timeout, silent_call_max(payload_bits));
        let task = tokio::spawn(async move {
            let (ots, rounds) =
                generate(&mut extensions, (kind, calls), send, receive, timeout, Traffic::Background(&step)).await;
            Generated { extensions, ots, step, rounds }
        });
        self.pending = Some(Pending { kind, task });
        Ok(())
    }

    /// Waits for the background batch, if any: its OTs join the pool, its step is booked.
    async fn settle(&mut self) -> OtResult<()> {
        let Some(Pending { kind, task }) = self.pending.take() else {
            return Ok(());
        };
        let Generated { extensions, ots, step, rounds } =
            task.await.map_err(|e| OtError::Invalid(format!("the background OT batch did not finish: {e}")))?;
        self.source = Source::Extension(extensions);
        self.channel.meter().book(step, rounds);
        let (sent, received) = ots?;
        self.pools[kind as usize].add(sent, received);
        Ok(())
    }

    /// Random OTs left in the pool: (as sender, as receiver).
    pub fn prepared(&self, kind: OtKind) -> (usize, usize) {
        let pool = &self.pools[kind as usize];
        (pool.sent_left(), pool.received_left())
    }

    /// `n` random OTs with this party as sender: from the pool, extended first by a fresh batch
    /// if it holds fewer than `n` (the peer's receiving side does the same, so both stay in step).
    #[tracing::instrument(level = "debug", skip(self), fields(party = %self.party))]
    pub async fn random_send(&mut self, kind: OtKind, n: usize) -> OtResult<RandomOtSender> {
        if n > self.pools[kind as usize].sent_left() {
            self.prepare(kind, n, 0).await?;
        }
        Ok(RandomOtSender { keys: self.pools[kind as usize].take_sent(n) })
    }

    /// `n` random OTs with this party as receiver (random choice bits from a CSPRNG), as
    /// [`Ot::random_send`].
    #[tracing::instrument(level = "debug", skip(self), fields(party = %self.party))]
    pub async fn random_receive(&mut self, kind: OtKind, n: usize) -> OtResult<RandomOtReceiver> {
        if n > self.pools[kind as usize].received_left() {
            self.prepare(kind, 0, n).await?;
        }
        Ok(self.pools[kind as usize].take_received(n))
    }
}

impl Drop for Ot {
    /// A batch still generating in the background is stopped with its engine.
    fn drop(&mut self) {
        if let Some(pending) = &self.pending {
            pending.task.abort();
        }
    }
}

/// The error for extensions lost with a background batch that panicked.
fn lost() -> OtError {
    OtError::Invalid("the OT extensions were lost with a background batch that failed".into())
}

/// Runs one batch on the extensions, `send` OTs with this party as sender and `receive` as
/// receiver, both directions at once, silent batches in calls of at most `call_max`; returns
/// them with the round trips they took (IKNP's first use in a direction adds its base OTs'
/// round trip).
async fn generate(
    extensions: &mut Extensions,
    (kind, call_max): (OtKind, usize),
    send: usize,
    receive: usize,
    timeout: Duration,
    traffic: Traffic<'_>,
) -> (OtResult<(Vec<[Block; 2]>, RandomOtReceiver)>, u64) {
    let (by_send, by_receive) = (extension_for(kind, send), extension_for(kind, receive));
    let rounds = |ext: OtKind, n: usize, has_base_ots: bool| match (n, ext) {
        (0, _) => 0,
        (_, OtKind::Iknp) => IKNP_ROUNDS + if has_base_ots { 0 } else { BASE_OT_ROUNDS },
        (_, OtKind::Silent) => SILENT_ROUNDS * silent_calls(n, call_max).count() as u64,
    };
    let round_trips = rounds(by_send, send, extensions.iknp_sender.has_base_ots()).max(rounds(
        by_receive,
        receive,
        extensions.iknp_receiver.has_base_ots(),
    ));
    let Extensions { iknp_sender, iknp_receiver, silent_sender, silent_receiver } = extensions;
    let sending = async {
        match by_send {
            OtKind::Iknp => iknp_send(iknp_sender, timeout, traffic, send).await,
            OtKind::Silent => silent_send(silent_sender, timeout, traffic, (send, call_max)).await,
        }
    };
    let receiving = async {
        match by_receive {
            OtKind::Iknp => iknp_receive(iknp_receiver, timeout, traffic, receive).await,
            OtKind::Silent => silent_receive(silent_receiver, timeout, traffic, (receive, call_max)).await,
        }
    };
    let (sent, received) = tokio::join!(sending, receiving);
    (sent.and_then(|sent| Ok((sent, received?))), round_trips)
}

/// Where an extension call's traffic is counted: the link's meter, under the step open now, or
/// a background step's own count.
#[derive(Clone, Copy)]
enum Traffic<'a> {
    Open(&'a Meter),
    Background(&'a Background),
}

impl Traffic<'_> {
    fn count<F>(self, fut: F) -> WithDispatch<F> {
        match self {
            Traffic::Open(meter) => meter.count_library_traffic(fut),
            Traffic::Background(step) => step.count_library_traffic(fut),
        }
    }

    fn step(self) -> String {
        match self {
            Traffic::Open(meter) => meter.current_step(),
            Traffic::Background(step) => step.step().to_string(),
        }
    }
}

/// Random OTs generated ahead of use, per extension kind: taken from the front (an index, so
/// that taking does not move what is left).
#[derive(Debug, Default)]
struct Pool {
    sent: Vec<[Block; 2]>,
    sent_used: usize,
    choices: Vec<bool>,
    received: Vec<Block>,
    received_used: usize,
}

impl Pool {
    fn sent_left(&self) -> usize {
        self.sent.len() - self.sent_used
    }

    fn received_left(&self) -> usize {
        self.received.len() - self.received_used
    }

    fn add(&mut self, sent: Vec<[Block; 2]>, received: RandomOtReceiver) {
        if self.sent_left() == 0 {
            (self.sent, self.sent_used) = (sent, 0); // moved, not copied
        } else {
            self.sent.drain(..self.sent_used);
            self.sent_used = 0;
            self.sent.extend(sent);
        }
        if self.received_left() == 0 {
            (self.choices, self.received, self.received_used) = (received.choices, received.keys, 0);
        } else {
            self.choices.drain(..self.received_used);
            self.received.drain(..self.received_used);
            self.received_used = 0;
            self.choices.extend(received.choices);
            self.received.extend(received.keys);
        }
    }

    fn take_sent(&mut self, n: usize) -> Vec<[Block; 2]> {
        if self.sent_used == 0 && n == self.sent.len() {
            return std::mem::take(&mut self.sent); // the whole pool: moved, not copied
        }
        let r = self.sent_used..self.sent_used + n;
        self.sent_used += n;
        self.sent[r].to_vec()
    }

    fn take_received(&mut self, n: usize) -> RandomOtReceiver {
        if self.received_used == 0 && n == self.received.len() {
            let (choices, keys) = (std::mem::take(&mut self.choices), std::mem::take(&mut self.received));
            return RandomOtReceiver { choices, keys };
        }
        let r = self.received_used..self.received_used + n;
        self.received_used += n;
        RandomOtReceiver { choices: self.choices[r.clone()].to_vec(), keys: self.received[r].to_vec() }
    }
}

async fn iknp_send(
    ext: &mut SemiHonestOtExtensionSender,
    timeout: Duration,
    traffic: Traffic<'_>,
    n: usize,
) -> OtResult<Vec<[Block; 2]>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    // The extension works in multiples of 128 OTs; the surplus is dropped.
    let mut keys = run_extension(timeout, traffic, OtKind::Iknp, ext.send(n.next_multiple_of(128))).await?;
    keys.truncate(n);
    Ok(keys)
}

async fn iknp_receive(
    ext: &mut SemiHonestOtExtensionReceiver,
    timeout: Duration,
    traffic: Traffic<'_>,
    n: usize,
) -> OtResult<RandomOtReceiver> {
    if n == 0 {
        return Ok(RandomOtReceiver { choices: Vec::new(), keys: Vec::new() });
    }
    let fut = ext.rand_choice_receive(n.next_multiple_of(128));
    let (mut keys, choices) = run_extension(timeout, traffic, OtKind::Iknp, fut).await?;
    keys.truncate(n);
    received(keys, choices.iter().map(|c| bool::from(*c)), n)
}

/// Smallest batch the silent extension runs; smaller ones run on IKNP ([`Ot::prepare`]).
///
/// `cryprot-ot` 0.3.0 sizes the regular noise of n silent OTs for 128-bit security by its own
/// criterion — t = 248 points, one per partition of 2n/t code positions rounded up to an even
/// number, at least 4 — and drops the points that land beyond the 2n positions of the code. For
/// small n whole partitions lie beyond: at 128 OTs only 64 of the 248 points remain (about
/// 2^-33 by the same criterion), at 4096 about 241. From 2^16 on at least 247 remain (≥ 127 bits);
/// see [`silent_noise_weight`].
pub const SILENT_MIN: usize = 1 << 16;

/// The extension that runs a batch of `n` random OTs asked of `kind`.
fn extension_for(kind: OtKind, n: usize) -> OtKind {
    if kind == OtKind::Silent && n < SILENT_MIN { OtKind::Iknp } else { kind }
}

/// Expected number of the silent extension's regular-noise points for a batch of `n` OTs that
/// fall inside its code, as `cryprot-ot` 0.3.0 sizes them (with its x86 layout of 8 interleaved
/// trees): the weight its LPN security rests on, ≈ 0.515 bits per point.
pub fn silent_noise_weight(n: usize) -> f64 {
    let (code, trees) = (2 * n, 8);
    let points = (128.0 / -(0.7f64).log2()) as usize; // 248: minimum distance 0.15
    let points = if code < 512 { points.max(64) } else { points }.next_multiple_of(trees);
    let width = (code.div_ceil(points)).next_multiple_of(2).max(4);
    (0..points)
        .map(|i| {
            // tree i's point is uniform over forest·8·width + 8·p + i mod 8, p < width
            let start = (i / trees) * trees * width + i % trees;
            code.saturating_sub(start).div_ceil(trees).min(width) as f64 / width as f64
        })
        .sum()
}

/// `n` random OTs as the silent extension's sender. Each call makes correlated OTs
/// (c_j, c_j ⊕ Δ) for a fresh Δ, with the receiver's choice bit in the least significant bit of
/// its key (the library's packed choices); with that bit cleared from the sender's keys and Δ,
/// the random OT is (H(c_j), H(c_j ⊕ Δ)) under the fixed-key correlation-robust hash — the
/// pairs the library's `random_send` makes, hashed straight into the batch.
///
/// The calls of a batch work in one buffer: a fresh one per call (tens of MB of huge pages,
/// mapped and zeroed by the kernel on first touch) cost about a tenth of a GeLU row's CPU. It
/// is not kept beyond the batch, which would raise the peak memory of the rows that run few
/// large calls (LayerNorm: 0.36 → 0.46 GB).
async fn silent_send(
    sender: &mut SilentSender,
    timeout: Duration,
    traffic: Traffic<'_>,
    (n, call_max): (usize, usize),
) -> OtResult<Vec<[Block; 2]>> {
    let (mut keys, mut buf) = (Vec::with_capacity(n), HugePageMemory::default());
    for part in silent_calls(n, call_max) {
        let delta: Block = sender.rng.random();
        fit(&mut buf, SemiHonestSilentOtSender::ots_buf_size(part));
        run_extension(timeout, traffic, OtKind::Silent, sender.ext.correlated_send_into(part, delta, &mut buf)).await?;
        let start = keys.len();
        keys.resize(start + part, [Block::ZERO; 2]);
        (buf, keys) = spawn_compute(move || {
            let delta = delta & Block::MASK_LSB;
            for (pair, &c) in keys[start..].iter_mut().zip(&buf[..part]) {
                let c = c & Block::MASK_LSB;
                *pair = [c, c ^ delta];
            }
            FIXED_KEY_HASH.cr_hash_slice_mut(bytemuck::cast_slice_mut(&mut keys[start..]));
            (buf, keys)
        })
        .await
        .map_err(|_| OtError::Invalid("the silent sender's hashing panicked".into()))?;
    }
    Ok(keys)
}

/// `n` random OTs as the silent extension's receiver, its calls in one buffer (see
/// [`silent_send`]).
async fn silent_receive(
    ext: &mut SemiHonestSilentOtReceiver,
    timeout: Duration,
    traffic: Traffic<'_>,
    (n, call_max): (usize, usize),
) -> OtResult<RandomOtReceiver> {
    let (mut keys, mut bits, mut buf) = (Vec::with_capacity(n), Vec::with_capacity(n), HugePageMemory::default());
    for part in silent_calls(n, call_max) {
        fit(&mut buf, SemiHonestSilentOtReceiver::ots_buf_size(part));
        let choices = run_extension(timeout, traffic, OtKind::Silent, ext.random_receive_into(part, &mut buf)).await?;
        keys.extend_from_slice(&buf[..part]);
        bits.extend(choices.iter().take(part).map(|c| bool::from(*c)));
    }
    received(keys, bits.into_iter(), n)
}

/// Sets `buf` to `len` blocks: the memory it has where that is large enough (the call
/// overwrites it), else a fresh allocation. `cryprot-core` 0.3.2 reports a huge-page
/// buffer's capacity in bytes while `set_len` and `grow_zeroed` compare it with a count of
/// elements (so they could hand out a length beyond the allocation); the room is reckoned here
/// in blocks from the bytes, which stays within the allocation either way.
fn fit(buf: &mut HugePageMemory<Block>, len: usize) {
    if buf.capacity() / std::mem::size_of::<Block>() >= len {
        buf.set_len(len);
    } else {
        *buf = HugePageMemory::zeroed(len);
    }
}

/// Most random OTs one silent extension call makes: a batch above it runs as several calls of
/// near-equal size (each at least [`SILENT_MIN`]), one after the other, so that the library's
/// working buffers (several blocks per OT) are those of one call, not of the whole batch. Each
/// call costs its own round trips (two) and base OTs (≈ 248 GGM trees of depth
/// log2(2n/248): ≈ 178 kB at 2^21 OTs).
///
/// The size trades those bytes against the LPN encoding's speed, which depends on whether its
/// code (32 bytes per OT, read at 7 random places per output) stays in the caches: measured
/// single-threaded here (`cryprot-codes` 0.2.3), ≈ 52 ns per OT up to 2^18, 97 at 2^19, 131 at
/// 2^20, 163 at 2^21. A 64-bit comparison's OTs carry few bits, so this default keeps it at
/// 602 bits (2^20: 680; 2^18: 1 017); batches whose OTs carry wide messages state it and go
/// further down ([`silent_call_max`]).
pub const SILENT_CALL_MAX: usize = 1 << 21;

/// Smallest call size [`silent_call_max`] goes down to: below it the encoding gets no faster.
pub const SILENT_CALL_CACHED: usize = 1 << 18;

/// Largest share of a batch's traffic that cutting it into smaller calls may add in base OTs.
pub const CALL_OVERHEAD_SHARE: f64 = 0.125;

/// Base-OT traffic of a silent call of `n` OTs, in bits per OT: per GGM tree (248, see
/// [`SILENT_MIN`]) and level of depth ⌈log2(2n/248)⌉, the sender's two sums (256 bits) and the
/// base OT's correction (128 bits). ≈ 4.4 bits at 2^18, 1.3 at 2^20, 0.7 at 2^21.
pub fn silent_call_overhead_bits(n: usize) -> f64 {
    let trees = 248.0;
    let depth = (2.0 * n as f64 / trees).log2().ceil();
    trees * depth * 384.0 / n as f64
}

/// The largest silent call for a batch whose OTs carry `payload_bits` bits each on average:
/// without a payload, [`SILENT_CALL_MAX`]; with one, the smallest power of two from
/// [`SILENT_CALL_CACHED`] up whose base-OT traffic stays within [`CALL_OVERHEAD_SHARE`] of the
/// payload. Select-Then-Compute's lookups carry ≈ 36 bits per OT (2^18: 12% more traffic for a
/// quarter less CPU in a GeLU row); a comparison's ≈ 6 bits stay at the default.
pub fn silent_call_max(payload_bits: Option<f64>) -> usize {
    let Some(bits) = payload_bits else {
        return SILENT_CALL_MAX;
    };
    let mut size = SILENT_CALL_CACHED;
    while size < SILENT_CALL_MAX && silent_call_overhead_bits(size) > CALL_OVERHEAD_SHARE * bits {
        size *= 2;
    }
    size
}

/// The sizes of the silent calls of at most `call_max` OTs that make `n` random OTs (none for
/// n = 0).
fn silent_calls(n: usize, call_max: usize) -> impl Iterator<Item = usize> {
    debug_assert!(n == 0 || n >= SILENT_MIN);
    let calls = n.div_ceil(call_max);
    (0..calls).map(move |i| n / calls + usize::from(i < n % calls))
}

fn received(keys: Vec<Block>, choices: impl Iterator<Item = bool>, n: usize) -> OtResult<RandomOtReceiver> {
    let choices: Vec<bool> = choices.take(n).collect();
    if keys.len() != n || choices.len() != n {
        return Err(OtError::Invalid(format!("extension returned {} OTs, asked for {n}", keys.len())));
    }
    Ok(RandomOtReceiver { choices, keys })
}

/// Runs one call into the extension library under the link's timeout, its traffic counted where
/// `traffic` says, naming the step on error.
async fn run_extension<T, E: std::fmt::Display>(
    timeout: Duration,
    traffic: Traffic<'_>,
    kind: OtKind,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> OtResult<T> {
    match tokio::time::timeout(timeout, traffic.count(fut)).await {
        Err(_) => Err(OtError::Timeout { kind, step: traffic.step(), after: timeout }),
        Ok(Err(e)) => Err(OtError::Extension { kind, step: traffic.step(), reason: e.to_string() }),
        Ok(Ok(v)) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A silent batch runs as calls of at most [`SILENT_CALL_MAX`] and at least [`SILENT_MIN`]
    /// OTs that add up to it.
    #[test]
    fn silent_batches_split_into_calls_that_add_up() {
        for max in [SILENT_CALL_CACHED, SILENT_CALL_MAX] {
            for n in [0, SILENT_MIN, max, max + 1, 3 * max - 7, 10 * max] {
                let calls: Vec<usize> = silent_calls(n, max).collect();
                assert_eq!(calls.iter().sum::<usize>(), n);
                assert_eq!(calls.len(), n.div_ceil(max));
                assert!(calls.iter().all(|&c| (SILENT_MIN..=max).contains(&c)), "{n}: {calls:?}");
            }
        }
    }

    /// Calls get smaller as the payload the OTs carry grows, never below the size whose
    /// encoding stays in the caches nor above the default, and their base OTs stay within the
    /// share of the payload wherever they went below the default.
    #[test]
    fn wide_payloads_get_smaller_calls_within_their_overhead_share() {
        assert_eq!(silent_call_max(None), SILENT_CALL_MAX);
        assert_eq!(silent_call_max(Some(6.0)), SILENT_CALL_MAX);
        assert_eq!(silent_call_max(Some(36.0)), SILENT_CALL_CACHED);
        let mut last = SILENT_CALL_MAX;
        for bits in [0.0, 1.0, 10.0, 20.0, 40.0, 1e3] {
            let size = silent_call_max(Some(bits));
            assert!(size.is_power_of_two() && (SILENT_CALL_CACHED..=last).contains(&size), "{bits}: {size}");
            assert!(size == SILENT_CALL_MAX || silent_call_overhead_bits(size) <= CALL_OVERHEAD_SHARE * bits);
            last = size;
        }
        // the estimate against cryprot-ot's trees: 12 levels at 2^18, 15 at 2^21
        assert!((silent_call_overhead_bits(1 << 18) - 248.0 * 12.0 * 384.0 / 262_144.0).abs() < 1e-9);
        assert!((silent_call_overhead_bits(1 << 21) - 248.0 * 15.0 * 384.0 / 2_097_152.0).abs() < 1e-9);
    }

    /// The silent extension never runs where its noise is light: from [`SILENT_MIN`] on at least
    /// 247 of its 248 noise points fall inside the code (≥ 127 bits by the library's criterion);
    /// smaller batches, where as few as 64 would, go to IKNP.
    #[test]
    fn silent_batches_keep_their_full_noise_weight() {
        assert!((silent_noise_weight(128) - 64.0).abs() < 1e-9);
        assert!(silent_noise_weight(4096) < 242.0);
        let sizes =
            (SILENT_MIN..SILENT_MIN + 4096).chain((17..25).flat_map(|b| [(1 << b) - 1, 1 << b, (1 << b) + 12_345]));
        for n in sizes {
            let w = silent_noise_weight(n);
            assert!(w >= 247.0 && w * -(0.7f64).log2() >= 127.0, "{n} OTs: noise weight {w:.2}");
        }
        for n in [1, 25, 128, 4096, SILENT_MIN - 1] {
            assert_eq!(extension_for(OtKind::Silent, n), OtKind::Iknp, "{n}");
        }
        assert_eq!(extension_for(OtKind::Silent, SILENT_MIN), OtKind::Silent);
        assert_eq!(extension_for(OtKind::Iknp, 1 << 20), OtKind::Iknp);
    }

    /// The ideal functionality's random OTs are correlated in both directions, batch after
    /// batch, and cost nothing on the channel.
    #[test]
    fn the_ideal_pair_gives_correlated_random_ots_in_both_directions() {
        let backend: Arc<dyn Backend> = Arc::new(crate::backend::CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}")));
        let (mut client, mut server) = Ot::ideal_pair(backend, [3; 32], Duration::from_secs(5));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let mut seen = Vec::new();
            for n in [1000, 37] {
                let (sent, received) =
                    tokio::join!(client.random_send(OtKind::Silent, n), server.random_receive(OtKind::Silent, n));
                let (sent, received) =
                    (sent.unwrap_or_else(|e| panic!("{e}")), received.unwrap_or_else(|e| panic!("{e}")));
                for (keys, (&c, &k)) in sent.keys.iter().zip(received.choices.iter().zip(&received.keys)) {
                    assert_eq!(keys[usize::from(c)], k);
                    assert_ne!(keys[0], keys[1]);
                }
                seen.push(bytemuck::cast::<Block, [u64; 2]>(sent.keys[0][0]));
                let (sent, received) =
                    tokio::join!(server.random_send(OtKind::Iknp, n), client.random_receive(OtKind::Iknp, n));
                let (sent, received) =
                    (sent.unwrap_or_else(|e| panic!("{e}")), received.unwrap_or_else(|e| panic!("{e}")));
                assert!(
                    sent.keys
                        .iter()
                        .zip(received.choices.iter().zip(&received.keys))
                        .all(|(keys, (&c, &k))| keys[usize::from(c)] == k)
                );
                seen.push(bytemuck::cast::<Block, [u64; 2]>(sent.keys[0][0]));
            }
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 4, "every batch is fresh");
        });
        assert_eq!(client.meter().report().total().bytes() + server.meter().report().total().bytes(), 0);
    }
}
