//! RLWE/BFV homomorphic encryption in RNS form, for the server's linear layers (Cheetah-style
//! coefficient encoding with plaintext modulus 2^64).
//!
//! Done so far: 128-bit-secure parameter sets (N = 4096, 8192), RNS polynomials over the
//! backend's NTT, secret/public/relinearization keys, secret- and public-key encryption,
//! decryption (also of seeded ciphertexts, half the size), additions, products by prepared
//! plaintext operands, ciphertext products with relinearization, modulus switching, the
//! server's response treatment (re-randomization, noise flooding by a smooth distribution, shrinking to power-of-two
//! moduli), validated serialization of ciphertexts and keys, and a noise-budget measurement.

mod bfv;
pub mod flood;
mod galois;
pub mod matmul;
mod mult;
mod params;
mod poly;
mod response;
mod select;
pub mod selected;
pub mod tiling;
mod wire;

pub use bfv::{Ciphertext, PlainOperand, Plaintext, PublicKey, SecretKey, SeededCiphertext};
pub use flood::{Exposure, MAX_FLOOD_BITS, MIN_STAT_BITS, NARROW_FLOOD_BITS, TAIL_BITS};
pub use galois::{GaloisKeys, Packing};
pub use mult::{Lifted, ProductSum, RelinKey, SUM_TERM_BITS, SquareKey, Tensored};
pub use params::{HeParams, max_log_q_128};
pub use poly::{Form, RnsPoly};
pub use response::{Outgoing, ShrunkCiphertext, ShrunkShape};
pub use select::{OperandBank, SelectionPart, SelectionSums, Selectors, select, select_spread};
pub use wire::{
    MAX_DROPPED_BITS, ciphertext_len, compressed_ciphertext_len, compressed_ciphertext_len_at, seeded_ciphertext_len,
    seeded_ciphertext_len_at,
};

use thiserror::Error;

use crate::ring::RingError;

/// Errors of the HE layer.
#[derive(Debug, Error)]
pub enum HeError {
    /// N has no entry in the HE standard's 128-bit table.
    #[error("HE parameters: N = {degree} has no 128-bit security entry")]
    NoSecurityEntry {
        /// The ring degree asked for.
        degree: usize,
    },
    /// The modulus is too large for 128-bit security at this degree.
    #[error("HE parameters: log2 q = {log_q:.1} exceeds {bound} for N = {degree} at 128-bit security")]
    Insecure {
        /// The ring degree.
        degree: usize,
        /// log2 of the whole modulus (special prime included).
        log_q: f64,
        /// The standard's bound for N.
        bound: u32,
    },
    /// A plaintext modulus 2^bits outside what the encoding supports.
    #[error("HE parameters: plaintext modulus 2^{bits} is outside 2^64..=2^96")]
    PlainModulus {
        /// log2 t.
        bits: u32,
    },
    /// The RNS primes are not pairwise distinct (coprime).
    #[error("HE parameters: the RNS prime {prime} is repeated or not coprime to the others")]
    RepeatedPrime {
        /// The offending prime.
        prime: u64,
    },
    /// An operation needs a special prime (key switching) that the parameter set lacks.
    #[error("HE parameters: {params} has no special prime for key switching")]
    NoSpecialPrime {
        /// The parameter set's name.
        params: &'static str,
    },
    /// An operation the parameter set cannot run, and why.
    #[error("HE parameters: {params} cannot {what}")]
    Unsupported {
        /// The parameter set's name.
        params: &'static str,
        /// What was asked, and the limit it hit.
        what: String,
    },
    /// Inputs of the wrong size.
    #[error("HE shape: {0}")]
    Shape(String),
    /// Bytes that do not describe a valid object under the parameters in use.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which object.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// From the modular arithmetic below.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The backend failed (a device error, or operands of the wrong shape).
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
}

/// Result alias of the HE layer.
pub type HeResult<T> = Result<T, HeError>;

/// Plaintext reference: the negacyclic product of two polynomials with coefficients in Z_2^64
/// (what a product of ciphertexts or by an operand must decrypt to), by schoolbook
/// multiplication (zero coefficients skipped). The ring degree N is `a.len()`; `b` has at most N
/// coefficients.
pub fn negacyclic_mod_2_64(a: &[u64], b: &[u64]) -> Vec<u64> {
    let n = a.len();
    assert!(b.len() <= n, "negacyclic_mod_2_64: b has more than N = {n} coefficients");
    let mut c = vec![0u64; n];
    for (i, &ai) in a.iter().enumerate().filter(|(_, v)| **v != 0) {
        for (j, &bj) in b.iter().enumerate().filter(|(_, v)| **v != 0) {
            let prod = ai.wrapping_mul(bj);
            if i + j < n {
                c[i + j] = c[i + j].wrapping_add(prod);
            } else {
                c[i + j - n] = c[i + j - n].wrapping_sub(prod);
            }
        }
    }
    c
}
