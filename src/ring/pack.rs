//! Dense bit packing of ring elements of a reduced width, for sending over the wire.
//!
//! Protocols that work in Z_2^w with w < 64 (or on bits) send exactly `ceil(n·w / 8)` bytes; a
//! message whose values have different widths (a cross term's bit j needs w − j bits) sends
//! `ceil(Σ w_i / 8)`.

use super::{RingError, mask};

/// Bytes needed to pack `count` values of `width` bits.
pub fn packed_len(count: usize, width: u32) -> usize {
    (count * width as usize).div_ceil(8)
}

/// Packs the low `width` bits (1..=64) of each value, little-endian bit order.
pub fn pack_bits(values: &[u64], width: u32) -> Vec<u8> {
    pack_bits_widths(values, std::iter::repeat(width))
}

/// Packs the low `w_i` bits (1..=64) of each value `i`, `w_i` the `i`-th of `widths`,
/// little-endian bit order, with no gap between values.
pub fn pack_bits_widths(values: &[u64], widths: impl Iterator<Item = u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 8 + 8);
    // Bits accumulate in a 128-bit register and leave 64 at a time.
    let (mut acc, mut filled, mut total) = (0u128, 0u32, 0usize);
    for (&v, width) in values.iter().zip(widths) {
        acc |= ((v & mask(width)) as u128) << filled;
        filled += width;
        total += width as usize;
        if filled >= 64 {
            out.extend_from_slice(&(acc as u64).to_le_bytes());
            acc >>= 64;
            filled -= 64;
        }
    }
    out.extend_from_slice(&(acc as u64).to_le_bytes());
    out.truncate(total.div_ceil(8));
    out
}

/// Inverse of [`pack_bits`]; the buffer length must match `count` and `width` exactly.
pub fn unpack_bits(bytes: &[u8], count: usize, width: u32) -> Result<Vec<u64>, RingError> {
    unpack_bits_widths(bytes, count, std::iter::repeat(width))
}

/// Inverse of [`pack_bits_widths`] for `count` values, the first `count` of `widths`; the
/// buffer length must match their total exactly.
pub fn unpack_bits_widths(
    bytes: &[u8],
    count: usize,
    widths: impl Iterator<Item = u32> + Clone,
) -> Result<Vec<u64>, RingError> {
    let bits: usize = widths.clone().take(count).map(|w| w as usize).sum();
    let expected = bits.div_ceil(8);
    if bytes.len() != expected {
        return Err(RingError::PackedLength { expected, actual: bytes.len(), count, bits });
    }
    let mut out = Vec::with_capacity(count);
    let mut words = bytes.chunks(8).map(|c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(w)
    });
    let (mut acc, mut filled) = (0u128, 0u32);
    for width in widths.take(count) {
        if filled < width {
            acc |= (words.next().unwrap_or(0) as u128) << filled;
            filled += 64;
        }
        out.push(acc as u64 & mask(width));
        acc >>= width;
        filled -= width;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_unpack_round_trips(vals in prop::collection::vec(any::<u64>(), 0..100), width in 1u32..=64) {
            let packed = pack_bits(&vals, width);
            prop_assert_eq!(packed.len(), packed_len(vals.len(), width));
            let back = unpack_bits(&packed, vals.len(), width).unwrap_or_default();
            let expect: Vec<u64> = vals.iter().map(|v| v & mask(width)).collect();
            prop_assert_eq!(back, expect);
        }

        #[test]
        fn mixed_widths_round_trip(vals in prop::collection::vec(any::<u64>(), 0..200), top in 1u32..=64) {
            // a cross term's pattern: w, w − 1, …, 1, again
            let widths = (1..=top).rev().cycle();
            let packed = pack_bits_widths(&vals, widths.clone());
            let bits: usize = widths.clone().take(vals.len()).map(|w| w as usize).sum();
            prop_assert_eq!(packed.len(), bits.div_ceil(8));
            let back = unpack_bits_widths(&packed, vals.len(), widths.clone()).unwrap_or_default();
            let expect: Vec<u64> = vals.iter().zip(widths).map(|(v, w)| v & mask(w)).collect();
            prop_assert_eq!(back, expect);
        }
    }

    #[test]
    fn wrong_length_is_an_error_naming_the_sizes() {
        let err = unpack_bits(&[0u8; 3], 4, 8).err();
        assert_eq!(err, Some(RingError::PackedLength { expected: 4, actual: 3, count: 4, bits: 32 }));
    }
}
