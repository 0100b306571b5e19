//! Typed shared values: one party's arithmetic shares of a matrix over Z_2^ℓ with the matrix's
//! fixed-point scale ([`Shares`]), and XOR shares of bits packed 64 to a word ([`Bits`]).
//!
//! A protocol reads the ring width and the scale off its inputs instead of taking them as loose
//! arguments, so a value in the wrong ring or at the wrong scale is an error naming both, not a
//! silently wrong result. Shapes are rows × columns (tokens × features); a vector is one row.

use std::ops::BitXor;

use ndarray::{Array2, ArrayView2};
use rand::{CryptoRng, RngExt};

use super::{RingError, mask};

/// One party's additive shares of a matrix: element (i, j) of the secret is
/// `mine[i, j] + theirs[i, j] mod 2^width`, read as a two's-complement number with `frac_bits`
/// fractional bits. A share alone is uniform and says nothing about the secret.
///
/// Values are kept reduced mod 2^width; the matrix is always in standard (row-major) layout, so
/// [`Shares::as_slice`] is free.
#[derive(Clone, PartialEq, Eq)]
pub struct Shares {
    values: Array2<u64>,
    width: u32,
    frac_bits: u32,
}

impl Shares {
    /// Shares of a `rows × cols` matrix from its row-major values, reduced mod 2^`width`.
    /// `width` is in 1..=64 and `frac_bits` at most `width`.
    pub fn new((rows, cols): (usize, usize), values: Vec<u64>, width: u32, frac_bits: u32) -> Result<Self, RingError> {
        if !(1..=64).contains(&width) || frac_bits > width {
            return Err(RingError::BadWidth { width, frac_bits });
        }
        let len = values.len();
        let mut values =
            Array2::from_shape_vec((rows, cols), values).map_err(|_| RingError::BadShape { rows, cols, len })?;
        if width < 64 {
            values.mapv_inplace(|v| v & mask(width));
        }
        Ok(Self { values, width, frac_bits })
    }

    /// Shares over the full ring Z_2^64 of one row of values.
    pub fn vector(values: Vec<u64>, frac_bits: u32) -> Result<Self, RingError> {
        Self::new((1, values.len()), values, 64, frac_bits)
    }

    /// Shares over the full ring Z_2^64 of a `rows × cols` matrix.
    pub fn matrix(shape: (usize, usize), values: Vec<u64>, frac_bits: u32) -> Result<Self, RingError> {
        Self::new(shape, values, 64, frac_bits)
    }

    /// New values of the same shape, ring and scale (the result of a local step).
    pub fn with_values(&self, values: Vec<u64>) -> Result<Self, RingError> {
        Self::new(self.shape(), values, self.width, self.frac_bits)
    }

    /// The same values read with `frac_bits` fractional bits (a public rescaling that moves no
    /// bit, e.g. after multiplying by a public integer power of two).
    pub fn with_frac_bits(mut self, frac_bits: u32) -> Result<Self, RingError> {
        if frac_bits > self.width {
            return Err(RingError::BadWidth { width: self.width, frac_bits });
        }
        self.frac_bits = frac_bits;
        Ok(self)
    }

    /// The same shares read modulo 2^`width`, at most their ring's width and at least their
    /// fractional bits: a local step (2^width divides the ring), exact for values below
    /// 2^(width−1) in magnitude.
    pub fn narrowed(self, width: u32) -> Result<Self, RingError> {
        if width > self.width {
            return Err(RingError::BadWidth { width, frac_bits: self.frac_bits });
        }
        let frac_bits = self.frac_bits;
        Self::new(self.shape(), self.into_vec(), width, frac_bits)
    }

    /// The same values as a `rows × cols` matrix (row-major order kept).
    pub fn reshape(self, (rows, cols): (usize, usize)) -> Result<Self, RingError> {
        let (width, frac_bits) = (self.width, self.frac_bits);
        Self::new((rows, cols), self.into_vec(), width, frac_bits)
    }

