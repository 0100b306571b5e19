//! One party's session: everything a 2PC protocol needs from its side, in one value that every
//! protocol takes as `&mut Session`.
//!
//! A session holds the party's role, the OT engine on the link (with its pools and its own
//! message channel, on which the protocols' messages stay in order with the OT messages), the
//! OT-kind policy, the fixed-point format (the one the link's handshake checked both parties
//! agree on), the party's CSPRNG, the HE keys of the linear layers (after
//! [`Session::setup_he`]) and the backend. Roles are expressed one way: [`Session::party`], read
//! by the protocols where the two sides differ.
//!
//! Randomness: the CSPRNG is ChaCha20 seeded from the operating system. [`SessionConfig::seed`]
//! replaces that seed for reproducible tests and benches only: a seeded session's masks are
//! predictable by whoever knows the seed (the command line never sets one).

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::ChaCha20Rng;
use rand::{Rng, SeedableRng};

use super::layernorm::NormRange;
use super::linear::{HeClient, HeServer, KeySet};
use super::{ProtoError, ProtoResult};
use crate::backend::{Backend, BackendError, Workers};
use crate::he::{Exposure, HeParams};
use crate::net::{Channel, CostModel, Link, Meter, Party};
use crate::ot::{Ot, OtKind};
use crate::ring::{FixedPoint, Shares};

/// What the activation protocols do with inputs outside their input ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutOfRange {
    /// The caller guarantees the ranges (|x| < 63 for GeLU and SiLU …); a value outside wraps
    /// to a wrong result. The cheapest.
    #[default]
    Precondition,
    /// A value outside, up to |x| < 2^24 ([`super::piecewise::SATURATION_REACH`]), gives the
    /// function's limit on that side (the tail piece: 0 or x for GeLU/SiLU, 0 for e^x): a
    /// carry chain over the bits above the range and one multiplexer pair more per value
    /// (about twice the random OTs of the evaluation itself). Newton starts whose inputs are in
    /// range by construction (softmax's 1/s, the norms' 1/√v) do not pay it.
    Saturate,
}

/// How a session is set up.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The OT extension the protocols use; `None`: the cheaper for `network` by the cost model.
    pub ot_kind: Option<OtKind>,
    /// The network the session is tuned for.
    pub network: CostModel,
    /// The fixed-point format (agreed with the peer in the handshake).
    pub format: FixedPoint,
    /// A fixed CSPRNG seed, for tests and benches only (never for a real run).
    pub seed: Option<[u8; 32]>,
    /// Inputs outside the activations' ranges.
    pub out_of_range: OutOfRange,
    /// Host worker threads of the heavy steps (0: one per core).
    pub threads: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ot_kind: None,
            network: CostModel::WAN,
            format: FixedPoint::default(),
            seed: None,
            out_of_range: OutOfRange::default(),
            threads: 0,
        }
    }
}

/// The keys in `sets` for `use_`: its own set, else the set for every product (a function of the
/// field, so that callers can hold it while they use the session's channel and CSPRNG).
pub(crate) fn keys_for(sets: &[(HeUse, HeKeys)], use_: HeUse) -> Option<&HeKeys> {
    let find = |wanted: HeUse| sets.iter().find(|(u, _)| *u == wanted).map(|(_, k)| k);
    find(use_).or_else(|| find(HeUse::Every))
}

/// The HE products a key set serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeUse {
    /// Every product.
    Every,
    /// Linear layers: a shared input times the server's weights ([`super::linear::linear`]).
    Linear,
    /// Products of two shared matrices ([`super::linear::matmul_shared`]), whose flooding covers
    /// the server's 64-bit shares.
    Shared,
    /// Selected products ([`super::selected`]): a shared row times the matrix of an expert that
    /// an encrypted one-hot names. Needs [`crate::he::HeParams::select`] and
    /// [`KeySet::WithRelin`].
    Select,
}

/// This party's HE material for the linear layers: the client's secret key, or the server's
/// copy of the client's public and Galois keys.
#[derive(Debug)]
pub enum HeKeys {
    /// The client's side.
    Client(HeClient),
    /// The server's side (boxed: its keys are the larger part).
    Server(Box<HeServer>),
}

