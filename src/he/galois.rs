//! Galois automorphisms σ_r: X ↦ X^r (r odd) with key switching back to the secret s, and the
//! packing of many sparse results into one ciphertext that they enable.
//!
//! Key switching is hybrid (one digit per prime of q, a special prime P): the key for σ_r holds,
//! for each prime p_i of q, an encryption mod q·P of P·g_i·σ_r(s) with g_i the i-th CRT
//! idempotent of q. For c1 with digits d_i = [c1]_{p_i}, Σ d_i·key_i decrypts to
//! P·c1·σ_r(s) + Σ d_i·e_i; dividing by P (rounding) leaves c1·σ_r(s) plus a noise of about
//! k·N·σ·p_i/P, a few thousand here.
//!
//! Packing (the merge step of Chen–Dai–Kim–Song's PackLWEs, applied to coefficient blocks):
//! ciphertexts whose useful coefficients sit at multiples of 2^ℓ are merged pairwise, level by
//! level: C = (A + X^(2^v)·B) + σ_r(A − X^(2^v)·B) with r = N/2^v + 1 keeps A's coefficients of
//! 2-adic valuation > v (doubled), cancels A's of valuation v and fills them with B's. After ℓ
//! levels the coefficient a·2^ℓ + j of the result is 2^ℓ times coefficient a·2^ℓ of input j.

use rand::rngs::ChaCha20Rng;
use rand::{CryptoRng, SeedableRng};
use zeroize::Zeroize;

use super::bfv::{Ciphertext, SecretKey};
use super::poly::{Form, RnsPoly};
use super::{HeError, HeParams, HeResult};
use crate::backend::{Backend, Buffer, Scratch, SwitchKeyRows, par_map};
use crate::ring::{pack_bits, packed_len, unpack_bits};

/// The key of one automorphism: per limb l of q·P, the rows (b_0..b_{k−1}, a_0..a_{k−1}) in NTT
/// form with their Shoup constants, as [`Backend::key_switch`] reads them ([`SwitchKeyRows`]),
/// in host memory until [`GaloisKeys::hold`] hands them to the backend that switches.
#[derive(Debug)]
struct SwitchKey {
    element: usize,
    seed: [u8; 32],
    /// Limb l's block: b_0..b_{k-1} then a_0..a_{k-1}, each N residues mod the l-th prime of q·P.
    rows: Buffer,
    shoup: Buffer,
}

impl SwitchKey {
    fn rows(&self, p: &HeParams) -> SwitchKeyRows<'_> {
        SwitchKeyRows { rows: &self.rows, shoup: &self.shoup, digits: p.moduli().len() }
    }
}

/// Keys for the automorphisms σ_r used by [`GaloisKeys::pack`]: r = N/2^v + 1, v < levels.
#[derive(Debug)]
pub struct GaloisKeys {
    keys: Vec<SwitchKey>,
}

/// The Galois element of packing level v: r = N/2^v + 1.
fn element(n: usize, v: u32) -> usize {
    n / (1 << v) + 1
}

/// X^e · f on one limb in coefficient form (e < 2N).
fn monomial_limb(src: &[u64], dst: &mut [u64], e: usize, p: u64) {
    let n = src.len();
    // e < 2N and i < N: i + e < 3N, so one or two subtractions of N place it
    for (i, &v) in src.iter().enumerate() {
        let mut j = i + e;
        let mut neg = false;
        while j >= n {
            j -= n;
            neg = !neg;
        }
        dst[j] = if neg && v != 0 { p - v } else { v };
    }
}

impl RnsPoly {
    /// X^e · self, in coefficient form, for any e (taken mod 2N).
    pub(crate) fn monomial_mul(&self, params: &HeParams, e: usize) -> RnsPoly {
        assert_eq!(self.form, Form::Coeff, "monomial products work on coefficients");
        let n = params.degree();
        let mut out = vec![0u64; self.limbs.len()];
        for ((src, dst), m) in self.limbs.chunks_exact(n).zip(out.chunks_exact_mut(n)).zip(params.ext_moduli()) {
            monomial_limb(src, dst, e % (2 * n), m.value());
        }
        RnsPoly { limbs: out, form: Form::Coeff }
    }

