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
/// Values of a correlated-OT batch whose keys are expanded and hashed at a time: the keys are
/// never all copied at once (a cross term's batch can hold millions of values).
const COT_CHUNK: usize = 1 << 16;

fn low_u64(b: &Block) -> u64 {
    <[u64; 2]>::from(*b)[0]
}

fn bits_to_u64(bits: &[bool]) -> Vec<u64> {
    bits.iter().map(|&b| b as u64).collect()
}

/// A run of 1-of-2^`log_n` OT instances with `width`-bit messages, in a batch of such runs
/// ([`Ot::one_of_n_send_grouped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneOfN {
    /// log2 of the number of messages per instance (1..=16).
    pub log_n: u32,
    /// Bits per message (1..=64).
    pub width: u32,
    /// Instances in the run.
    pub instances: usize,
}

impl OneOfN {
    fn check(&self) -> OtResult<()> {
        check_width(self.width)?;
        if !(1..=16).contains(&self.log_n) {
            return Err(OtError::Invalid(format!("1-of-2^{} OT: log N must be in 1..=16", self.log_n)));
        }
        Ok(())
    }
}

/// One chunk of a batch: a group's instances `range` (indices over the whole batch), the first
/// of whose random OTs is `rot`, the first of whose messages is `message`.
struct Chunk {
    group: OneOfN,
    range: std::ops::Range<usize>,
    rot: usize,
    message: usize,
}

/// `groups` cut into chunks of at most [`ONE_OF_N_CHUNK`] pads (whole instances, at least one),
/// in instance order: both parties cut a batch the same way.
fn chunks(groups: &[OneOfN]) -> Vec<Chunk> {
    let (mut out, mut start, mut rot, mut message) = (Vec::new(), 0, 0, 0);
    for &group in groups {
        let per_chunk = (ONE_OF_N_CHUNK >> group.log_n).max(1);
        for first in (start..start + group.instances).step_by(per_chunk) {
            let range = first..(first + per_chunk).min(start + group.instances);
            let len = range.len();
            out.push(Chunk { group, range, rot, message });
            rot += len * group.log_n as usize;
            message += len << group.log_n;
        }
        start += group.instances;
    }
    out
}

/// Random OTs and messages a batch of `groups` takes.
fn batch_size(groups: &[OneOfN]) -> (usize, usize) {
    groups.iter().fold((0, 0), |(r, m), g| (r + g.instances * g.log_n as usize, m + (g.instances << g.log_n)))
}

fn check_width(width: u32) -> OtResult<()> {
    if !(1..=64).contains(&width) {
        return Err(OtError::Invalid(format!("message width {width} bits is not in 1..=64")));
    }
    Ok(())
}

fn check_widths(widths: &[u32]) -> OtResult<()> {
    if widths.is_empty() {
        return Err(OtError::Invalid("correlated OTs with no message width".into()));
    }
    widths.iter().try_for_each(|&w| check_width(w))
}

/// Width of each value of a correlated-OT batch: the cycle `widths` over the OTs, `len` values
/// per OT.
fn value_widths(widths: &[u32], len: usize) -> impl Iterator<Item = u32> + Clone + '_ {
    widths.iter().cycle().flat_map(move |&w| std::iter::repeat_n(w, len))
}

/// The OT widths of a cross term a·b mod 2^`width` chosen by the `b_bits` bits of b (SCI's
/// trick): bit j's correlated OT needs a mod 2^(width − j) only, since its result weighs 2^j —
/// `width, width − 1, …`, half the bytes of a full-width term when b is as wide as the ring.
/// Errors when b has more bits than the ring.
pub fn cross_term_widths(b_bits: u32, width: u32) -> OtResult<Vec<u32>> {
    if b_bits == 0 || b_bits > width {
        return Err(OtError::Invalid(format!("a cross term of {b_bits}-bit choices in a {width}-bit ring")));
    }
    Ok((0..b_bits).map(|j| width - j).collect())
}

impl Ot {
    /// Correlated OT, sender side: returns `x` with `x_i` uniform in Z_2^w; the receiver gets
    /// `x_i + c_i·Δ_i mod 2^w`.
    pub async fn cot_send(&mut self, kind: OtKind, deltas: &[u64], width: u32) -> OtResult<Vec<u64>> {
        self.cot_vec_send(kind, deltas, 1, &[width]).await
    }

