//! Chosen-input OTs derived from random OTs (Beaver's derandomization).
//!
//! * Additively correlated OT over Z_2^w: the sender inputs Δ_i and gets a uniform x_i; the
//!   receiver inputs c_i and gets x_i + c_i·Δ_i. Cost on top of the random OT: 1 + w bits.
//! * 1-of-N OT (N = 2^m) of w-bit messages from m random 1-of-2 OTs: message j is padded with
//!   H(⊕_k K_k^{j_k}, tweak_j). A receiver holding the keys of its own index j misses, for every
//!   j' ≠ j, a key of some bit where j' differs, so every other pad is pseudorandom (random-oracle
//!   model, as in KKRT's 1-of-N OT). Cost on top of the random OTs: m + N·w bits.

use super::{Ot, OtError, OtKind, OtResult};
use crate::backend::{Block, Tweaks};
use crate::ring::mask;

/// Pads of a 1-of-N OT built, hashed and sent at a time (whole instances, at least one).
const ONE_OF_N_CHUNK: usize = 1 << 18;

fn low_u64(b: &Block) -> u64 {
    <[u64; 2]>::from(*b)[0]
}

fn bits_to_u64(bits: &[bool]) -> Vec<u64> {
    bits.iter().map(|&b| b as u64).collect()
}

/// The instance ranges of `groups` (width, instances) cut into chunks of at most `per_chunk`
/// instances, each with its group's width, in order.
fn chunks(groups: &[(u32, usize)], per_chunk: usize) -> Vec<(u32, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for &(width, count) in groups {
        let end = start + count;
        out.extend((start..end).step_by(per_chunk).map(|first| (width, first..(first + per_chunk).min(end))));
        start = end;
    }
    out
}

fn check_width(width: u32) -> OtResult<()> {
    if !(1..=64).contains(&width) {
        return Err(OtError::Invalid(format!("message width {width} bits is not in 1..=64")));
    }
    Ok(())
}

impl Ot {
    fn hash(&mut self, keys: &[Block]) -> OtResult<Vec<u64>> {
        let tweak = self.tweaks(keys.len());
        self.hash_at(keys, tweak)
    }

    /// Hashes `keys` under tweaks `tweak`, `tweak + 1`, … (reserved by the caller).
    fn hash_at(&self, keys: &[Block], tweak: u64) -> OtResult<Vec<u64>> {
        let mut out = vec![Block::ZERO; keys.len()];
        self.backend.hash_blocks(keys, Tweaks::Sequential(tweak), &mut out)?;
        Ok(out.iter().map(low_u64).collect())
    }

    /// Correlated OT, sender side: returns `x` with `x_i` uniform in Z_2^w; the receiver gets
    /// `x_i + c_i·Δ_i mod 2^w`.
    pub async fn cot_send(&mut self, kind: OtKind, deltas: &[u64], width: u32) -> OtResult<Vec<u64>> {
        self.cot_vec_send(kind, deltas, 1, width).await
    }

    /// Correlated OT, receiver side: returns `x_i + c_i·Δ_i mod 2^w`.
    pub async fn cot_receive(&mut self, kind: OtKind, choices: &[bool], width: u32) -> OtResult<Vec<u64>> {
        self.cot_vec_receive(kind, choices, 1, width).await
    }

    /// Correlated OT of vectors, sender side: OT i carries the `len` values
    /// `deltas[i·len..(i+1)·len]` under one choice bit, its pads expanded from the random OT's
    /// keys by the hash with a fresh tweak per value. Returns uniform `x` (same layout); the
    /// receiver gets `x + c_i·Δ_i`. One random OT per vector.
    #[tracing::instrument(level = "debug", skip_all, fields(n = deltas.len(), len, width))]
    pub async fn cot_vec_send(&mut self, kind: OtKind, deltas: &[u64], len: usize, width: u32) -> OtResult<Vec<u64>> {
        check_width(width)?;
        if len == 0 || !deltas.len().is_multiple_of(len) {
            return Err(OtError::Invalid(format!("{} values in vectors of {len}", deltas.len())));
        }
        let _s = self.meter().scope("cot");
        let n = deltas.len() / len;
        let rot = self.random_send(kind, n).await?;
        let flips = self.channel.recv_packed("cot choice flips", n, 1).await?;
        // Reorder each pair so that `first` is the key the receiver holds when c_i = 0; one copy
        // per value of the vector.
        let mut first = Vec::with_capacity(n * len);
        let mut second = Vec::with_capacity(n * len);
        for (k, &d) in rot.keys.iter().zip(&flips) {
            let (a, b) = if d == 1 { (k[1], k[0]) } else { (k[0], k[1]) };
            first.extend(std::iter::repeat_n(a, len));
            second.extend(std::iter::repeat_n(b, len));
        }
        let m = mask(width);
        // both keys of a pair under the same tweaks
        let tweak = self.tweaks(n * len);
        let x: Vec<u64> = self.hash_at(&first, tweak)?.iter().map(|h| h & m).collect();
        let h1 = self.hash_at(&second, tweak)?;
        let y: Vec<u64> =
            h1.iter().zip(&x).zip(deltas).map(|((h, x), d)| h.wrapping_sub(*x).wrapping_sub(*d) & m).collect();
        self.channel.send_packed(&y, width).await?;
        Ok(x)
    }