    /// One node of the expansion, with self = σ(a): self ← a + self, and returns
    /// X^(−h)·(a − self) for self as it was (both in coefficient form, 0 < h < N) — one pass
    /// over both, no copies.
    pub(crate) fn expansion_halves(&mut self, params: &HeParams, a: &RnsPoly, h: usize) -> RnsPoly {
        assert!(self.form == Form::Coeff && a.form == Form::Coeff, "monomial products work on coefficients");
        let n = params.degree();
        assert!(0 < h && h < n, "a shift within the degree");
        let mut high = vec![0u64; self.limbs.len()];
        for (((t, a), d), m) in self
            .limbs
            .chunks_exact_mut(n)
            .zip(a.limbs.chunks_exact(n))
            .zip(high.chunks_exact_mut(n))
            .zip(params.ext_moduli())
        {
            // (X^(−h)·f)[j] = f[j + h] below N − h, and −f[j + h − N] from there
            let (t_wrapped, t_kept) = t.split_at_mut(h);
            let (a_wrapped, a_kept) = a.split_at(h);
            let (d_low, d_high) = d.split_at_mut(n - h);
            for ((x, &y), o) in t_kept.iter_mut().zip(a_kept).zip(d_low) {
                (*o, *x) = (m.sub(y, *x), m.add(y, *x));
            }
            for ((x, &y), o) in t_wrapped.iter_mut().zip(a_wrapped).zip(d_high) {
                (*o, *x) = (m.sub(*x, y), m.add(y, *x));
            }
        }
        RnsPoly { limbs: high, form: Form::Coeff }
    }

    /// self ← self + X^h·b and returns self − X^h·b (both in coefficient form, h < N): one
    /// pass over both, the shift applied as it reads b.
    pub(crate) fn shifted_sum_and_difference(&mut self, params: &HeParams, b: &RnsPoly, h: usize) -> RnsPoly {
        assert!(self.form == Form::Coeff && b.form == Form::Coeff, "monomial products work on coefficients");
        let n = params.degree();
        assert!(h < n, "a shift below the degree");
        let mut diff = vec![0u64; self.limbs.len()];
        for (((a, b), d), m) in self
            .limbs
            .chunks_exact_mut(n)
            .zip(b.limbs.chunks_exact(n))
            .zip(diff.chunks_exact_mut(n))
            .zip(params.ext_moduli())
        {
            // (X^h·b)[j] = b[j − h] for j ≥ h and −b[j − h + N] below: a ∓ that
            let (a_low, a_high) = a.split_at_mut(h);
            let (d_low, d_high) = d.split_at_mut(h);
            let (b_wrapped, b_kept) = b.split_at(n - h);
            for ((x, y), &v) in a_low.iter_mut().zip(d_low.iter_mut()).zip(b_kept) {
                (*x, *y) = (m.sub(*x, v), m.add(*x, v));
            }
            for ((x, y), &v) in a_high.iter_mut().zip(d_high.iter_mut()).zip(b_wrapped) {
                (*x, *y) = (m.add(*x, v), m.sub(*x, v));
            }
        }
        RnsPoly { limbs: diff, form: Form::Coeff }
    }
}

impl SecretKey {
    /// Keys for packing up to 2^levels results per ciphertext. Needs a parameter set with a
    /// special prime.
    pub fn galois_keys<R: CryptoRng + ?Sized>(
        &self,
        levels: u32,
        backend: &dyn Backend,
        rng: &mut R,
    ) -> HeResult<GaloisKeys> {
        let p = &self.params;
        let n = p.degree();
        let Some((special, _)) = p.special() else {
            return Err(HeError::NoSpecialPrime { params: p.name() });
        };
        if levels == 0 || levels > n.trailing_zeros() {
            return Err(HeError::Unsupported {
                params: p.name(),
                what: format!("pack 2^{levels} ciphertexts of degree {n}"),
            });
        }
        let mut s = self.signed_coeffs(backend)?;
        let mut s_ext = ext_ntt(p, &s, backend)?;
        let keys = (0..levels)
            .map(|v| {
                let r = element(n, v);
                let mut s_r = vec![0i64; n];
                for (i, &c) in s.iter().enumerate() {
                    let j = (i * r) % (2 * n);
                    if j < n { s_r[j] = c } else { s_r[j - n] = -c }
                }
                let mut seed = [0u8; 32];
                rng.fill_bytes(&mut seed);
                let b = ext_ntt(p, &s_r, backend)
                    .and_then(|s_r| key_rows(p, &s_ext, &s_r, special.value(), seed, backend, rng));
                s_r.zeroize();
                Ok(SwitchKey::new(p, r, seed, b?))
            })
            .collect::<HeResult<Vec<_>>>();
        s.zeroize();
        s_ext.zeroize();
        Ok(GaloisKeys { keys: keys? })
    }
}

