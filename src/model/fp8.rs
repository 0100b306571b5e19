//! FP8 weights with block scales, the format DeepSeek-V3, Kimi-K2 and the `-FP8` releases of
//! Qwen3 and GLM-4.5 ship their matrices in (`quant_method: "fp8"`): each value an E4M3 byte
//! (`float8_e4m3fn`: 4 exponent bits biased by 7, 3 mantissa bits, no infinities, S.1111.111
//! NaN), each block of `weight_block_size` (128 × 128) values sharing one f32 factor
//! (`weight_scale_inv`): w = e4m3 · scale. Every value is exact in f32.

/// The value of an E4M3 (`float8_e4m3fn`) byte.
pub(super) fn e4m3(b: u8) -> f32 {
    let (sign, exponent, mantissa) = (b >> 7, (b >> 3) & 15, b & 7);
    let magnitude = match (exponent, mantissa) {
        (15, 7) => f32::NAN,
        (0, m) => f32::from(m) / 8.0 * 2f32.powi(-6),
        (e, m) => (1.0 + f32::from(m) / 8.0) * 2f32.powi(i32::from(e) - 7),
    };
    if sign == 1 { -magnitude } else { magnitude }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of `torch.tensor(…).view(torch.float8_e4m3fn)`: one, the largest, the least
    /// subnormal and normal, a negative, NaN.
    #[test]
    fn bytes_decode_as_torch_reads_them() {
        let cases =
            [(0x38, 1.0), (0x7e, 448.0), (0x01, 2f32.powi(-9)), (0x08, 2f32.powi(-6)), (0xb8, -1.0), (0x3c, 1.5)];
        for (b, want) in cases {
            assert_eq!(e4m3(b), want, "{b:#04x}");
        }
        assert!(e4m3(0x7f).is_nan() && e4m3(0xff).is_nan() && e4m3(0x80) == 0.0);
    }
}
