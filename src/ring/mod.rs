//! The ring Z_2^64, fixed-point encoding and typed secret shares ([`Shares`], [`Bits`]).
//!
//! Every secret value in the engine is an element of Z_2^64 split as `x = x_c + x_s (mod 2^64)`
//! between the client and the server. Real numbers are carried in two's-complement fixed point
//! with `f` fractional bits (18 by default, the SecMoE paper's choice). [`modp`] holds the
//! arithmetic modulo word-sized primes that the RLWE layer's RNS limbs use.

mod fixed;
pub mod modp;
mod pack;
mod tensor;

pub use fixed::{DEFAULT_FRAC_BITS, Dtype, FixedPoint};
pub use pack::{pack_bits, pack_bits_widths, packed_len, unpack_bits, unpack_bits_widths};
pub use tensor::{Bits, Shares, Weights, open, share_matrix};

use thiserror::Error;

/// Errors of the ring layer.
#[derive(Debug, Error, PartialEq)]
pub enum RingError {
    /// A real number is not finite or does not fit the fixed-point range.
    #[error("value {value} cannot be encoded with {frac_bits} fractional bits: it must be finite and |x| < {limit}")]
    OutOfRange {
        /// The rejected value.
        value: f64,
        /// Fractional bits of the format.
        frac_bits: u32,
        /// Largest magnitude the format holds.
        limit: f64,
    },
    /// An element of a named tensor (a checkpoint's weights) that does not fit the format.
    #[error("tensor `{tensor}`, element {index}: {value} {reason}")]
    TensorValue {
        /// The tensor's name.
        tensor: String,
        /// Flat index of the element.
        index: usize,
        /// The element's value.
        value: f64,
        /// Why it does not fit.
        reason: String,
    },
    /// A named tensor whose bytes are not a whole number of elements.
    #[error("tensor `{tensor}`: {len} bytes is not a whole number of {dtype:?} elements")]
    TensorBytes {
        /// The tensor's name.
        tensor: String,
        /// Its byte length.
        len: usize,
        /// The element type.
        dtype: Dtype,
    },
    /// A bound on plaintext weights outside 1..=64 bits.
    #[error("a bound of 2^{0} on weights: the bound must be 1..=64 bits")]
    BadBound(u32),
    /// A fixed-point format with an unusable number of fractional bits.
    #[error("fixed-point format needs 0 < frac_bits <= 40, got {0}")]
    BadFormat(u32),
    /// Two share vectors that should pair up have different lengths.
    #[error("share vectors differ in length: {left} vs {right}")]
    LengthMismatch {
        /// Length of the first vector.
        left: usize,
        /// Length of the second vector.
        right: usize,
    },
    /// A ring width outside 1..=64, or more fractional bits than the width holds.
    #[error(
        "shares over Z_2^{width} with {frac_bits} fractional bits: the width must be in 1..=64 and hold the fractional bits"
    )]
    BadWidth {
        /// The ring width ℓ.
        width: u32,
        /// The fractional bits.
        frac_bits: u32,
    },
    /// Values that do not fill the announced shape.
    #[error("{len} values do not form a {rows}×{cols} matrix")]
    BadShape {
        /// Rows announced.
        rows: usize,
        /// Columns announced.
        cols: usize,
        /// Values given.
        len: usize,
    },
    /// Two share matrices that must agree in shape, ring and scale do not.
    #[error("shares of {left} and of {right} do not fit together")]
    Mismatch {
        /// The first operand.
        left: String,
        /// The second operand.
        right: String,
    },
    /// A number that is not a prime below 2^62.
    #[error("{0} is not a prime below 2^62")]
    BadModulus(u64),
    /// No (or too few) NTT-friendly primes of the asked size.
    #[error("cannot find {count} primes of {bits} bits congruent to 1 mod 2·{n}")]
    NoPrimes {
        /// Prime size asked for.
        bits: u32,
        /// Ring degree.
        n: usize,
        /// Number of primes asked for.
        count: usize,
    },
    /// A packed buffer has the wrong size for its declared contents.
    #[error("packed buffer of {actual} bytes, expected {expected} for {count} values of {bits} bits in all")]
    PackedLength {
        /// Expected byte length.
        expected: usize,
        /// Received byte length.
        actual: usize,
        /// Number of values declared.
        count: usize,
        /// Bits of all values together.
        bits: usize,
    },
}

/// Keeps the low `bits` bits of `x` (the ring Z_2^bits inside u64). `bits` is in 1..=64.
#[inline]
pub fn mask(bits: u32) -> u64 {
    debug_assert!((1..=64).contains(&bits));
    u64::MAX >> (64 - bits)
}

/// Interprets a ring element as a signed two's-complement integer.
#[inline]
pub fn to_signed(x: u64) -> i64 {
    x as i64
}