/// Signed small coefficients lifted to every prime of q·P, in NTT form.
fn ext_ntt(p: &HeParams, coeffs: &[i64], backend: &dyn Backend) -> HeResult<Vec<u64>> {
    let mut out = Vec::with_capacity(coeffs.len() * p.ext_moduli().len());
    for m in p.ext_moduli() {
        out.extend(coeffs.iter().map(|&c| if c >= 0 { c as u64 % m.value() } else { m.neg((-c) as u64 % m.value()) }));
    }
    backend.ntt_forward(p.ext_tables(), &mut out)?;
    Ok(out)
}

/// The uniform halves a_0..a_{k−1} of a key, expanded from its seed: per limb of q·P, k rows.
fn key_masks(p: &HeParams, seed: [u8; 32]) -> Vec<Vec<u64>> {
    use rand::RngExt;
    let (n, k) = (p.degree(), p.moduli().len());
    let mut rng = ChaCha20Rng::from_seed(seed);
    p.ext_moduli().iter().map(|m| (0..k * n).map(|_| rng.random_range(0..m.value())).collect()).collect()
}

/// b_i = −a_i·s + e_i + P·g_i·s' for every digit i, per limb of q·P (NTT form).
fn key_rows<R: CryptoRng + ?Sized>(
    p: &HeParams,
    s: &[u64],
    s_prime: &[u64],
    special: u64,
    seed: [u8; 32],
    backend: &dyn Backend,
    rng: &mut R,
) -> HeResult<Vec<Vec<u64>>> {
    let (n, k) = (p.degree(), p.moduli().len());
    let masks = key_masks(p, seed);
    let mut rows: Vec<Vec<u64>> = vec![Vec::with_capacity(k * n); k + 1];
    for i in 0..k {
        let e = ext_ntt(p, &RnsPoly::error_coeffs(n, rng), backend)?;
        for (l, m) in p.ext_moduli().iter().enumerate() {
            let (a, sl, el, spl) =
                (&masks[l][i * n..][..n], &s[l * n..][..n], &e[l * n..][..n], &s_prime[l * n..][..n]);
            let p_mod = m.reduce(special);
            rows[l].extend((0..n).map(|j| {
                let mut v = m.sub(el[j], m.mul(a[j], sl[j]));
                if l == i {
                    v = m.add(v, m.mul(p_mod, spl[j]));
                }
                v
            }));
        }
    }
    Ok(rows)
}

impl SwitchKey {
    /// Assembles rows (b's then a's per limb) and Shoup constants from the b's and the seed.
    fn new(p: &HeParams, element: usize, seed: [u8; 32], b: Vec<Vec<u64>>) -> SwitchKey {
        let masks = key_masks(p, seed);
        let (mut rows, mut shoup) = (Vec::new(), Vec::new());
        for ((b, a), m) in b.into_iter().zip(masks).zip(p.ext_moduli()) {
            let start = rows.len();
            rows.extend(b);
            rows.extend(a);
            shoup.extend(rows[start..].iter().map(|&v| m.shoup(v)));
        }
        SwitchKey { element, seed, rows: Buffer::host(rows), shoup: Buffer::host(shoup) }
    }
}