impl HeKeys {
    /// The evaluation keys the client sent at setup.
    pub fn key_set(&self) -> KeySet {
        match self {
            HeKeys::Client(he) => he.key_set(),
            HeKeys::Server(he) => match (he.relin_key(), he.square_key()) {
                (Some(_), _) => KeySet::WithRelin,
                (None, Some(_)) => KeySet::WithSquare,
                (None, None) => KeySet::Linear,
            },
        }
    }
}

/// One party's side of a two-party computation.
pub struct Session {
    pub(crate) ot: Ot,
    pub(crate) kind: OtKind,
    pub(crate) rng: ChaCha20Rng,
    /// The HE key sets, with the products each serves.
    pub(crate) he: Vec<(HeUse, HeKeys)>,
    format: FixedPoint,
    network: CostModel,
    out_of_range: OutOfRange,
    norm_range: NormRange,
    seeded: bool,
    backend: Arc<dyn Backend>,
    workers: Workers,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("party", &self.party())
            .field("ot_kind", &self.kind)
            .field("frac_bits", &self.format.frac_bits())
            .field("seeded", &self.seeded)
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Opens a session on `link`. Both parties must call this at the same point of their run
    /// (it sets up the OT engine's streams; no OT traffic is sent yet).
    pub async fn new(link: &mut Link, backend: Arc<dyn Backend>, config: SessionConfig) -> ProtoResult<Session> {
        let ot = Ot::new(link, backend.clone()).await?;
        Session::on(ot, backend, &config, config.seed)
    }

    /// Both parties' sessions (client, server) in this process, for protocol unit tests: an
    /// in-memory channel and the ideal OT functionality of [`Ot::ideal_pair`] (no OT traffic,
    /// no security), each party's CSPRNG seeded from `config.seed` (zero if none) and its role.
    /// With the same seed two runs are identical message for message.
    pub fn ideal_pair(backend: Arc<dyn Backend>, config: SessionConfig) -> ProtoResult<(Session, Session)> {
        use sha2::Digest;
        let seed = config.seed.unwrap_or_default();
        let party_seed = |party: Party| -> [u8; 32] {
            sha2::Sha256::new()
                .chain_update(b"secmoe session")
                .chain_update(seed)
                .chain_update(party.to_string())
                .finalize()
                .into()
        };
        let (client, server) = Ot::ideal_pair(backend.clone(), seed, Duration::from_secs(60));
        Ok((
            Session::on(client, backend.clone(), &config, Some(party_seed(Party::Client)))?,
            Session::on(server, backend, &config, Some(party_seed(Party::Server)))?,
        ))
    }

    fn on(ot: Ot, backend: Arc<dyn Backend>, config: &SessionConfig, seed: Option<[u8; 32]>) -> ProtoResult<Session> {
        let rng = match seed {
            Some(seed) => ChaCha20Rng::from_seed(seed),
            None => rand::make_rng::<ChaCha20Rng>(),
        };
        let workers = Workers::new(config.threads, "secmoe-worker").map_err(BackendError::from)?;
        Ok(Session {
            ot,
            kind: config.ot_kind.unwrap_or_else(|| OtKind::cheapest_for(&config.network)),
            rng,
            he: Vec::new(),
            format: config.format,
            network: config.network,
            out_of_range: config.out_of_range,
            norm_range: NormRange::DEFAULT,
            seeded: seed.is_some(),
            backend,
            workers,
        })
    }

    /// Sets up the HE keys under `params` for every HE product (once per session, both parties
    /// at the same point and with the same `keys`): the client generates a key pair and sends the
    /// public key and the evaluation keys, the server receives and checks them. The client tunes
    /// its tilings for the session's network.
    pub async fn setup_he(&mut self, params: Arc<HeParams>, keys: KeySet) -> ProtoResult<()> {
        self.setup_he_for(HeUse::Every, params, keys).await
    }

    /// [`Session::setup_he`] for the products `use_` only: a session can hold a set tuned for the
    /// linear layers (a special prime, packing) beside one with the noise room that products of
    /// two shared matrices need. A later set for the same products replaces the earlier.
    pub async fn setup_he_for(&mut self, use_: HeUse, params: Arc<HeParams>, keys: KeySet) -> ProtoResult<()> {
        let (backend, workers) = (self.backend.clone(), self.workers.clone());
        let keys = match self.party() {
            Party::Client => {
                let mut he = HeClient::setup(self.ot.channel(), params, backend, workers, keys, &mut self.rng).await?;
                he.set_network(self.network);
                HeKeys::Client(he)
            }
            Party::Server => {
                HeKeys::Server(Box::new(HeServer::setup(self.ot.channel(), params, backend, workers, keys).await?))
            }
        };
        self.he.retain(|(u, _)| *u != use_);
        self.he.push((use_, keys));
        Ok(())
    }

