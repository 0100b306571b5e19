//! Dense bit packing of ring elements of a reduced width, for sending over the wire.
//!
//! Protocols that work in Z_2^w with w < 64 (or on bits) send exactly `ceil(n·w / 8)` bytes.

use super::{RingError, mask};

/// Bytes needed to pack `count` values of `width` bits.
pub fn packed_len(count: usize, width: u32) -> usize {
    (count * width as usize).div_ceil(8)
}

/// Packs the low `width` bits (1..=64) of each value, little-endian bit order.
pub fn pack_bits(values: &[u64], width: u32) -> Vec<u8> {
    let m = mask(width);
    let total = packed_len(values.len(), width);
    let mut out = Vec::with_capacity(total + 8);
    // Bits accumulate in a 128-bit register and leave 64 at a time.
    let (mut acc, mut filled) = (0u128, 0u32);
    for &v in values {
        acc |= ((v & m) as u128) << filled;
        filled += width;
        if filled >= 64 {
            out.extend_from_slice(&(acc as u64).to_le_bytes());
            acc >>= 64;
            filled -= 64;
        }
    }
    out.extend_from_slice(&(acc as u64).to_le_bytes());
    out.truncate(total);
    out
}

/// Inverse of [`pack_bits`]; the buffer length must match `count` and `width` exactly.
pub fn unpack_bits(bytes: &[u8], count: usize, width: u32) -> Result<Vec<u64>, RingError> {
    let expected = packed_len(count, width);
    if bytes.len() != expected {
        return Err(RingError::PackedLength { expected, actual: bytes.len(), count, width });
    }
    let m = mask(width);
    let mut out = Vec::with_capacity(count);
    let mut words = bytes.chunks(8).map(|c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(w)
    });
    let (mut acc, mut filled) = (0u128, 0u32);
    for _ in 0..count {
        if filled < width {
            acc |= (words.next().unwrap_or(0) as u128) << filled;
            filled += 64;
        }
        out.push(acc as u64 & m);
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
    }

    #[test]
    fn wrong_length_is_an_error_naming_the_sizes() {
        let err = unpack_bits(&[0u8; 3], 4, 8).err();
        assert_eq!(err, Some(RingError::PackedLength { expected: 4, actual: 3, count: 4, width: 8 }));
    }
}