impl Ciphertext {
    /// σ_r(self) re-encrypted under s (coefficient form in, coefficient form out), at the
    /// ciphertext's level q' = q_0···q_(k−1): the key switch runs over q'·P with the first k
    /// digits (the key's gadget g_i = (q/q_i)·[(q/q_i)^-1]_(q_i) is 1 mod q_i and 0 mod every
    /// other prime, so its first k rows serve q' as they are).
    fn automorphism(&self, p: &HeParams, key: &SwitchKey, backend: &dyn Backend) -> HeResult<Ciphertext> {
        let (n, k) = (p.degree(), self.limbs(p));
        let q = &p.moduli()[..k];
        let Some((_, special_table)) = p.special() else {
            return Err(HeError::NoSpecialPrime { params: p.name() });
        };
        let mut c0 = RnsPoly { limbs: vec![0u64; k * n], form: Form::Coeff };
        backend.automorphism(q, n, key.element, &self.c0.limbs, &mut c0.limbs)?;
        let mut c1 = Scratch::take(k * n);
        backend.automorphism(q, n, key.element, &self.c1.limbs, &mut c1)?;
        // (ks0, ks1) = Σ_i [σ(c1)]_(q_i)·(b_i, a_i) / P, limb l's halves at (2l + h)·N
        let mut ks = Scratch::take(2 * k * n);
        backend.key_switch(&p.tables()[..k], Some(special_table), key.rows(p), &c1, true, &mut ks)?;
        // (c0 + ks0, ks1)
        let mut ks1 = Vec::with_capacity(k * n);
        for ((c0_l, halves), m) in c0.limbs.chunks_exact_mut(n).zip(ks.chunks_exact(2 * n)).zip(q) {
            let (ks0_l, ks1_l) = halves.split_at(n);
            c0_l.iter_mut().zip(ks0_l).for_each(|(x, &y)| *x = m.add(*x, y));
            ks1.extend_from_slice(ks1_l);
        }
        Ok(Ciphertext { c0, c1: RnsPoly { limbs: ks1, form: Form::Coeff } })
    }
}

impl GaloisKeys {
    /// Number of packing levels the keys cover.
    pub fn levels(&self) -> u32 {
        self.keys.len() as u32
    }

    /// Merges 2^ℓ ciphertexts (ℓ = log2 of the count, at most [`GaloisKeys::levels`]) whose
    /// useful coefficients sit at multiples of 2^ℓ: coefficient a·2^ℓ + j of the result is 2^ℓ
    /// times coefficient a·2^ℓ of input j; nothing else of the inputs survives. Missing inputs
    /// (`None`) count as zero. Inputs at one level of q; returns coefficient form at that level.
    pub fn pack(&self, p: &HeParams, cts: Vec<Option<Ciphertext>>, backend: &dyn Backend) -> HeResult<Ciphertext> {
        let count = cts.len();
        if !count.is_power_of_two() {
            return Err(HeError::Shape(format!("cannot pack {count} ciphertexts with {} key levels", self.levels())));
        }
        let packing = Packing::new(self, count.trailing_zeros())?;
        for (slot, ct) in cts.into_iter().enumerate() {
            if let Some(ct) = ct {
                packing.add(p, slot, ct, backend)?;
            }
        }
        packing.finish(p, backend)
    }

    /// Expands one ciphertext of Σ_i a_i·X^i into 2^ℓ ciphertexts, the i-th encrypting
    /// 2^ℓ·Σ_j a_(i+j·2^ℓ)·X^(j·2^ℓ) — the constant 2^ℓ·a_i when only a_0..a_(2^ℓ−1) are set
    /// (the oblivious expansion of SealPIR, Angel et al. 2018). Level v splits every ciphertext
    /// c by the bit v of the exponents: c + σ_r(c) keeps the half with bit v clear (doubled),
    /// (c − σ_r(c))·X^(−2^v) the other half moved down, with r = N/2^v + 1 (σ_r negates exactly
    /// the exponents with bit v set, among multiples of 2^v). Needs ℓ ≤ [`GaloisKeys::levels`]
    /// and a full-level input; returns coefficient form. Costs 2^ℓ − 1 key switches.
    pub fn expand(
        &self,
        p: &HeParams,
        ct: &Ciphertext,
        levels: u32,
        backend: &dyn Backend,
    ) -> HeResult<Vec<Ciphertext>> {
        self.expand_from(p, ct, 0, levels, backend)
    }