    /// Correlated OT, receiver side: returns `x_i + c_i·Δ_i mod 2^w`.
    pub async fn cot_receive(&mut self, kind: OtKind, choices: &[bool], width: u32) -> OtResult<Vec<u64>> {
        self.cot_vec_receive(kind, choices, 1, &[width]).await
    }

    /// Correlated OT of vectors, sender side: OT i carries the `len` values
    /// `deltas[i·len..(i+1)·len]` under one choice bit, in Z_2^w with w = `widths[i mod
    /// widths.len()]` (a cycle: bit j of a cross term needs only w − j bits, see
    /// [`cross_term_widths`]); its pads are expanded from the random OT's keys by the hash with
    /// a fresh tweak per value. Returns uniform `x` (same layout); the receiver gets
    /// `x + c_i·Δ_i`. One random OT per vector.
    #[tracing::instrument(level = "debug", skip_all, fields(n = deltas.len(), len))]
    pub async fn cot_vec_send(
        &mut self,
        kind: OtKind,
        deltas: &[u64],
        len: usize,
        widths: &[u32],
    ) -> OtResult<Vec<u64>> {
        check_widths(widths)?;
        if len == 0 || !deltas.len().is_multiple_of(len) {
            return Err(OtError::Invalid(format!("{} values in vectors of {len}", deltas.len())));
        }
        let _s = self.meter().scope("cot");
        let n = deltas.len() / len;
        let rot = self.random_send(kind, n).await?;
        let flips = self.channel.recv_packed("cot choice flips", n, 1).await?;
        // both keys of a pair under the same tweaks, in chunks of values
        let tweak = self.tweaks(n * len);
        let mut x = Vec::with_capacity(n * len);
        let mut y = Vec::with_capacity(n * len);
        let mut keys = [Vec::with_capacity(COT_CHUNK), Vec::with_capacity(COT_CHUNK)];
        let mut pads = [vec![Block::ZERO; COT_CHUNK], vec![Block::ZERO; COT_CHUNK]];
        let mut width = value_widths(widths, len);
        for start in (0..n * len).step_by(COT_CHUNK) {
            let end = (start + COT_CHUNK).min(n * len);
            // keys[0] is the key the receiver holds when c_i = 0 (the pair reordered by its flip)
            keys.iter_mut().for_each(Vec::clear);
            for v in start..end {
                let (pair, flip) = (rot.keys[v / len], flips[v / len] as usize);
                keys[0].push(pair[flip]);
                keys[1].push(pair[1 - flip]);
            }
            for (k, p) in keys.iter().zip(pads.iter_mut()) {
                self.backend.hash_blocks(k, Tweaks::Sequential(tweak + start as u64), &mut p[..end - start])?;
            }
            for (j, v) in (start..end).enumerate() {
                let m = mask(width.next().unwrap_or(64));
                let own = low_u64(&pads[0][j]) & m;
                x.push(own);
                y.push(low_u64(&pads[1][j]).wrapping_sub(own).wrapping_sub(deltas[v]) & m);
            }
        }
        self.channel.send_packed_widths(&y, value_widths(widths, len)).await?;
        Ok(x)
    }

    /// Correlated OT of vectors, receiver side: returns `x + c_i·Δ_i` for each vector i, in the
    /// widths of [`Ot::cot_vec_send`].
    #[tracing::instrument(level = "debug", skip_all, fields(n = choices.len(), len))]
    pub async fn cot_vec_receive(
        &mut self,
        kind: OtKind,
        choices: &[bool],
        len: usize,
        widths: &[u32],
    ) -> OtResult<Vec<u64>> {
        check_widths(widths)?;
        if len == 0 {
            return Err(OtError::Invalid("vectors of 0 values".into()));
        }
        let _s = self.meter().scope("cot");
        let n = choices.len();
        let rot = self.random_receive(kind, n).await?;
        let flips: Vec<bool> = choices.iter().zip(&rot.choices).map(|(c, r)| c ^ r).collect();
        self.channel.send_packed(&bits_to_u64(&flips), 1).await?;
        // the pads first, while the sender computes its corrections
        let tweak = self.tweaks(n * len);
        let mut own = Vec::with_capacity(n * len);
        let mut keys = Vec::with_capacity(COT_CHUNK);
        let mut pads = vec![Block::ZERO; COT_CHUNK];
        for start in (0..n * len).step_by(COT_CHUNK) {
            let end = (start + COT_CHUNK).min(n * len);
            keys.clear();
            keys.extend((start..end).map(|v| rot.keys[v / len]));
            self.backend.hash_blocks(&keys, Tweaks::Sequential(tweak + start as u64), &mut pads[..end - start])?;
            own.extend(pads[..end - start].iter().map(low_u64));
        }
        let y = self.channel.recv_packed_widths("cot corrections", n * len, value_widths(widths, len)).await?;
        Ok(own
            .iter()
            .zip(&y)
            .zip(value_widths(widths, len))
            .enumerate()
            .map(|(v, ((h, y), w))| if choices[v / len] { h.wrapping_sub(*y) & mask(w) } else { h & mask(w) })
            .collect())
    }

