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
    let mut out = vec![0u8; packed_len(values.len(), width)];
    let mut bit = 0usize;
    for &v in values {
        let mut v = v & m;
        let mut left = width as usize;
        while left > 0 {
            let byte = bit / 8;
            let off = bit % 8;
            let take = (8 - off).min(left);
            out[byte] |= ((v & ((1u64 << take) - 1)) as u8) << off;
            v >>= take;
            bit += take;
            left -= take;
        }
    }
    out
}

/// Inverse of [`pack_bits`]; the buffer length must match `count` and `width` exactly.
pub fn unpack_bits(bytes: &[u8], count: usize, width: u32) -> Result<Vec<u64>, RingError> {
    let expected = packed_len(count, width);
    if bytes.len() != expected {
        return Err(RingError::PackedLength { expected, actual: bytes.len(), count, width });
    }
    let mut out = Vec::with_capacity(count);
    let mut bit = 0usize;
    for _ in 0..count {
        let mut v = 0u64;
        let mut got = 0usize;
        while got < width as usize {
            let byte = bit / 8;
            let off = bit % 8;
            let take = (8 - off).min(width as usize - got);
            let chunk = (bytes[byte] >> off) as u64 & ((1u64 << take) - 1);
            v |= chunk << got;
            got += take;
            bit += take;
        }
        out.push(v);
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