    /// Rows × columns.
    pub fn shape(&self) -> (usize, usize) {
        self.values.dim()
    }

    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        self.values.nrows()
    }

    /// Number of columns (features).
    pub fn cols(&self) -> usize {
        self.values.ncols()
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the matrix holds no value.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// ℓ: the shares live in Z_2^ℓ.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Fractional bits of the fixed-point values.
    pub fn frac_bits(&self) -> u32 {
        self.frac_bits
    }

    /// The values, row-major.
    pub fn as_slice(&self) -> &[u64] {
        self.values.as_slice().expect("shares are kept in standard layout")
    }

    /// The matrix.
    pub fn view(&self) -> ArrayView2<'_, u64> {
        self.values.view()
    }

    /// The values, row-major, without a copy.
    pub fn into_vec(self) -> Vec<u64> {
        let (values, offset) = self.values.into_raw_vec_and_offset();
        debug_assert!(offset.unwrap_or(0) == 0);
        values
    }

    /// Element-wise sum of two share matrices of the same shape, ring and scale (local).
    pub fn add(&self, other: &Shares) -> Result<Shares, RingError> {
        self.zip(other, u64::wrapping_add)
    }

    /// Element-wise difference (local).
    pub fn sub(&self, other: &Shares) -> Result<Shares, RingError> {
        self.zip(other, u64::wrapping_sub)
    }

    fn zip(&self, other: &Shares, op: impl Fn(u64, u64) -> u64) -> Result<Shares, RingError> {
        self.check_same(other)?;
        let values = self.as_slice().iter().zip(other.as_slice()).map(|(&a, &b)| op(a, b)).collect();
        self.with_values(values)
    }

    /// Errors unless `other` has this matrix's shape, ring and scale.
    pub fn check_same(&self, other: &Shares) -> Result<(), RingError> {
        if self.shape() != other.shape() || self.width != other.width || self.frac_bits != other.frac_bits {
            return Err(RingError::Mismatch { left: self.describe(), right: other.describe() });
        }
        Ok(())
    }

    /// "r×c over Z_2^ℓ, f fractional bits": for error messages.
    pub fn describe(&self) -> String {
        let (r, c) = self.shape();
        format!("{r}×{c} over Z_2^{}, {} fractional bits", self.width, self.frac_bits)
    }
}

impl std::fmt::Debug for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a share is not secret on its own, but a debug print of megabytes helps nobody
        write!(f, "Shares({})", self.describe())
    }
}

/// Splits a secret matrix into two share matrices over Z_2^`width`: the first uniform from `rng`
/// (a CSPRNG), the second the secret minus it. Either alone is independent of the secret.
pub fn share_matrix<R: CryptoRng + ?Sized>(secret: &Shares, rng: &mut R) -> Result<(Shares, Shares), RingError> {
    let mine: Vec<u64> = secret.as_slice().iter().map(|_| rng.random::<u64>()).collect();
    let theirs = secret.as_slice().iter().zip(&mine).map(|(&x, r)| x.wrapping_sub(*r)).collect();
    Ok((secret.with_values(mine)?, secret.with_values(theirs)?))
}

/// Recombines the two parties' share matrices: the secret, mod 2^width, same shape and scale.
pub fn open(a: &Shares, b: &Shares) -> Result<Shares, RingError> {
    a.add(b)
}

/// The server's plaintext weights of a product: a rows × columns matrix (row-major) of ring
/// elements read as signed fixed-point values, with a bound |w| ≤ 2^bits that the product's
/// noise flooding covers, so the bound travels with the values. Borrowed: a model's weights are
/// converted once and lent to each product.
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    values: &'a [u64],
    shape: (usize, usize),
    bits: u32,
}

impl<'a> Weights<'a> {
    /// The `rows × cols` matrix of `values` (row-major) with its bound measured: the least
    /// `bits` ≥ 1 with |w| < 2^bits for every w.
    pub fn new(shape: (usize, usize), values: &'a [u64]) -> Result<Self, RingError> {
        let max = values.iter().map(|&v| super::to_signed(v).unsigned_abs()).max().unwrap_or(0);
        Weights::bounded(shape, values, (64 - max.leading_zeros()).max(1))
    }