    /// The HE keys for `use_`: its own set, else the set for every product.
    pub fn he_for(&self, use_: HeUse) -> Option<&HeKeys> {
        keys_for(&self.he, use_)
    }

    /// On the server: what the client has decrypted of this session's HE results under every
    /// key set, whose [`Exposure::distance`] bounds how far the noise in all of it is from
    /// noise that does not depend on the weights. `None` on the client.
    pub fn exposure(&self) -> Option<Exposure> {
        self.is_server().then(|| {
            let mut total = Exposure::default();
            for (_, keys) in &self.he {
                if let HeKeys::Server(he) = keys {
                    total.merge(&he.exposure());
                }
            }
            total
        })
    }

    /// Whether any HE keys are set up.
    pub fn has_he(&self) -> bool {
        !self.he.is_empty()
    }

    /// This party's role.
    pub fn party(&self) -> Party {
        self.ot.party()
    }

    /// Whether this party is the server (the model's holder).
    pub fn is_server(&self) -> bool {
        self.party() == Party::Server
    }

    /// The OT extension the protocols use.
    pub fn ot_kind(&self) -> OtKind {
        self.kind
    }

    /// Switches the OT extension (both parties must switch at the same point of the run).
    pub fn set_ot_kind(&mut self, kind: OtKind) {
        self.kind = kind;
    }

    /// The fixed-point format of the shares.
    pub fn format(&self) -> FixedPoint {
        self.format
    }

    /// Shares over Z_2^64 at the session's fixed-point scale of a `rows × cols` matrix (the
    /// format every layer protocol takes and returns).
    pub fn shares(&self, shape: (usize, usize), values: Vec<u64>) -> ProtoResult<Shares> {
        Ok(Shares::matrix(shape, values, self.format.frac_bits())?)
    }

    /// Errors, naming `what`, unless `x` holds shares over Z_2^64 at the session's scale.
    pub fn check_format(&self, x: &Shares, what: &str) -> ProtoResult<()> {
        if x.width() != 64 || x.frac_bits() != self.format.frac_bits() {
            return Err(ProtoError::Input(format!(
                "{what}: shares of {} given, the session works over Z_2^64 with {} fractional bits",
                x.describe(),
                self.format.frac_bits()
            )));
        }
        Ok(())
    }

    /// What the activations do with inputs outside their ranges.
    pub fn out_of_range(&self) -> OutOfRange {
        self.out_of_range
    }

    /// Changes the treatment of out-of-range inputs (both parties at the same point).
    pub fn set_out_of_range(&mut self, out_of_range: OutOfRange) {
        self.out_of_range = out_of_range;
    }

    /// The input range the norms take.
    pub fn norm_range(&self) -> NormRange {
        self.norm_range
    }

    /// Changes the norms' input range (both parties alike, at the same point: a public
    /// parameter of every norm after it).
    pub fn set_norm_range(&mut self, range: NormRange) {
        self.norm_range = range;
    }

    /// The network the session is tuned for.
    pub fn network(&self) -> CostModel {
        self.network
    }

    /// Tunes later HE products for another network (the client chooses the tilings).
    pub fn set_network(&mut self, network: CostModel) {
        self.network = network;
        for (_, keys) in &mut self.he {
            if let HeKeys::Client(he) = keys {
                he.set_network(network);
            }
        }
    }

    /// Whether the CSPRNG was seeded explicitly (a test or bench session).
    pub fn is_seeded(&self) -> bool {
        self.seeded
    }

    /// The backend for the heavy operations.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The OT engine.
    pub fn ot(&mut self) -> &mut Ot {
        &mut self.ot
    }

    /// The session's message channel (shared with the OT engine, so messages stay in order).
    pub fn channel(&mut self) -> &mut Channel {
        self.ot.channel()
    }

    /// The meter the session's traffic is charged to.
    pub fn meter(&self) -> &Meter {
        self.ot.meter()
    }

    /// The party's CSPRNG.
    pub fn rng(&mut self) -> &mut impl Rng {
        &mut self.rng
    }
}
