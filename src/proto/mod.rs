//! Two-party protocols over secret shares: the HE matrix products of the linear layers
//! ([`linear`]), and the OT-based building blocks of the non-linear layers ([`arith`],
//! [`boolean`], [`compare`]) and the functions built on them ([`piecewise`] activations, [`softmax`], [`layernorm`]).
//!
//! Protocols take and return typed values: [`crate::ring::Shares`] (the shape carries what a row
//! length used to, the ring and scale are checked — against the session's format
//! ([`Session::check_format`]) where a protocol computes in it — and a product's scale is the sum
//! of its operands') and packed XOR-shared [`crate::ring::Bits`]. Each party's own private
//! values (a comparison's or carry's inputs) stay plain slices. Inside the crate, the protocols
//! call [`arith`]'s kernels on raw shares in a ring they name.

pub mod agree;
pub mod arith;
pub mod boolean;
pub mod compare;
pub mod layernorm;
pub mod linear;
pub mod piecewise;
pub mod selected;
pub mod session;
pub mod softmax;

pub use session::{HeKeys, HeUse, OutOfRange, Session, SessionConfig};

use thiserror::Error;

use crate::he::HeError;
use crate::net::{NetError, Party};

/// Errors of the protocols.
#[derive(Debug, Error)]
pub enum ProtoError {
    /// The link failed (peer gone, timeout, garbage).
    #[error(transparent)]
    Net(#[from] NetError),
    /// An OT batch failed.
    #[error(transparent)]
    Ot(#[from] crate::ot::OtError),
    /// Shares that do not fit together (shape, ring width or fixed-point scale).
    #[error(transparent)]
    Ring(#[from] crate::ring::RingError),
    /// An HE object was malformed or parameters did not fit.
    #[error(transparent)]
    He(#[from] HeError),
    /// The backend or the host workers failed.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    /// This party's own inputs are inconsistent (wrong length, out-of-range weights).
    #[error("invalid input: {0}")]
    Input(String),
    /// The peer asked for something this party will not run (a shape it does not expect, a
    /// tiling or keys that do not fit the parameters); it was told why.
    #[error("the peer's request is invalid: {0}")]
    BadRequest(String),
    /// The peer refused the request, with its reason.
    #[error("the peer refused: {0}")]
    Refused(String),
}

/// Result alias of the protocols.
pub type ProtoResult<T> = Result<T, ProtoError>;

/// Prepares the random OTs of a step, (server as sender, client as sender), both directions at
/// once and in one extension call each ([`Ot::prepare`]): the step's OTs then cost no extension
/// round trips of their own.
pub(crate) async fn prepare(sess: &mut Session, counts: (usize, usize)) -> ProtoResult<()> {
    prepare_carrying(sess, counts, None).await
}

/// [`prepare`] for OTs that carry `payload_bits` bits each on average ([`crate::ot::Ot::prepare_carrying`]:
/// wide payloads get silent calls small enough for the encoder's caches).
pub(crate) async fn prepare_carrying(
    sess: &mut Session,
    counts: (usize, usize),
    payload_bits: Option<f64>,
) -> ProtoResult<()> {
    let (send, receive) = own_counts(sess, counts);
    Ok(sess.ot.prepare_carrying(sess.kind, send, receive, payload_bits).await?)
}

/// Starts the random OTs of a later step in the background ([`Ot::prefetch`]), (server as
/// sender, client as sender): the step's [`prepare`] then finds them in the pool, and their
/// generation overlaps what runs in between.
pub(crate) async fn prefetch(sess: &mut Session, counts: (usize, usize)) -> ProtoResult<()> {
    prefetch_carrying(sess, counts, None).await
}

/// [`prefetch`] for OTs that carry `payload_bits` bits each on average, as [`prepare_carrying`].
pub(crate) async fn prefetch_carrying(
    sess: &mut Session,
    counts: (usize, usize),
    payload_bits: Option<f64>,
) -> ProtoResult<()> {
    let (send, receive) = own_counts(sess, counts);
    Ok(sess.ot.prefetch_carrying(sess.kind, send, receive, payload_bits).await?)
}

/// (server as sender, client as sender) as this party's (send, receive).
fn own_counts(sess: &Session, (server_sends, client_sends): (usize, usize)) -> (usize, usize) {
    if sess.party() == Party::Server { (server_sends, client_sends) } else { (client_sends, server_sends) }
}