    /// The `rows × cols` matrix of `values` with a stated bound 2^`bits` (1..=64); a product
    /// refuses weights beyond it.
    pub fn bounded((rows, cols): (usize, usize), values: &'a [u64], bits: u32) -> Result<Self, RingError> {
        if !(1..=64).contains(&bits) {
            return Err(RingError::BadBound(bits));
        }
        if rows.checked_mul(cols) != Some(values.len()) {
            return Err(RingError::BadShape { rows, cols, len: values.len() });
        }
        Ok(Weights { values, shape: (rows, cols), bits })
    }

    /// (rows, columns).
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    /// log2 of the bound on |w|.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The values, row-major.
    pub fn as_slice(&self) -> &'a [u64] {
        self.values
    }
}

/// One party's XOR shares of a vector of bits, packed 64 to a word (bit i is bit i % 64 of word
/// i / 64); the secret bit is `mine ⊕ theirs`. Bits past `len` in the last word are zero.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    /// `len` zero bits.
    pub fn zeros(len: usize) -> Self {
        Self { words: vec![0; len.div_ceil(64)], len }
    }

    /// Packs one bool per bit.
    pub fn from_bools(bits: &[bool]) -> Self {
        let mut words = vec![0u64; bits.len().div_ceil(64)];
        for (i, &b) in bits.iter().enumerate() {
            words[i / 64] |= (b as u64) << (i % 64);
        }
        Self { words, len: bits.len() }
    }

    /// Packed words holding `len` bits; the count must match and bits past `len` must be zero.
    pub fn from_words(words: Vec<u64>, len: usize) -> Result<Self, RingError> {
        let tail_clean = match len % 64 {
            0 => true,
            r => words.last().is_none_or(|w| w >> r == 0),
        };
        if words.len() != len.div_ceil(64) || !tail_clean {
            return Err(RingError::PackedLength {
                expected: len.div_ceil(64) * 8,
                actual: words.len() * 8,
                count: len,
                bits: len,
            });
        }
        Ok(Self { words, len })
    }

    /// One bool per bit.
    pub fn to_bools(&self) -> Vec<bool> {
        self.iter().collect()
    }

    /// The bits in order.
    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.len).map(|i| self.get(i))
    }

    /// Bit `i` (below [`Bits::len`]).
    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.len, "bit {i} of {}", self.len);
        (self.words[i / 64] >> (i % 64)) & 1 == 1
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no bit.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packed words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Bits `start..start + len` (within [`Bits::len`]), as a vector of their own.
    pub fn range(&self, start: usize, len: usize) -> Bits {
        assert!(start + len <= self.len, "bits {start}..{} of {}", start + len, self.len);
        let (word, shift) = (start / 64, start % 64);
        let words: Vec<u64> = (0..len.div_ceil(64))
            .map(|i| {
                let lo = self.words[word + i] >> shift;
                let hi = match (shift, self.words.get(word + i + 1)) {
                    (1..=63, Some(next)) => next << (64 - shift),
                    _ => 0,
                };
                lo | hi
            })
            .collect();
        let mut out = Bits { words, len };
        out.clear_tail();
        out
    }

    /// The bits as `⌈len/8⌉` bytes, little-endian bit order (the wire form).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.truncate(self.len.div_ceil(8));
        bytes
    }

    /// Inverse of [`Bits::to_bytes`]: exactly `⌈len/8⌉` bytes, bits past `len` zero.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Result<Bits, RingError> {
        if bytes.len() != len.div_ceil(8) {
            return Err(RingError::PackedLength {
                expected: len.div_ceil(8),
                actual: bytes.len(),
                count: len,
                bits: len,
            });
        }
        let words = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Bits::from_words(words, len)
    }

    /// Word-wise `f` over this vector and `others` of the same length (local gates).
    pub fn zip_words(&self, others: &[&Bits], f: impl Fn(u64, &[u64]) -> u64) -> Result<Bits, RingError> {
        if let Some(o) = others.iter().find(|o| o.len != self.len) {
            return Err(RingError::LengthMismatch { left: self.len, right: o.len });
        }
        let mut row = vec![0u64; others.len()];
        let words = (0..self.words.len())
            .map(|i| {
                row.iter_mut().zip(others).for_each(|(r, o)| *r = o.words[i]);
                f(self.words[i], &row)
            })
            .collect();
        let mut out = Bits { words, len: self.len };
        out.clear_tail();
        Ok(out)
    }

    /// Every bit flipped: the party that does this (exactly one) negates the shared bits.
    pub fn not(&self) -> Bits {
        let mut out = Bits { words: self.words.iter().map(|w| !w).collect(), len: self.len };
        out.clear_tail();
        out
    }

    fn clear_tail(&mut self) {
        if let (r @ 1..=63, Some(last)) = (self.len % 64, self.words.last_mut()) {
            *last &= mask(r as u32);
        }
    }
}

