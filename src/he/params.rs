//! RLWE parameter sets at 128-bit classical security by the HE standard (2018) tables.

use std::sync::{Arc, OnceLock};

use crate::backend::NttTable;
use crate::ring::modp::{Modulus, ntt_primes};

use super::{HeError, HeResult};
use crate::backend::TensorBasis;

/// Largest total log2 q for 128-bit classical security with a ternary secret (HE standard,
/// Table 1), by ring degree.
pub fn max_log_q_128(n: usize) -> Option<u32> {
    match n {
        1024 => Some(27),
        2048 => Some(54),
        4096 => Some(109),
        8192 => Some(218),
        16384 => Some(438),
        32768 => Some(881),
        _ => None,
    }
}

/// An RLWE ring Z_q\[X\]/(X^N + 1) with q = ∏ p_i (RNS), its NTT tables, the plaintext modulus
/// t = 2^plain_bits, and optionally a special prime P for key switching (keys live mod q·P).
#[derive(Debug)]
pub struct HeParams {
    name: &'static str,
    n: usize,
    /// The primes of q, then the special prime if there is one.
    moduli: Vec<Modulus>,
    tables: Vec<NttTable>,
    q_count: usize,
    plain_bits: u32,
    /// The ciphertext products' extended bases, by level (built on first use).
    tensor: Vec<OnceLock<TensorBasis>>,
}

impl HeParams {
    /// Builds and checks a parameter set: N a power of two, every p_i an NTT-friendly prime, and
    /// Σ log2 p_i within the 128-bit-security bound for N.
    pub fn new(name: &'static str, n: usize, primes: &[u64]) -> HeResult<Arc<HeParams>> {
        HeParams::build(name, n, primes, None, 64)
    }

    /// Like [`HeParams::new`], with a special prime for key switching (the security bound then
    /// covers q·P, the modulus of the keys) and a plaintext modulus 2^plain_bits (64..=96).
    pub fn with_special(
        name: &'static str,
        n: usize,
        primes: &[u64],
        special: u64,
        plain_bits: u32,
    ) -> HeResult<Arc<HeParams>> {
        HeParams::build(name, n, primes, Some(special), plain_bits)
    }