    /// Correlated OT of vectors, receiver side: returns `x + c_i·Δ_i` for each vector i.
    #[tracing::instrument(level = "debug", skip_all, fields(n = choices.len(), len, width))]
    pub async fn cot_vec_receive(
        &mut self,
        kind: OtKind,
        choices: &[bool],
        len: usize,
        width: u32,
    ) -> OtResult<Vec<u64>> {
        check_width(width)?;
        if len == 0 {
            return Err(OtError::Invalid("vectors of 0 values".into()));
        }
        let _s = self.meter().scope("cot");
        let n = choices.len();
        let rot = self.random_receive(kind, n).await?;
        let flips: Vec<bool> = choices.iter().zip(&rot.choices).map(|(c, r)| c ^ r).collect();
        self.channel.send_packed(&bits_to_u64(&flips), 1).await?;
        let keys: Vec<Block> = rot.keys.iter().flat_map(|&k| std::iter::repeat_n(k, len)).collect();
        let h = self.hash(&keys)?;
        let y = self.channel.recv_packed("cot corrections", n * len, width).await?;
        let m = mask(width);
        Ok(h.iter()
            .zip(&y)
            .enumerate()
            .map(|(i, (h, y))| if choices[i / len] { h.wrapping_sub(*y) & m } else { h & m })
            .collect())
    }

    /// Random OT with 1-bit messages, sender side: two uniform bits (m0, m1) per OT; the
    /// receiver gets a uniform choice c and m_c. Nothing travels beyond the OT extension.
    pub async fn random_bits_send(&mut self, kind: OtKind, n: usize) -> OtResult<Vec<[bool; 2]>> {
        let rot = self.random_send(kind, n).await?;
        let tweak = self.tweaks(n);
        let (k0, k1): (Vec<Block>, Vec<Block>) = rot.keys.iter().map(|k| (k[0], k[1])).unzip();
        let mut h0 = vec![Block::ZERO; n];
        let mut h1 = vec![Block::ZERO; n];
        self.backend.hash_blocks(&k0, Tweaks::Sequential(tweak), &mut h0)?;
        self.backend.hash_blocks(&k1, Tweaks::Sequential(tweak), &mut h1)?;
        Ok(h0.iter().zip(&h1).map(|(a, b)| [low_u64(a) & 1 == 1, low_u64(b) & 1 == 1]).collect())
    }

    /// Random OT with 1-bit messages, receiver side: (c_i, m_{c_i}).
    pub async fn random_bits_receive(&mut self, kind: OtKind, n: usize) -> OtResult<(Vec<bool>, Vec<bool>)> {
        let rot = self.random_receive(kind, n).await?;
        let tweak = self.tweaks(n);
        let mut h = vec![Block::ZERO; n];
        self.backend.hash_blocks(&rot.keys, Tweaks::Sequential(tweak), &mut h)?;
        Ok((rot.choices, h.iter().map(|v| low_u64(v) & 1 == 1).collect()))
    }

    /// 1-of-N OT, sender side. `messages` holds `N = 2^log_n` messages of `width` bits per
    /// instance, instance-major (`messages[t·N + j]`).
    pub async fn one_of_n_send(&mut self, kind: OtKind, log_n: u32, width: u32, messages: &[u64]) -> OtResult<()> {
        let instances = messages.len() >> log_n.min(16);
        self.one_of_n_send_grouped(kind, log_n, &[(width, instances)], messages).await
    }