    /// Random OT with `width`-bit messages, sender side: two uniform messages (m0, m1) per OT;
    /// the receiver gets a uniform choice c and m_c. Nothing travels beyond the OT extension.
    pub async fn random_messages_send(&mut self, kind: OtKind, n: usize, width: u32) -> OtResult<Vec<[u64; 2]>> {
        check_width(width)?;
        let rot = self.random_send(kind, n).await?;
        let tweak = self.tweaks(n);
        let (k0, k1): (Vec<Block>, Vec<Block>) = rot.keys.iter().map(|k| (k[0], k[1])).unzip();
        let mut h0 = vec![Block::ZERO; n];
        let mut h1 = vec![Block::ZERO; n];
        self.backend.hash_blocks(&k0, Tweaks::Sequential(tweak), &mut h0)?;
        self.backend.hash_blocks(&k1, Tweaks::Sequential(tweak), &mut h1)?;
        let m = mask(width);
        Ok(h0.iter().zip(&h1).map(|(a, b)| [low_u64(a) & m, low_u64(b) & m]).collect())
    }

    /// Random OT with `width`-bit messages, receiver side: (c_i, m_{c_i}).
    pub async fn random_messages_receive(
        &mut self,
        kind: OtKind,
        n: usize,
        width: u32,
    ) -> OtResult<(Vec<bool>, Vec<u64>)> {
        check_width(width)?;
        let rot = self.random_receive(kind, n).await?;
        let tweak = self.tweaks(n);
        let mut h = vec![Block::ZERO; n];
        self.backend.hash_blocks(&rot.keys, Tweaks::Sequential(tweak), &mut h)?;
        let m = mask(width);
        Ok((rot.choices, h.iter().map(|v| low_u64(v) & m).collect()))
    }

    /// 1-of-N OT, sender side. `messages` holds `N = 2^log_n` messages of `width` bits per
    /// instance, instance-major (`messages[t·N + j]`).
    pub async fn one_of_n_send(&mut self, kind: OtKind, log_n: u32, width: u32, messages: &[u64]) -> OtResult<()> {
        let instances = messages.len() >> log_n.min(16);
        self.one_of_n_send_grouped(kind, &[OneOfN { log_n, width, instances }], messages).await
    }

