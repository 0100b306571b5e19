//! The link between the two parties: framed, counted, timed-out messages over an encrypted
//! transport (QUIC with TLS 1.3, through `cryprot-net`), plus an in-memory link for unit tests.
//!
//! Every byte and round is charged to the protocol step open in the [`Meter`]; the [`CostModel`]
//! turns (compute, bytes, rounds) into LAN and WAN estimates.

mod channel;
mod cost;
mod handshake;
mod meter;
mod quic;

pub use channel::{Channel, DEFAULT_MAX_FRAME, DEFAULT_TIMEOUT, Frame};
pub use cost::CostModel;
pub use handshake::{Hello, PROTOCOL_VERSION, PublicParams};
pub use meter::{Background, ByteCounter, Meter, Report, Scope, StepStats};
pub use quic::{Identity, Link, LinkConfig, Listener, SERVER_NAME, connect, fingerprint, loopback};

use std::time::Duration;

use thiserror::Error;

/// Which side of the computation a process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party {
    /// Holds the input and the HE secret key; learns the output.
    Client,
    /// Holds the model weights; learns nothing.
    Server,
}

impl Party {
    /// The other party.
    pub fn peer(self) -> Party {
        match self {
            Party::Client => Party::Server,
            Party::Server => Party::Client,
        }
    }

    fn code(self) -> u8 {
        match self {
            Party::Client => 1,
            Party::Server => 2,
        }
    }
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Party::Client => "client",
            Party::Server => "server",
        })
    }
}

/// Errors of the network layer. Each names the protocol step it happened in.
#[derive(Debug, Error)]
pub enum NetError {
    /// The peer closed the connection (or its process ended) while a message was expected.
    #[error("peer closed the connection during step `{step}`")]
    PeerClosed {
        /// Protocol step that was running.
        step: String,
    },
    /// No message (or no progress sending one) within the configured time.
    #[error("peer did not answer within {} s during step `{step}`", .after.as_secs_f64())]
    Timeout {
        /// Protocol step that was running.
        step: String,
        /// The limit that ran out.
        after: Duration,
    },
    /// A frame header announced more bytes than any message may have: garbage or a wrong peer.
    #[error("frame of {len} bytes announced during step `{step}` exceeds the {max}-byte limit (garbage on the wire?)")]
    FrameTooLarge {
        /// Protocol step that was running.
        step: String,
        /// Announced length.
        len: u64,
        /// Largest allowed frame.
        max: usize,
    },
    /// A message had a different size than the protocol step expects.
    #[error("message `{what}` in step `{step}` has {actual} bytes, expected {expected}")]
    WrongLength {
        /// Protocol step that was running.
        step: String,
        /// Which message.
        what: &'static str,
        /// Expected byte length.
        expected: usize,
        /// Received byte length.
        actual: usize,
    },
    /// A message could not be parsed.
    #[error("malformed message `{what}` in step `{step}`: {reason}")]
    Malformed {
        /// Protocol step that was running.
        step: String,
        /// Which message.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The peer speaks another protocol, another version, or uses other public parameters.
    #[error("handshake failed: {field} differs (ours: {ours}, peer's: {theirs})")]
    ParamMismatch {
        /// Which parameter.
        field: String,
        /// Our value.
        ours: String,
        /// The peer's value.
        theirs: String,
    },
    /// Setting up the encrypted transport failed (TLS, certificate, address, QUIC).
    #[error("transport: {0}")]
    Transport(String),
    /// An I/O error on the stream.
    #[error("i/o error during step `{step}`: {source}")]
    Io {
        /// Protocol step that was running.
        step: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of the network layer.
pub type NetResult<T> = Result<T, NetError>;