impl BitXor for &Bits {
    type Output = Result<Bits, RingError>;

    /// Bitwise XOR of two share vectors of the same length (local: the shared bits XOR).
    fn bitxor(self, rhs: &Bits) -> Self::Output {
        if self.len != rhs.len {
            return Err(RingError::LengthMismatch { left: self.len, right: rhs.len });
        }
        Ok(Bits { words: self.words.iter().zip(&rhs.words).map(|(a, b)| a ^ b).collect(), len: self.len })
    }
}

impl std::fmt::Debug for Bits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bits({} bits)", self.len)
    }
}

impl FromIterator<bool> for Bits {
    fn from_iter<I: IntoIterator<Item = bool>>(iter: I) -> Self {
        Bits::from_bools(&iter.into_iter().collect::<Vec<_>>())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    proptest! {
        #[test]
        fn shares_open_to_the_secret_in_their_ring(xs in prop::collection::vec(any::<u64>(), 1..40), width in 1u32..=64, seed in any::<u64>()) {
            let secret = Shares::new((1, xs.len()), xs.clone(), width, 0).unwrap();
            let (a, b) = share_matrix(&secret, &mut StdRng::seed_from_u64(seed)).unwrap();
            let opened = open(&a, &b).unwrap();
            let want: Vec<u64> = xs.iter().map(|x| x & mask(width)).collect();
            prop_assert_eq!(opened.as_slice(), want.as_slice());
        }

        #[test]
        fn narrowed_shares_open_to_the_secret_mod_the_smaller_ring(xs in prop::collection::vec(any::<u64>(), 1..40), width in 1u32..=64, seed in any::<u64>()) {
            let secret = Shares::new((1, xs.len()), xs.clone(), 64, 0).unwrap();
            let (a, b) = share_matrix(&secret, &mut StdRng::seed_from_u64(seed)).unwrap();
            let (a, b) = (a.narrowed(width).unwrap(), b.narrowed(width).unwrap());
            prop_assert_eq!((a.width(), a.frac_bits()), (width, 0));
            let want: Vec<u64> = xs.iter().map(|x| x & mask(width)).collect();
            let opened = open(&a, &b).unwrap();
            prop_assert_eq!(opened.as_slice(), want.as_slice());
            // never wider than the ring they are in
            prop_assert!(width == 64 || a.narrowed(width + 1).is_err());
        }

        #[test]
        fn bits_pack_and_unpack(bits in prop::collection::vec(any::<bool>(), 0..200)) {
            let packed = Bits::from_bools(&bits);
            prop_assert_eq!(packed.to_bools(), bits.clone());
            prop_assert_eq!(Bits::from_words(packed.words().to_vec(), bits.len()).unwrap(), packed.clone());
            let flipped: Vec<bool> = bits.iter().map(|b| !b).collect();
            prop_assert_eq!(packed.not().to_bools(), flipped);
            prop_assert_eq!((&packed ^ &packed.not()).unwrap().to_bools(), vec![true; bits.len()]);
        }
    }

    #[test]
    fn shapes_widths_and_scales_are_checked() {
        assert!(matches!(
            Shares::new((2, 3), vec![0; 5], 64, 18),
            Err(RingError::BadShape { rows: 2, cols: 3, len: 5 })
        ));
        assert!(matches!(Shares::new((1, 1), vec![0], 0, 0), Err(RingError::BadWidth { .. })));
        assert!(matches!(Shares::new((1, 1), vec![0], 16, 17), Err(RingError::BadWidth { .. })));
        let a = Shares::matrix((2, 2), vec![1, 2, 3, 4], 18).unwrap();
        let b = Shares::matrix((2, 2), vec![1, 2, 3, 4], 12).unwrap();
        let err = a.add(&b).unwrap_err().to_string();
        assert!(err.contains("18 fractional bits") && err.contains("12 fractional bits"), "{err}");
        assert!(a.add(&a.clone().reshape((1, 4)).unwrap()).is_err());
    }

    #[test]
    fn weights_carry_their_shape_and_a_bound_on_their_magnitude() {
        let minus_five = (-5i64) as u64;
        let values = [1, 2, 3, 4, minus_five, 0];
        let w = Weights::new((2, 3), &values).unwrap();
        assert_eq!((w.shape(), w.bits(), w.as_slice()[4]), ((2, 3), 3, minus_five));
        assert_eq!(Weights::new((1, 2), &[0, 0]).unwrap().bits(), 1);
        assert_eq!(Weights::new((1, 1), &[1 << 20]).unwrap().bits(), 21);
        assert_eq!(Weights::bounded((1, 2), &[0, 0], 40).unwrap().bits(), 40);
        assert_eq!(Weights::new((2, 2), &[0; 6]).unwrap_err(), RingError::BadShape { rows: 2, cols: 2, len: 6 });
        for bits in [0, 65] {
            assert_eq!(Weights::bounded((1, 1), &[0], bits).unwrap_err(), RingError::BadBound(bits));
        }
    }

    #[test]
    fn narrow_shares_are_reduced_and_wrap() {
        let a = Shares::new((1, 2), vec![0x1ff, 5], 8, 0).unwrap();
        assert_eq!(a.as_slice(), &[0xff, 5]);
        let b = Shares::new((1, 2), vec![1, 0xff], 8, 0).unwrap();
        assert_eq!(a.add(&b).unwrap().as_slice(), &[0, 4]);
        assert_eq!(b.sub(&a).unwrap().as_slice(), &[2, 0xfa]);
    }

    #[test]
    fn a_single_share_does_not_depend_on_the_secret() {
        let zero = Shares::vector(vec![0; 3], 18).unwrap();
        let other = Shares::vector(vec![1, u64::MAX, 42], 18).unwrap();
        let (a0, _) = share_matrix(&zero, &mut StdRng::seed_from_u64(7)).unwrap();
        let (a1, _) = share_matrix(&other, &mut StdRng::seed_from_u64(7)).unwrap();
        assert_eq!(a0, a1);
    }

    proptest! {
        #[test]
        fn ranges_and_bytes_keep_the_bits(bits in prop::collection::vec(any::<bool>(), 0..300), a in 0usize..300, b in 0usize..300) {
            let packed = Bits::from_bools(&bits);
            let (start, len) = (a.min(bits.len()), b.min(bits.len() - a.min(bits.len())));
            prop_assert_eq!(packed.range(start, len).to_bools(), bits[start..start + len].to_vec());
            prop_assert_eq!(Bits::from_bytes(&packed.to_bytes(), bits.len()).unwrap(), packed.clone());
            prop_assert_eq!(packed.to_bytes(), crate::ring::pack_bits(&bits.iter().map(|&b| b as u64).collect::<Vec<_>>(), 1));
        }
    }

    #[test]
    fn the_first_share_is_uniform_whatever_the_secret() {
        let (a, _) =
            share_matrix(&Shares::matrix((64, 64), vec![0; 4096], 18).unwrap(), &mut StdRng::seed_from_u64(1)).unwrap();
        let ones: u32 = a.as_slice().iter().map(|s| s.count_ones()).sum();
        let expected = 4096.0 * 32.0;
        assert!((ones as f64 - expected).abs() < 5.0 * (4096.0f64 * 16.0).sqrt());
    }

    #[test]
    fn packed_bits_reject_a_wrong_count_or_a_dirty_tail() {
        assert!(Bits::from_words(vec![0, 0], 64).is_err());
        assert!(Bits::from_words(vec![1 << 5], 5).is_err());
        assert_eq!(Bits::from_words(vec![0b10110], 5).unwrap().to_bools(), vec![false, true, true, false, true]);
        assert!((&Bits::zeros(3) ^ &Bits::zeros(4)).is_err());
    }
}