    fn build(
        name: &'static str,
        n: usize,
        primes: &[u64],
        special: Option<u64>,
        plain_bits: u32,
    ) -> HeResult<Arc<HeParams>> {
        let bound = max_log_q_128(n).ok_or(HeError::NoSecurityEntry { degree: n })?;
        if !(64..=96).contains(&plain_bits) {
            return Err(HeError::PlainModulus { bits: plain_bits });
        }
        let all: Vec<u64> = primes.iter().copied().chain(special).collect();
        let moduli: Vec<Modulus> = all.iter().map(|&p| Modulus::new(p)).collect::<Result<_, _>>()?;
        let log_q: f64 = all.iter().map(|&p| (p as f64).log2()).sum();
        if log_q > bound as f64 {
            return Err(HeError::Insecure { degree: n, log_q, bound });
        }
        let mut sorted = all.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(HeError::RepeatedPrime { prime: w[0] });
        }
        let tables = moduli.iter().map(|&m| NttTable::new(n, m)).collect::<Result<_, _>>()?;
        let tensor = primes.iter().map(|_| OnceLock::new()).collect();
        Ok(Arc::new(HeParams { name, n, moduli, tables, q_count: primes.len(), plain_bits, tensor }))
    }

    /// The same ring, primes and special prime with plaintext modulus 2^`bits` (64..=96): keys
    /// do not depend on t, so a session's keys serve every sibling set.
    pub fn with_plain_bits(&self, bits: u32) -> HeResult<Arc<HeParams>> {
        let primes: Vec<u64> = self.moduli().iter().map(Modulus::value).collect();
        HeParams::build(self.name, self.n, &primes, self.special().map(|(m, _)| m.value()), bits)
    }

    /// N = 4096, q = two primes of 55 and 54 bits (109 bits).
    pub fn n4096() -> HeResult<Arc<HeParams>> {
        let mut primes = ntt_primes(55, 4096, 1)?;
        primes.extend(ntt_primes(54, 4096, 1)?);
        HeParams::new("n4096", 4096, &primes)
    }

    /// N = 8192, q = four primes of 55, 55, 54 and 54 bits (218 bits).
    pub fn n8192() -> HeResult<Arc<HeParams>> {
        let mut primes = ntt_primes(55, 8192, 2)?;
        primes.extend(ntt_primes(54, 8192, 2)?);
        HeParams::new("n8192", 8192, &primes)
    }

    /// The linear layers' set: N = 8192, q = three primes of 58, 58 and 57 bits (173 bits) with
    /// room above the plaintext for flooding noise that hides the weights, a 45-bit special
    /// prime for the Galois keys (q·P = 218 bits), and t = 2^70 so that packing up to 2^6
    /// results into one ciphertext (which multiplies them by 2^6) keeps all 64 bits. The special
    /// prime is as small as keeps a key switch's noise (k·N·21·p_i/P ≈ 2^32) below the weights'
    /// noise: every bit moved from P to q is a bit more of flooding margin.
    pub fn linear() -> HeResult<Arc<HeParams>> {
        let mut primes = ntt_primes(58, 8192, 2)?;
        primes.extend(ntt_primes(57, 8192, 1)?);
        HeParams::with_special("linear8192", 8192, &primes, ntt_primes(45, 8192, 1)?[0], 70)
    }

    /// The selected products' set ([`super::selected`]): N = 16384, q = six 58-bit primes
    /// (348 bits) and a 58-bit special prime (q·P = 406 of the 438 bits N allows), t = 2^84.
    /// t holds 64 bits of product above 2^20: the factor 2^ℓ of expanding up to 2^10 selectors
    /// from one ciphertext times the factor 2^ℓ' of packing up to 2^10 results into one. The
    /// modulus leaves room above a ciphertext product's noise (≈ t·√N times the selection
    /// sum's) for flooding it with a 40-bit statistical margin.
    pub fn select() -> HeResult<Arc<HeParams>> {
        let primes = ntt_primes(58, 16384, 7)?;
        HeParams::with_special("select16384", 16384, &primes[..6], primes[6], 84)
    }

    /// Short name, also used in the handshake.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// log2 t: plaintexts are polynomials mod 2^plain_bits.
    pub fn plain_bits(&self) -> u32 {
        self.plain_bits
    }

    /// The special key-switching prime and its NTT table, if the set has one.
    pub fn special(&self) -> Option<(&Modulus, &NttTable)> {
        self.moduli.get(self.q_count).zip(self.tables.get(self.q_count))
    }

    /// The primes of q followed by the special prime (the basis of key-switching keys).
    pub fn ext_moduli(&self) -> &[Modulus] {
        &self.moduli
    }

    /// NTT tables of [`HeParams::ext_moduli`].
    pub fn ext_tables(&self) -> &[NttTable] {
        &self.tables
    }

    /// Ring degree N.
    pub fn degree(&self) -> usize {
        self.n
    }

    /// The RNS primes.
    pub fn moduli(&self) -> &[Modulus] {
        &self.moduli[..self.q_count]
    }

    /// NTT tables, one per prime.
    pub fn tables(&self) -> &[NttTable] {
        &self.tables[..self.q_count]
    }

    /// The extended basis and constants for ciphertext products at `level` limbs, computed once.
    pub(crate) fn tensor_basis(&self, level: usize) -> HeResult<&TensorBasis> {
        let slot = self.tensor.get(level.wrapping_sub(1)).ok_or_else(|| {
            HeError::Shape(format!("a ciphertext at {level} limbs under {} ({} primes)", self.name, self.q_count))
        })?;
        if let Some(basis) = slot.get() {
            return Ok(basis);
        }
        let basis = super::mult::tensor_basis(self, level)?;
        Ok(slot.get_or_init(|| basis))
    }

    /// log2 q.
    pub fn log_q(&self) -> f64 {
        self.moduli().iter().map(|m| (m.value() as f64).log2()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_within_the_security_bound() {
        for params in [HeParams::n4096(), HeParams::n8192(), HeParams::linear()] {
            let params = params.unwrap_or_else(|e| panic!("{e}"));
            let bound = max_log_q_128(params.degree()).unwrap_or(0) as f64;
            let log_qp: f64 = params.ext_moduli().iter().map(|m| (m.value() as f64).log2()).sum();
            assert!(log_qp <= bound, "{}: {log_qp} > {bound}", params.name());
            assert!(log_qp > bound - 2.0, "{} wastes modulus", params.name());
            for m in params.moduli() {
                assert_eq!(m.value() % (2 * params.degree() as u64), 1);
            }
        }
    }

    #[test]
    fn insecure_or_malformed_sets_are_rejected() {
        let big = ntt_primes(60, 4096, 2).unwrap_or_default();
        let insecure = HeParams::new("x", 4096, &big);
        assert!(matches!(insecure, Err(HeError::Insecure { degree: 4096, bound: 109, .. })), "{insecure:?}");
        let p = ntt_primes(40, 4096, 1).unwrap_or_default();
        let repeated = HeParams::new("x", 4096, &[p[0], p[0]]);
        assert!(matches!(repeated, Err(HeError::RepeatedPrime { prime }) if prime == p[0]), "{repeated:?}");
        assert!(matches!(HeParams::new("x", 3000, &p), Err(HeError::NoSecurityEntry { degree: 3000 })));
        let wide = HeParams::with_special("x", 4096, &p, ntt_primes(41, 4096, 1).unwrap_or_default()[0], 100);
        assert!(matches!(wide, Err(HeError::PlainModulus { bits: 100 })), "{wide:?}");
        assert!(HeParams::new("x", 4096, &[p[0] + 2]).is_err(), "not prime / not NTT-friendly");
    }
}
