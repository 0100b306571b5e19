//! Two's-complement fixed point in Z_2^64.

use super::RingError;

/// Fractional bits used unless configured otherwise (the SecMoE paper's choice).
pub const DEFAULT_FRAC_BITS: u32 = 18;

/// A fixed-point format: the real `x` is carried as the ring element `round(x · 2^f) mod 2^64`.
///
/// Values are read back as signed integers, so the format holds `|x| < 2^(63-f)`; products of two
/// encoded values carry `2f` fractional bits and are truncated by `f` bits afterwards
/// ([`FixedPoint::mul`] is the plaintext reference of that step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedPoint {
    frac_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        Self { frac_bits: DEFAULT_FRAC_BITS }
    }
}

impl FixedPoint {
    /// A format with `frac_bits` fractional bits (1..=40, leaving room for products).
    pub fn new(frac_bits: u32) -> Result<Self, RingError> {
        if frac_bits == 0 || frac_bits > 40 {
            return Err(RingError::BadFormat(frac_bits));
        }
        Ok(Self { frac_bits })
    }

    /// Number of fractional bits `f`.
    pub fn frac_bits(&self) -> u32 {
        self.frac_bits
    }

    /// The scale `2^f`.
    pub fn scale(&self) -> f64 {
        (1u64 << self.frac_bits) as f64
    }

    /// Largest magnitude (exclusive) that encodes without wrapping: `2^(63-f)`.
    pub fn limit(&self) -> f64 {
        (1u64 << (63 - self.frac_bits)) as f64
    }

    /// Encodes a real number, rounding to the nearest multiple of `2^-f`.
    pub fn encode(&self, x: f64) -> Result<u64, RingError> {
        let limit = self.limit();
        if !x.is_finite() || x.abs() >= limit {
            return Err(RingError::OutOfRange { value: x, frac_bits: self.frac_bits, limit });
        }
        Ok((x * self.scale()).round() as i64 as u64)
    }

    /// Encodes a slice of reals.
    pub fn encode_slice(&self, xs: &[f64]) -> Result<Vec<u64>, RingError> {
        xs.iter().map(|&x| self.encode(x)).collect()
    }

    /// Decodes a ring element read as a signed fixed-point number.
    pub fn decode(&self, x: u64) -> f64 {
        (x as i64) as f64 / self.scale()
    }

    /// Decodes a slice of ring elements.
    pub fn decode_slice(&self, xs: &[u64]) -> Vec<f64> {
        xs.iter().map(|&x| self.decode(x)).collect()
    }

    /// Plaintext reference of a fixed-point product: `(a · b mod 2^64) >> f`, an arithmetic shift
    /// of the signed product. Exact whenever the true product fits in 63 bits.
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        ((a.wrapping_mul(b) as i64) >> self.frac_bits) as u64
    }
}

/// Element types of checkpoint tensors (safetensors' `F32`, `F16`, `BF16`), little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of a binary32).
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    fn read(self, b: &[u8]) -> f32 {
        match self {
            Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        }
    }

    /// The elements of the tensor `name` given as raw little-endian `bytes` (exact: every
    /// element of these types is an f32).
    pub fn decode(self, name: &str, bytes: &[u8]) -> Result<Vec<f32>, RingError> {
        if !bytes.len().is_multiple_of(self.size()) {
            return Err(RingError::TensorBytes { tensor: name.into(), len: bytes.len(), dtype: self });
        }
        Ok(bytes.chunks_exact(self.size()).map(|b| self.read(b)).collect())
    }
}

impl FixedPoint {
    /// Encodes the tensor `name` given as raw little-endian `bytes` of `dtype` (a checkpoint's
    /// weights), every element rounded to the format. With `bound_bits`, every encoded element
    /// must also satisfy |w| ≤ 2^bound_bits (the bound the HE layer's flooding is sized for). The
    /// first element that is not finite or does not fit is reported with the tensor's name, its
    /// index and its value.
    pub fn encode_tensor(
        &self,
        name: &str,
        dtype: Dtype,
        bytes: &[u8],
        bound_bits: Option<u32>,
    ) -> Result<Vec<u64>, RingError> {
        self.encode_named(name, &dtype.decode(name, bytes)?, bound_bits)
    }