    /// [`Ot::one_of_n_send`] with instances of different message widths in one batch (one
    /// round): `groups` lists (width, instances) in instance order.
    #[tracing::instrument(level = "debug", skip_all, fields(log_n))]
    pub async fn one_of_n_send_grouped(
        &mut self,
        kind: OtKind,
        log_n: u32,
        groups: &[(u32, usize)],
        messages: &[u64],
    ) -> OtResult<()> {
        for &(width, _) in groups {
            check_width(width)?;
        }
        if !(1..=16).contains(&log_n) {
            return Err(OtError::Invalid(format!("1-of-2^{log_n} OT: log N must be in 1..=16")));
        }
        let big_n = 1usize << log_n;
        let inst: usize = groups.iter().map(|g| g.1).sum();
        if messages.len() != inst * big_n {
            return Err(OtError::Invalid(format!("{} messages for {inst} instances of N = {big_n}", messages.len())));
        }
        let _s = self.meter().scope("1-of-n");
        let m = log_n as usize;
        let rot = self.random_send(kind, inst * m).await?;
        let flips = self.channel.recv_packed("1-of-N choice flips", inst * m, 1).await?;
        let tweak = self.tweaks(inst * big_n);
        // In chunks of instances within each group, so that the N pads per instance never all
        // exist at once.
        let per_chunk = (ONE_OF_N_CHUNK / big_n).max(1);
        let mut combined = vec![Block::ZERO; per_chunk.min(inst) * big_n];
        let mut pads = combined.clone();
        for (width, chunk) in chunks(groups, per_chunk) {
            let mk = mask(width);
            let (combined, pads) = (&mut combined[..chunk.len() * big_n], &mut pads[..chunk.len() * big_n]);
            // combined[t·N + j] = ⊕_k K_{t,k}^{j_k}, with the receiver's flips applied: the first
            // entry XORs all K^0, then each bit k doubles the filled prefix with K^1 ⊕ K^0.
            for (row, t) in combined.chunks_exact_mut(big_n).zip(chunk.clone()) {
                let keys = &rot.keys[t * m..(t + 1) * m];
                let flips = &flips[t * m..(t + 1) * m];
                row[0] = keys.iter().zip(flips).fold(Block::ZERO, |acc, (pair, &d)| acc ^ pair[d as usize]);
                for (k, pair) in keys.iter().enumerate() {
                    let delta = pair[0] ^ pair[1];
                    let (done, rest) = row.split_at_mut(1 << k);
                    for (r, c) in rest[..1 << k].iter_mut().zip(done.iter()) {
                        *r = *c ^ delta;
                    }
                }
            }
            let base = tweak + (chunk.start * big_n) as u64;
            self.backend.hash_blocks(combined, Tweaks::Sequential(base), pads)?;
            let msgs = &messages[chunk.start * big_n..chunk.end * big_n];
            let cipher: Vec<u64> =
                msgs.iter().zip(pads.iter()).map(|(msg, p)| msg.wrapping_add(low_u64(p)) & mk).collect();
            self.channel.send_packed(&cipher, width).await?;
        }
        Ok(())
    }

    /// 1-of-N OT, receiver side: message `choices[t]` of each instance t.
    pub async fn one_of_n_receive(
        &mut self,
        kind: OtKind,
        log_n: u32,
        width: u32,
        choices: &[u32],
    ) -> OtResult<Vec<u64>> {
        self.one_of_n_receive_grouped(kind, log_n, &[(width, choices.len())], choices).await
    }

    /// The receiver's side of [`Ot::one_of_n_send_grouped`].
    pub async fn one_of_n_receive_grouped(
        &mut self,
        kind: OtKind,
        log_n: u32,
        groups: &[(u32, usize)],
        choices: &[u32],
    ) -> OtResult<Vec<u64>> {
        for &(width, _) in groups {
            check_width(width)?;
        }
        if !(1..=16).contains(&log_n) {
            return Err(OtError::Invalid(format!("1-of-2^{log_n} OT: log N must be in 1..=16")));
        }
        let big_n = 1usize << log_n;
        if let Some(bad) = choices.iter().find(|&&c| c as usize >= big_n) {
            return Err(OtError::Invalid(format!("choice {bad} is out of range for N = {big_n}")));
        }
        let inst = choices.len();
        if groups.iter().map(|g| g.1).sum::<usize>() != inst {
            return Err(OtError::Invalid(format!("{inst} choices for groups of {groups:?} instances")));
        }
        let _s = self.meter().scope("1-of-n");
        let m = log_n as usize;
        let rot = self.random_receive(kind, inst * m).await?;
        let mut flips = Vec::with_capacity(inst * m);
        let mut combined = vec![Block::ZERO; inst];
        for (t, &j) in choices.iter().enumerate() {
            for k in 0..m {
                flips.push((((j >> k) & 1) == 1) ^ rot.choices[t * m + k]);
                combined[t] ^= rot.keys[t * m + k];
            }
        }
        self.channel.send_packed(&bits_to_u64(&flips), 1).await?;
        // Hash with the tweak the sender used for (t, j): same reservation, offset t·N + j.
        let tweak = self.tweaks(inst * big_n);
        let idx: Vec<usize> = choices.iter().enumerate().map(|(t, &j)| t * big_n + j as usize).collect();
        let listed: Vec<u64> = idx.iter().map(|&i| tweak + i as u64).collect();
        let mut pads = vec![Block::ZERO; inst];
        self.backend.hash_blocks(&combined, Tweaks::Listed(&listed), &mut pads)?;
        let mut out = Vec::with_capacity(inst);
        let per_chunk = (ONE_OF_N_CHUNK / big_n).max(1);
        for (width, chunk) in chunks(groups, per_chunk) {
            let mk = mask(width);
            let cipher = self.channel.recv_packed("1-of-N ciphertexts", chunk.len() * big_n, width).await?;
            for t in chunk.clone() {
                let i = idx[t] - chunk.start * big_n;
                out.push(cipher[i].wrapping_sub(low_u64(&pads[t])) & mk);
            }
        }
        Ok(out)
    }
}