    /// Levels `first..first + levels` of [`GaloisKeys::expand`] on a ciphertext that went
    /// through the levels before `first` already (its exponents are multiples of 2^first):
    /// output i holds the exponents ≡ i·2^first mod 2^(first+levels), moved down.
    pub fn expand_from(
        &self,
        p: &HeParams,
        ct: &Ciphertext,
        first: u32,
        levels: u32,
        backend: &dyn Backend,
    ) -> HeResult<Vec<Ciphertext>> {
        if first + levels > self.levels() {
            return Err(HeError::Shape(format!(
                "cannot expand levels {first}..{} with {} key levels",
                first + levels,
                self.levels()
            )));
        }
        if ct.limbs(p) != p.moduli().len() {
            return Err(HeError::Shape("expansion needs a ciphertext at the full modulus".into()));
        }
        let mut ct = ct.clone();
        ct.c0.to_coeff(p, backend)?;
        ct.c1.to_coeff(p, backend)?;
        let mut cts = vec![ct];
        for v in first..first + levels {
            let key = &self.keys[v as usize];
            let step = 1usize << v;
            let halves = par_map(cts.len(), |i| -> HeResult<_> {
                let c = &cts[i];
                // low = c + σ(c) in σ(c)'s memory, high = X^(−step)·(c − σ(c)) in one pass
                let mut low = c.automorphism(p, key, backend)?;
                let high = Ciphertext {
                    c0: low.c0.expansion_halves(p, &c.c0, step),
                    c1: low.c1.expansion_halves(p, &c.c1, step),
                };
                Ok((low, high))
            });
            let (low, high): (Vec<_>, Vec<_>) = halves.into_iter().collect::<HeResult<Vec<_>>>()?.into_iter().unzip();
            cts = low.into_iter().chain(high).collect();
        }
        Ok(cts)
    }

    /// Serialized size under `p` for `levels` keys.
    pub fn encoded_len(p: &HeParams, levels: u32) -> usize {
        let (n, k) = (p.degree(), p.moduli().len());
        let per_key: usize = 4 + 32 + p.ext_moduli().iter().map(|m| packed_len(k * n, m.bits())).sum::<usize>();
        GALOIS_HEADER + levels as usize * per_key
    }

    /// Serializes: per key its element, its seed and the b rows (the a rows follow from the seed).
    /// Keys a device holds ([`GaloisKeys::hold`]) are not read back: an error.
    pub fn to_bytes(&self, p: &HeParams) -> HeResult<Vec<u8>> {
        let k = p.moduli().len();
        let n = p.degree();
        let mut out = Vec::with_capacity(GaloisKeys::encoded_len(p, self.levels()));
        out.extend_from_slice(GALOIS_TAG);
        out.push(n.trailing_zeros() as u8);
        out.push(self.keys.len() as u8);
        for key in &self.keys {
            out.extend_from_slice(&(key.element as u32).to_le_bytes());
            out.extend_from_slice(&key.seed);
            let rows = key.rows.host_values().ok_or_else(|| HeError::Unsupported {
                params: p.name(),
                what: "serialize Galois keys a device holds".into(),
            })?;
            for (row, m) in rows.chunks_exact(2 * k * n).zip(p.ext_moduli()) {
                out.extend(pack_bits(&row[..k * n], m.bits()));
            }
        }
        Ok(out)
    }

    /// Hands the keys to `backend`, which then switches with them where they are (a GPU keeps
    /// them in its memory; no copy on the CPU). A server does so once, when the keys arrive.
    pub fn hold(&mut self, backend: &dyn Backend) -> HeResult<()> {
        for key in &mut self.keys {
            for part in [&mut key.rows, &mut key.shoup] {
                let values = backend.fetch(std::mem::replace(part, Buffer::host(Vec::new())))?;
                *part = backend.hold(values)?;
            }
        }
        Ok(())
    }

    /// Reads Galois keys for `p`, checking every size, element and residue.
    pub fn from_bytes(p: &HeParams, bytes: &[u8]) -> HeResult<GaloisKeys> {
        let bad = |reason: String| HeError::Malformed { what: "Galois keys", reason };
        let (n, k) = (p.degree(), p.moduli().len());
        if p.special().is_none() {
            return Err(HeError::NoSpecialPrime { params: p.name() });
        }
        if bytes.len() < GALOIS_HEADER || &bytes[..4] != GALOIS_TAG {
            return Err(bad("not secmoe Galois keys (bad tag)".into()));
        }
        if bytes[4] as u32 != n.trailing_zeros() {
            return Err(bad(format!("degree 2^{}, expected {n}", bytes[4])));
        }
        let levels = bytes[5] as u32;
        if levels == 0 || levels > n.trailing_zeros() {
            return Err(bad(format!("{levels} levels, expected 1 to {}", n.trailing_zeros())));
        }
        if bytes.len() != GaloisKeys::encoded_len(p, levels) {
            return Err(bad(format!("{} bytes, expected {}", bytes.len(), GaloisKeys::encoded_len(p, levels))));
        }
        let mut pos = GALOIS_HEADER;
        let mut keys = Vec::with_capacity(levels as usize);
        for v in 0..levels {
            let r = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]) as usize;
            if r != element(n, v) {
                return Err(bad(format!("key {v} is for σ_{r}, expected σ_{}", element(n, v))));
            }
            let mut seed = [0u8; 32];
            seed.copy_from_slice(&bytes[pos + 4..pos + 36]);
            pos += 36;
            let mut b = Vec::with_capacity(k + 1);
            for (l, m) in p.ext_moduli().iter().enumerate() {
                let len = packed_len(k * n, m.bits());
                let row = unpack_bits(&bytes[pos..pos + len], k * n, m.bits()).map_err(|e| bad(e.to_string()))?;
                if row.iter().any(|&x| x >= m.value()) {
                    return Err(bad(format!("key {v}, limb {l}: a residue is not below its prime")));
                }
                b.push(row);
                pos += len;
            }
            keys.push(SwitchKey::new(p, r, seed, b));
        }
        Ok(GaloisKeys { keys })
    }
}