    /// [`Ot::one_of_n_send`] over runs of instances of different sizes and message widths in
    /// one batch (one round): `messages` holds each instance's 2^log_n messages, in order.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn one_of_n_send_grouped(&mut self, kind: OtKind, groups: &[OneOfN], messages: &[u64]) -> OtResult<()> {
        for g in groups {
            g.check()?;
        }
        let (rots, total) = batch_size(groups);
        if messages.len() != total {
            return Err(OtError::Invalid(format!("{} messages for 1-of-N instances of {total}", messages.len())));
        }
        let _s = self.meter().scope("1-of-n");
        let rot = self.random_send(kind, rots).await?;
        let flips = self.channel.recv_packed("1-of-N choice flips", rots, 1).await?;
        let tweak = self.tweaks(total);
        let chunks = chunks(groups);
        let longest = chunks.iter().map(|c| c.range.len() << c.group.log_n).max().unwrap_or(0);
        let (mut combined, mut pads) = (vec![Block::ZERO; longest], vec![Block::ZERO; longest]);
        // In chunks of instances, so that the N pads per instance never all exist at once.
        for chunk in chunks {
            let (m, big_n) = (chunk.group.log_n as usize, 1usize << chunk.group.log_n);
            let size = chunk.range.len() * big_n;
            let (combined, pads) = (&mut combined[..size], &mut pads[..size]);
            // combined[t·N + j] = ⊕_k K_{t,k}^{j_k}, with the receiver's flips applied: the first
            // entry XORs all K^0, then each bit k doubles the filled prefix with K^1 ⊕ K^0.
            for (t, row) in combined.chunks_exact_mut(big_n).enumerate() {
                let at = chunk.rot + t * m;
                let (keys, flips) = (&rot.keys[at..at + m], &flips[at..at + m]);
                row[0] = keys.iter().zip(flips).fold(Block::ZERO, |acc, (pair, &d)| acc ^ pair[d as usize]);
                for (k, pair) in keys.iter().enumerate() {
                    let delta = pair[0] ^ pair[1];
                    let (done, rest) = row.split_at_mut(1 << k);
                    for (r, c) in rest[..1 << k].iter_mut().zip(done.iter()) {
                        *r = *c ^ delta;
                    }
                }
            }
            self.backend.hash_blocks(combined, Tweaks::Sequential(tweak + chunk.message as u64), pads)?;
            let mk = mask(chunk.group.width);
            let msgs = &messages[chunk.message..chunk.message + size];
            let cipher: Vec<u64> =
                msgs.iter().zip(pads.iter()).map(|(msg, p)| msg.wrapping_add(low_u64(p)) & mk).collect();
            self.channel.send_packed(&cipher, chunk.group.width).await?;
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
        self.one_of_n_receive_grouped(kind, &[OneOfN { log_n, width, instances: choices.len() }], choices).await
    }

    /// The receiver's side of [`Ot::one_of_n_send_grouped`].
    pub async fn one_of_n_receive_grouped(
        &mut self,
        kind: OtKind,
        groups: &[OneOfN],
        choices: &[u32],
    ) -> OtResult<Vec<u64>> {
        for g in groups {
            g.check()?;
        }
        let inst = choices.len();
        if groups.iter().map(|g| g.instances).sum::<usize>() != inst {
            return Err(OtError::Invalid(format!("{inst} choices for groups of {groups:?}")));
        }
        let chunks = chunks(groups);
        for chunk in &chunks {
            let big_n = 1u32 << chunk.group.log_n;
            if let Some(bad) = choices[chunk.range.clone()].iter().find(|&&c| c >= big_n) {
                return Err(OtError::Invalid(format!("choice {bad} is out of range for N = {big_n}")));
            }
        }
        let _s = self.meter().scope("1-of-n");
        let (rots, total) = batch_size(groups);
        let rot = self.random_receive(kind, rots).await?;
        let mut flips = Vec::with_capacity(rots);
        let mut combined = vec![Block::ZERO; inst];
        let mut listed = Vec::with_capacity(inst);
        for chunk in &chunks {
            let m = chunk.group.log_n as usize;
            for (local, t) in chunk.range.clone().enumerate() {
                let j = choices[t];
                for k in 0..m {
                    let at = chunk.rot + local * m + k;
                    flips.push((((j >> k) & 1) == 1) ^ rot.choices[at]);
                    combined[t] ^= rot.keys[at];
                }
                // the tweak the sender used for (t, j)
                listed.push((chunk.message + (local << m) + j as usize) as u64);
            }
        }
        self.channel.send_packed(&bits_to_u64(&flips), 1).await?;
        let tweak = self.tweaks(total);
        let listed: Vec<u64> = listed.into_iter().map(|i| tweak + i).collect();
        let mut pads = vec![Block::ZERO; inst];
        self.backend.hash_blocks(&combined, Tweaks::Listed(&listed), &mut pads)?;
        let mut out = Vec::with_capacity(inst);
        for chunk in &chunks {
            let m = chunk.group.log_n;
            let cipher =
                self.channel.recv_packed("1-of-N ciphertexts", chunk.range.len() << m, chunk.group.width).await?;
            let mk = mask(chunk.group.width);
            for (local, t) in chunk.range.clone().enumerate() {
                let at = (local << m) + choices[t] as usize;
                out.push(cipher[at].wrapping_sub(low_u64(&pads[t])) & mk);
            }
        }
        Ok(out)
    }
}