    /// Encodes the values of the tensor `name` (see [`FixedPoint::encode_tensor`]).
    pub fn encode_named(&self, name: &str, values: &[f32], bound_bits: Option<u32>) -> Result<Vec<u64>, RingError> {
        let bound = bound_bits.map(|b| (1u128 << b) as f64 / self.scale()).unwrap_or(self.limit());
        values
            .iter()
            .enumerate()
            .map(|(index, &value)| {
                let value = value as f64;
                let fits = value.is_finite() && (value * self.scale()).round().abs() <= bound * self.scale();
                if fits && value.abs() < self.limit() {
                    Ok((value * self.scale()).round() as i64 as u64)
                } else {
                    let reason = match bound_bits {
                        _ if !value.is_finite() => "is not finite".to_string(),
                        Some(b) => format!(
                            "exceeds the declared bound 2^{b} units (±{bound}) at {} fractional bits",
                            self.frac_bits
                        ),
                        None => format!("does not fit {} fractional bits (|x| < {})", self.frac_bits, self.limit()),
                    };
                    Err(RingError::TensorValue { tensor: name.into(), index, value, reason })
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_unusable_formats_and_values() {
        assert_eq!(FixedPoint::new(0), Err(RingError::BadFormat(0)));
        assert_eq!(FixedPoint::new(41), Err(RingError::BadFormat(41)));
        let fp = FixedPoint::default();
        assert!(fp.encode(f64::NAN).is_err());
        assert!(fp.encode(f64::INFINITY).is_err());
        assert!(fp.encode(fp.limit()).is_err());
        assert!(fp.encode(-fp.limit()).is_err());
    }

    #[test]
    fn negative_values_are_twos_complement() {
        let fp = FixedPoint::default();
        assert_eq!(fp.encode(-1.0), Ok((-(1i64 << 18)) as u64));
        assert_eq!(fp.decode(fp.encode(-2.5).unwrap_or_default()), -2.5);
    }

    #[test]
    fn checkpoint_tensors_of_every_dtype_encode_and_bad_elements_are_named() {
        let fp = FixedPoint::default();
        let values = [0.5f32, -1.25, 3.0e-3, -7.0];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16_bytes: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        let bf16_bytes: Vec<u8> = values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
        for (dtype, bytes, tolerance) in
            [(Dtype::F32, &f32_bytes, 0.5), (Dtype::F16, &f16_bytes, 1.0), (Dtype::BF16, &bf16_bytes, 40.0)]
        {
            let got = fp.encode_tensor("w", dtype, bytes, Some(23)).unwrap_or_else(|e| panic!("{e}"));
            for (&g, &v) in got.iter().zip(&values) {
                // within the dtype's own rounding, in units of 2^-18
                assert!((fp.decode(g) - v as f64).abs() * fp.scale() <= tolerance, "{dtype:?}: {v}");
            }
        }
        // a weight beyond 2^20 units (4.0 at 18 fractional bits), a NaN, a ragged byte count
        let refused = |r: Result<Vec<u64>, RingError>| r.err().unwrap_or_else(|| panic!("accepted"));
        let err = refused(fp.encode_tensor("layers.0.mlp.w1", Dtype::F32, &f32_bytes, Some(20)));
        assert!(
            matches!(&err, RingError::TensorValue { tensor, index: 3, value, .. }
            if tensor == "layers.0.mlp.w1" && *value == -7.0),
            "{err}"
        );
        assert!(err.to_string().contains("tensor `layers.0.mlp.w1`, element 3: -7"), "{err}");
        let nan: Vec<u8> = [1.0f32, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        let err = refused(fp.encode_tensor("g", Dtype::F32, &nan, None));
        assert!(err.to_string().contains("element 1: NaN is not finite"), "{err}");
        let err = refused(fp.encode_tensor("h", Dtype::F16, &[0, 0, 0], None));
        assert!(matches!(err, RingError::TensorBytes { len: 3, dtype: Dtype::F16, .. }), "{err}");
    }

    proptest! {
        #[test]
        fn encode_decode_is_within_half_an_ulp(x in -1.0e6f64..1.0e6, f in 8u32..=30) {
            let fp = FixedPoint::new(f).unwrap_or_default();
            let y = fp.decode(fp.encode(x).unwrap_or_default());
            prop_assert!((x - y).abs() <= 0.5 / fp.scale() + 1e-12);
        }

        #[test]
        fn encoding_is_additive(a in -1.0e6f64..1.0e6, b in -1.0e6f64..1.0e6) {
            let fp = FixedPoint::default();
            let sum = fp.encode(a).unwrap_or_default().wrapping_add(fp.encode(b).unwrap_or_default());
            prop_assert!((fp.decode(sum) - (a + b)).abs() <= 1.0 / fp.scale());
        }

        #[test]
        fn product_reference_is_within_one_ulp_plus_rounding(a in -1.0e3f64..1.0e3, b in -1.0e3f64..1.0e3) {
            let fp = FixedPoint::default();
            let (ea, eb) = (fp.encode(a).unwrap_or_default(), fp.encode(b).unwrap_or_default());
            let exact = fp.decode(ea) * fp.decode(eb);
            prop_assert!((fp.decode(fp.mul(ea, eb)) - exact).abs() <= 1.0 / fp.scale());
        }
    }
}