const GALOIS_TAG: &[u8; 4] = b"SMgk";
const GALOIS_HEADER: usize = 4 + 1 + 1;

/// A packing ([`GaloisKeys::pack`]) whose members arrive one by one, in any order and from
/// any thread: two members are merged as soon as both are there, so a run of 2^b members in
/// neighbouring slots of the merge tree is one ciphertext once its last member came, and a
/// row's output tiles need not all be held at once. The merges are those of the whole
/// packing, taken in another order: the result is the same.
#[derive(Debug)]
pub struct Packing<'k> {
    keys: &'k GaloisKeys,
    levels: u32,
    /// The ciphertexts waiting for a partner, and the level of q of the first member.
    waiting: std::sync::Mutex<(Waiting, Option<usize>)>,
}

/// Ciphertexts of a [`Packing`] by (levels left, index among the 2^left slots of that stage).
type Waiting = std::collections::BTreeMap<(u32, usize), Ciphertext>;

impl<'k> Packing<'k> {
    /// An empty packing of 2^`levels` slots (at most [`GaloisKeys::levels`]).
    pub fn new(keys: &'k GaloisKeys, levels: u32) -> HeResult<Packing<'k>> {
        if levels > keys.levels() {
            return Err(HeError::Shape(format!(
                "cannot pack 2^{levels} ciphertexts with {} key levels",
                keys.levels()
            )));
        }
        Ok(Packing { keys, levels, waiting: std::sync::Mutex::new((std::collections::BTreeMap::new(), None)) })
    }

    /// Adds the member of `slot` (below 2^levels, each slot once), merging it with every
    /// partner already there (outside the lock: other members are added meanwhile).
    pub fn add(&self, p: &HeParams, slot: usize, mut ct: Ciphertext, backend: &dyn Backend) -> HeResult<()> {
        if slot >> self.levels != 0 {
            return Err(HeError::Shape(format!("packing slot {slot} of 2^{}", self.levels)));
        }
        ct.c0.to_coeff(p, backend)?;
        ct.c1.to_coeff(p, backend)?;
        let (mut left, mut index) = (self.levels, slot);
        loop {
            let partner = {
                let mut guard = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                let (waiting, limbs) = &mut *guard;
                if *limbs.get_or_insert(ct.limbs(p)) != ct.limbs(p) {
                    return Err(HeError::Shape("packing needs ciphertexts at one modulus level".into()));
                }
                if left == 0 {
                    waiting.insert((0, 0), ct);
                    return Ok(());
                }
                let partner = waiting.remove(&(left, index ^ (1 << (left - 1))));
                if partner.is_none() {
                    if waiting.insert((left, index), ct).is_some() {
                        return Err(HeError::Shape(format!("packing slot {slot} filled twice")));
                    }
                    return Ok(());
                }
                partner
            };
            let half = 1usize << (left - 1);
            let (low, high) = match index & half == 0 {
                true => (Some(ct), partner),
                false => (partner, Some(ct)),
            };
            ct = self.merge(p, left - 1, (low, high), backend)?;
            (left, index) = (left - 1, index & (half - 1));
        }
    }

    /// The packed ciphertext: every member still waiting goes through the rest of its levels
    /// alone (its partner never came: zero), merging with what it meets.
    pub fn finish(self, p: &HeParams, backend: &dyn Backend) -> HeResult<Ciphertext> {
        self.take(p, backend)
    }

    /// [`Packing::finish`] through a shared reference (packings kept side by side), leaving
    /// the packing empty.
    pub fn take(&self, p: &HeParams, backend: &dyn Backend) -> HeResult<Ciphertext> {
        let (mut waiting, limbs) = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        for left in (1..=self.levels).rev() {
            let half = 1usize << (left - 1);
            // this stage's members by parent: the pairs members added earlier left unmerged
            // (a partner missing) and those the stage above just produced
            let mut pairs: std::collections::BTreeMap<usize, (Option<Ciphertext>, Option<Ciphertext>)> =
                std::collections::BTreeMap::new();
            while let Some(((_, index), ct)) =
                waiting.range((left, 0)..(left + 1, 0)).next().map(|(&k, _)| k).and_then(|k| waiting.remove_entry(&k))
            {
                let pair = pairs.entry(index & (half - 1)).or_default();
                match index & half == 0 {
                    true => pair.0 = Some(ct),
                    false => pair.1 = Some(ct),
                }
            }
            for (parent, pair) in pairs {
                let merged = self.merge(p, left - 1, pair, backend)?;
                waiting.insert((left - 1, parent), merged);
            }
        }
        match waiting.remove(&(0, 0)) {
            Some(ct) => Ok(ct),
            None => {
                let zero =
                    RnsPoly { limbs: vec![0u64; limbs.unwrap_or(p.moduli().len()) * p.degree()], form: Form::Coeff };
                Ok(Ciphertext { c0: zero.clone(), c1: zero })
            }
        }
    }

    /// One merge of level v: a + σ(a + X^(2^v)·b … ) as [`GaloisKeys::pack`] defines it, with a
    /// missing member zero.
    fn merge(
        &self,
        p: &HeParams,
        v: u32,
        (a, b): (Option<Ciphertext>, Option<Ciphertext>),
        backend: &dyn Backend,
    ) -> HeResult<Ciphertext> {
        let half = 1usize << v;
        let limbs = a.as_ref().or(b.as_ref()).map_or(p.moduli().len(), |c| c.limbs(p));
        let mut sum = a.unwrap_or_else(|| {
            let zero = RnsPoly { limbs: vec![0u64; limbs * p.degree()], form: Form::Coeff };
            Ciphertext { c0: zero.clone(), c1: zero }
        });
        let diff = match b {
            Some(b) => Ciphertext {
                c0: sum.c0.shifted_sum_and_difference(p, &b.c0, half),
                c1: sum.c1.shifted_sum_and_difference(p, &b.c1, half),
            },
            None => sum.clone(),
        };
        let turned = diff.automorphism(p, &self.keys.keys[v as usize], backend)?;
        sum.c0.add_assign(p, &turned.c0);
        sum.c1.add_assign(p, &turned.c1);
        Ok(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::he::Plaintext;
    use rand::{RngExt, rngs::StdRng};

    /// One pass gives a + X^h·b and a − X^h·b, as the monomial product then a sum and a
    /// difference do, for shifts at both ends.
    #[test]
    fn the_shifted_sum_and_difference_are_the_monomial_products() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(22);
        let (a, b) = (RnsPoly::uniform(&p, Form::Coeff, &mut rng), RnsPoly::uniform(&p, Form::Coeff, &mut rng));
        for h in [0, 1, 1000, p.degree() - 1] {
            let shifted = b.monomial_mul(&p, h);
            let (mut sum, mut diff) = (a.clone(), a.clone());
            sum.add_assign(&p, &shifted);
            diff.sub_assign(&p, &shifted);
            let mut got = a.clone();
            let got_diff = got.shifted_sum_and_difference(&p, &b, h);
            assert_eq!((got.limbs, got_diff.limbs), (sum.limbs, diff.limbs), "h = {h}");
        }
    }

    #[test]
    fn packing_interleaves_the_inputs_times_their_count() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(21);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let keys = sk.galois_keys(3, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let keys = GaloisKeys::from_bytes(&p, &keys.to_bytes(&p).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let n = p.degree();
        let t_mask = (1u128 << p.plain_bits()) - 1;
        for count in [1usize, 2, 8] {
            let msgs: Vec<Vec<u64>> = (0..count).map(|_| (0..n).map(|_| rng.random()).collect()).collect();
            let mut cts: Vec<Option<Ciphertext>> = msgs
                .iter()
                .map(|m| {
                    Some(
                        sk.encrypt(&Plaintext::new(&p, m.clone()).unwrap_or_else(|e| panic!("{e}")), &be, &mut rng)
                            .unwrap_or_else(|e| panic!("{e}")),
                    )
                })
                .collect();
            if count == 8 {
                cts[5] = None;
            }
            let packed = keys.pack(&p, cts.clone(), &be).unwrap_or_else(|e| panic!("{e}"));
            let keep: Vec<usize> = (0..n).collect();
            let shrunk = packed.shrink(&p, &keep, 74, 83, &be).unwrap_or_else(|e| panic!("{e}"));
            let got = sk.decrypt_shrunk(&shrunk, &keep, &be).unwrap_or_else(|e| panic!("{e}"));
            for (pos, &g) in got.iter().enumerate() {
                let (a, j) = (pos / count, pos % count);
                let want = if cts[j].is_some() { (msgs[j][a * count] as u128 * count as u128) & t_mask } else { 0 };
                assert_eq!(g, want, "count {count}, position {pos}");
            }
            assert!(sk.noise_budget(&packed, &be).unwrap_or_else(|e| panic!("{e}")) > 30.0);
        }
    }

    #[test]
    fn members_added_one_by_one_from_two_threads_in_any_order_pack_as_all_at_once() {
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(23);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let keys = sk.galois_keys(3, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let n = p.degree();
        // members in 6 of 8 slots (two lone ones), added in a scrambled order
        let mut cts: Vec<Option<Ciphertext>> = (0..8)
            .map(|_| {
                let m: Vec<u64> = (0..n).map(|_| rng.random()).collect();
                let pt = Plaintext::new(&p, m).unwrap_or_else(|e| panic!("{e}"));
                Some(sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}")))
            })
            .collect();
        (cts[3], cts[6]) = (None, None);
        let whole = keys.pack(&p, cts.clone(), &be).unwrap_or_else(|e| panic!("{e}"));
        let packing = Packing::new(&keys, 3).unwrap_or_else(|e| panic!("{e}"));
        let order = [[5usize, 0, 7], [2, 4, 1]];
        std::thread::scope(|scope| {
            for half in order {
                let (packing, cts, p, be) = (&packing, &cts, &p, &be);
                scope.spawn(move || {
                    for slot in half.into_iter().filter(|&s| cts[s].is_some()) {
                        let ct = cts[slot].clone().unwrap_or_else(|| unreachable!());
                        packing.add(p, slot, ct, be).unwrap_or_else(|e| panic!("{e}"));
                    }
                });
            }
        });
        let online = packing.finish(&p, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((online.c0.limbs, online.c1.limbs), (whole.c0.limbs, whole.c1.limbs));
        // a slot beyond the packing, or filled twice, is refused
        let packing = Packing::new(&keys, 2).unwrap_or_else(|e| panic!("{e}"));
        let ct = cts[0].clone().unwrap_or_else(|| unreachable!());
        assert!(matches!(packing.add(&p, 4, ct.clone(), &be), Err(HeError::Shape(_))));
        packing.add(&p, 1, ct.clone(), &be).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(packing.add(&p, 1, ct, &be), Err(HeError::Shape(_))));
        assert!(Packing::new(&keys, 4).is_err(), "more levels than the keys have");
    }

    #[test]
    fn keys_need_a_special_prime_and_wrong_bytes_are_refused() {
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(22);
        let plain = HeParams::n4096().unwrap_or_else(|e| panic!("{e}"));
        let sk = SecretKey::generate(&plain, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        assert!(sk.galois_keys(2, &be, &mut rng).is_err());
        let p = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let bytes = sk.galois_keys(1, &be, &mut rng).and_then(|k| k.to_bytes(&p)).unwrap_or_else(|e| panic!("{e}"));
        let err = GaloisKeys::from_bytes(&p, &bytes[..bytes.len() - 1]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("bytes, expected")));
        let mut wrong = bytes.clone();
        wrong[6] ^= 1;
        let err = GaloisKeys::from_bytes(&p, &wrong).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("expected σ_8193")), "element check");
    }
}
