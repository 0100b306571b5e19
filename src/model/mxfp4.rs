//! MXFP4, the OCP microscaling format gpt-oss's experts ship in: blocks of 32 FP4 (E2M1)
//! values sharing one power-of-two scale (E8M0, biased by 127), two values a byte, the low
//! nibble first. Every value is exact in f32, so decoding loses nothing.

/// The sixteen E2M1 values by code: sign bit, two exponent bits, one mantissa bit.
const E2M1: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// Bytes of one block: 32 values.
pub(super) const BLOCK_BYTES: usize = 16;

/// The values of consecutive blocks (`blocks`: [`BLOCK_BYTES`] a block, `scales`: one byte a
/// block), 32 a block in order.
pub(super) fn decode(blocks: &[u8], scales: &[u8]) -> Vec<f32> {
    blocks
        .chunks_exact(BLOCK_BYTES)
        .zip(scales)
        .flat_map(|(block, &s)| {
            let scale = 2f32.powi(i32::from(s) - 127);
            block.iter().flat_map(move |&b| [E2M1[usize::from(b & 15)] * scale, E2M1[usize::from(b >> 4)] * scale])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes 0..16 in order, low nibble first, at scales 2^0 and 2^-3: the table, then an eighth
    /// of it.
    #[test]
    fn codes_decode_to_e2m1_times_the_scale() {
        let block: Vec<u8> = (0..16u8).map(|i| (((2 * i + 1) % 16) << 4) | ((2 * i) % 16)).collect();
        let got = decode(&[block.clone(), block].concat(), &[127, 124]);
        let table: Vec<f32> = (0..32).map(|i| E2M1[i % 16]).collect();
        assert_eq!(&got[..32], &table[..]);
        assert!(got[32..].iter().zip(&table).all(|(g, t)| *g == t / 8.0));
        assert_eq!((got[7], got[15], got[47]), (6.0, -6.0, -0.75));
    }
}
