//! Comparison and the bit-level glue of the non-linear layers: the millionaire's protocol,
//! the most significant bit / DReLU of a shared value, bit-to-arithmetic conversion and the
//! multiplexer.
//!
//! Millionaire's (CrypTFlow2, Rathee et al. CCS 2020): the server's x and the client's y
//! (ℓ bits) are cut into blocks of m bits (m = 3 with silent OT, 4 with IKNP:
//! [`block_bits`]). For each block a 1-of-2^m OT, the server as
//! sender, gives the client the bits \[x_j > v\] ⊕ r and [x_j = v] ⊕ r' for its own v = y_j; the
//! server keeps r, r'. The blocks are combined up a tree, gt = gt_hi ⊕ (eq_hi ∧ gt_lo),
//! eq = eq_hi ∧ eq_lo, with AND triples; log2(ℓ/m) rounds. Results are XOR shares of \[x > y\].
//! The lowest node of every level is only ever the low side up to the root, so its equality is
//! never needed: neither the least significant block's equality bit nor that AND is computed.

use super::Session;
use super::arith::masks;
use rand::RngExt;

use super::boolean::{Triples, and_pairs};
use super::{ProtoError, ProtoResult};
use crate::net::Party;
use crate::ot::{OneOfN, OtKind, SILENT_CALL_MAX};
use crate::ring::{Bits, Shares, mask};

/// Bits per millionaire's block (a 1-of-2^m OT each) for OTs of `kind`. Per m compared bits,
/// the leaves cost m + 2^(m+1) bits of OT messages and m random OTs, the tree one node (a
/// triple pair: two random OTs, three opened bits per party). With silent OT (about a bit per
/// random OT) m = 3 sends the fewest bits (580 per 64-bit comparison, measured; about 700
/// estimated at m = 4) with about as many random OTs; with IKNP (chosen on fast links, where computation counts)
/// m = 4 keeps the OTs few and the hashing of the 2^m messages small.
pub fn block_bits(kind: OtKind) -> u32 {
    match kind {
        OtKind::Silent => 3,
        OtKind::Iknp => 4,
    }
}

/// AND triple pairs ([`Triples`]) a comparison of `bits`-bit values with OTs of `kind` needs,
/// per value: one per combination of blocks, q − 1 for q blocks.
pub fn triples_per_comparison(kind: OtKind, bits: u32) -> usize {
    (bits.div_ceil(block_bits(kind)) as usize).saturating_sub(1)
}

/// XOR shares of \[x > y\] for the server's `x` and the client's `y` (each party passes its own
/// values, below 2^bits). Uses `triples` (see [`triples_per_comparison`]).
pub async fn greater_than(sess: &mut Session, triples: &mut Triples, mine: &[u64], bits: u32) -> ProtoResult<Bits> {
    greater_than_many(sess, triples, mine, 1, bits).await
}

/// The number of client values in a comparison batch: the client passes them, the server `per`
/// values for each.
fn n_of(party: Party, len: usize, per: usize) -> usize {
    if party == Party::Server { len / per } else { len }
}

/// XOR shares of \[x_ik > y_i\] for `per` server values x_i0..x_i(per−1) against each client value
/// y_i: the server passes n·per values (grouped by i), the client its n values. The client's
/// OT choices depend on y_i only, so one 1-of-2^m OT per block carries all `per` comparisons
/// (2·per-bit messages, per bits for the least significant block): comparing against several thresholds costs one OT batch. Results are
/// grouped by i. Uses `per`·n·[`triples_per_comparison`] triples.
pub async fn greater_than_many(
    sess: &mut Session,
    triples: &mut Triples,
    mine: &[u64],
    per: usize,
    bits: u32,
) -> ProtoResult<Bits> {
    if !(1..=64).contains(&bits) {
        return Err(ProtoError::Input(format!("comparison of {bits}-bit values")));
    }
    if !(1..=32).contains(&per) {
        return Err(ProtoError::Input(format!("{per} server values per client value (1..=32)")));
    }
    if bits < 64
        && let Some(v) = mine.iter().find(|&&v| v >> bits != 0)
    {
        return Err(ProtoError::Input(format!("value {v:#x} does not fit {bits} bits")));
    }
    // Blocks of m bits, least significant first; the top one holds what is left. Instance t
    // is block t / n of value t % n. The least significant block's equality is never used (see
    // the tree below): its messages carry the `per` greater-than bits only, the other blocks'
    // both bits of each comparison.
    let m = block_bits(sess.kind);
    let q = bits.div_ceil(m) as usize;
    let width = |j: usize| m.min(bits - j as u32 * m);
    let block = |v: u64, j: usize| (v >> (j as u32 * m)) & mask(width(j));
    let n = n_of(sess.party(), mine.len(), per);
    let mut groups: Vec<OneOfN> = Vec::new();
    for j in 0..q {
        let g = OneOfN { log_n: width(j), width: (if j == 0 { per } else { 2 * per }) as u32, instances: n };
        match groups.last_mut() {
            Some(last) if (last.log_n, last.width) == (g.log_n, g.width) => last.instances += n,
            _ => groups.push(g),
        }
    }
    // leaves gt[c·q + j], eq[c·q + j] for comparison c = i·per + k and block j (0 = least
    // significant)
    let (gt, eq) = match sess.party() {
        Party::Server => {
            if !mine.len().is_multiple_of(per) {
                return Err(ProtoError::Input(format!("{} server values is not a multiple of {per}", mine.len())));
            }
            let rng = &mut sess.rng;
            let r: Vec<(bool, bool)> = (0..n * per * q).map(|_| (rng.random(), rng.random())).collect();
            let mut messages = Vec::with_capacity(n * (q << m));
            for t in 0..n * q {
                let (i, j) = (t % n, t / n);
                messages.extend((0..1u64 << width(j)).map(|v| {
                    (0..per).fold(0u64, |acc, k| {
                        let c = i * per + k;
                        let (x, (rg, re)) = (block(mine[c], j), r[c * q + j]);
                        if j == 0 {
                            acc | (((x > v) ^ rg) as u64) << k
                        } else {
                            acc | (((x > v) ^ rg) as u64) << (2 * k) | (((x == v) ^ re) as u64) << (2 * k + 1)
                        }
                    })
                }));
            }
            sess.ot.one_of_n_send_grouped(sess.kind, &groups, &messages).await?;
            r.into_iter().unzip::<bool, bool, Vec<bool>, Vec<bool>>()
        }
        Party::Client => {
            let choices: Vec<u32> = (0..n * q).map(|t| block(mine[t % n], t / n) as u32).collect();
            let got = sess.ot.one_of_n_receive_grouped(sess.kind, &groups, &choices).await?;
            let (mut gt, mut eq) = (vec![false; n * per * q], vec![false; n * per * q]);
            for (t, &g) in got.iter().enumerate() {
                let (i, j) = (t % n, t / n);
                for k in 0..per {
                    let c = i * per + k;
                    if j == 0 {
                        gt[c * q] = (g >> k) & 1 == 1;
                    } else {
                        gt[c * q + j] = (g >> (2 * k)) & 1 == 1;
                        eq[c * q + j] = (g >> (2 * k + 1)) & 1 == 1;
                    }
                }
            }
            (gt, eq)
        }
    };
    let n = n * per;
    let (mut gt, mut eq) = (gt, eq);
    // combine adjacent blocks, least significant first, until one is left: gt and eq of a
    // node both AND the high block's eq, one triple pair per node. The lowest node of each
    // level needs no equality bit (it is only ever the low side, up to the root): its pair's
    // second gate is not opened. Nodes that need it come first in the batch.
    let mut width = q;
    while width > 1 {
        let pairs = width / 2;
        let next = width.div_ceil(2);
        let needs_eq = |k: usize| k > 0 && next > 1;
        let nodes: Vec<(usize, usize)> = [true, false]
            .into_iter()
            .flat_map(|paired| {
                (0..n).flat_map(move |i| (0..pairs).map(move |k| (i, k))).filter(move |&(_, k)| needs_eq(k) == paired)
            })
            .collect();
        let at = |(i, k): (usize, usize)| (i * width + 2 * k, i * width + 2 * k + 1);
        let x: Bits = nodes.iter().map(|&node| eq[at(node).1]).collect();
        let y0: Bits = nodes.iter().map(|&node| gt[at(node).0]).collect();
        let y1: Bits = nodes.iter().filter(|&&(_, k)| needs_eq(k)).map(|&node| eq[at(node).0]).collect();
        let (z0, z1) = and_pairs(sess, triples, &x, &y0, &y1).await?;
        let (mut ngt, mut neq) = (vec![false; n * next], vec![false; n * next]);
        for (t, &(i, k)) in nodes.iter().enumerate() {
            ngt[i * next + k] = gt[at((i, k)).1] ^ z0.get(t);
            neq[i * next + k] = needs_eq(k) && z1.get(t);
        }
        if width % 2 == 1 {
            for i in 0..n {
                ngt[i * next + next - 1] = gt[i * width + width - 1];
                neq[i * next + next - 1] = eq[i * width + width - 1];
            }
        }
        (gt, eq, width) = (ngt, neq, next);
    }
    Ok(Bits::from_bools(&gt))
}

/// Errors unless `x` holds shares over Z_2^64 (the bit-level protocols read the full ring).
fn full_ring(x: &Shares, what: &str) -> ProtoResult<()> {
    if x.width() != 64 {
        return Err(ProtoError::Input(format!("{what} of {}: shares over Z_2^64 expected", x.describe())));
    }
    Ok(())
}

/// XOR shares of the most significant bit of shared values x = x_server + x_client mod 2^64:
/// msb(x) = msb(x_s) ⊕ msb(x_c) ⊕ carry, with carry = [x_s mod 2^63 > 2^63 − 1 − x_c mod 2^63]
/// from one 63-bit comparison.
pub async fn msb(sess: &mut Session, triples: &mut Triples, x: &Shares) -> ProtoResult<Bits> {
    const LOW: u64 = (1 << 63) - 1;
    full_ring(x, "msb")?;
    let server = sess.party() == Party::Server;
    let mine: Vec<u64> = x.as_slice().iter().map(|&v| if server { v & LOW } else { LOW - (v & LOW) }).collect();
    let carry = greater_than(sess, triples, &mine, 63).await?;
    Ok(x.as_slice().iter().zip(carry.iter()).map(|(&v, c)| (v >> 63 == 1) ^ c).collect())
}

/// XOR shares of DReLU(x) = [x ≥ 0] (x read as a signed 64-bit value): 1 ⊕ msb(x).
pub async fn drelu(sess: &mut Session, triples: &mut Triples, x: &Shares) -> ProtoResult<Bits> {
    let msb = msb(sess, triples, x).await?;
    Ok(if sess.is_server() { msb.not() } else { msb })
}

/// XOR shares of [x ≥ c_k] for shared values x and public thresholds c_k (ring elements read as
/// signed), grouped by value, computed at `bits` bits: x − c_k must lie in
/// [−2^(bits−1), 2^(bits−1)) (the caller's bound on its activations; exact under it). Each is
/// 1 ⊕ msb(x − c_k mod 2^bits), whose carry compares the server's low(x_s − c_k) with the
/// client's 2^(bits−1) − 1 − low(x_c): the same client value for every threshold, so all
/// thresholds share one OT batch ([`greater_than_many`]).
pub async fn at_least(
    sess: &mut Session,
    triples: &mut Triples,
    x: &Shares,
    thresholds: &[u64],
    bits: u32,
) -> ProtoResult<Bits> {
    full_ring(x, "threshold comparison")?;
    let shares = x.as_slice();
    if !(2..=64).contains(&bits) {
        return Err(ProtoError::Input(format!("threshold comparison at {bits} bits")));
    }
    let server = sess.party() == Party::Server;
    let low_mask = (1u64 << (bits - 1)) - 1;
    let top = |v: u64| (v >> (bits - 1)) & 1 == 1;
    let k = thresholds.len();
    let (mine, tops): (Vec<u64>, Vec<bool>) = if server {
        shares
            .iter()
            .flat_map(|&x| thresholds.iter().map(move |&c| x.wrapping_sub(c)))
            .map(|v| (v & low_mask, top(v)))
            .unzip()
    } else {
        shares.iter().map(|&x| (low_mask - (x & low_mask), top(x))).unzip()
    };
    let carry = greater_than_many(sess, triples, &mine, k, bits - 1).await?;
    Ok(carry
        .iter()
        .enumerate()
        .map(|(c, carry)| {
            let own_top = if server { tops[c] } else { tops[c / k] };
            carry ^ own_top ^ server
        })
        .collect())
}

/// Arithmetic shares (mod 2^64) of XOR-shared bits: b = b_s + b_c − 2·b_s·b_c, the product
/// from one correlated OT (server sends Δ = b_s, client chooses with b_c).
/// The result is one row of integers (no fractional bits).
pub async fn b2a(sess: &mut Session, bits: &Bits) -> ProtoResult<Shares> {
    let bits = bits.to_bools();
    let values = match sess.party() {
        Party::Server => {
            let deltas: Vec<u64> = bits.iter().map(|&b| b as u64).collect();
            let x = sess.ot.cot_send(sess.kind, &deltas, 64).await?;
            bits.iter().zip(x).map(|(&b, x)| (b as u64).wrapping_add(x.wrapping_mul(2))).collect()
        }
        Party::Client => {
            let y = sess.ot.cot_receive(sess.kind, &bits, 64).await?;
            bits.iter().zip(y).map(|(&b, y)| (b as u64).wrapping_sub(y.wrapping_mul(2))).collect()
        }
    };
    Ok(Shares::vector(values, 0)?)
}

/// Arithmetic shares of b·x for XOR-shared bits b and shared x: (b_s ⊕ b_c)·x_p for each party's
/// own x_p comes from one correlated OT with Δ = (1 − 2·b_p)·x_p, the other party choosing with
/// its bit; two OTs, one per direction. One bit per value (row-major); the result has x's shape,
/// ring and scale, and the corrections are as wide as x's ring (b·x mod 2^ℓ needs only x mod 2^ℓ).
pub async fn mux(sess: &mut Session, bits: &Bits, x: &Shares) -> ProtoResult<Shares> {
    if bits.len() != x.len() {
        return Err(ProtoError::Input(format!("{} selector bits for {}", bits.len(), x.describe())));
    }
    Ok(x.with_values(mux_values(sess, &bits.to_bools(), x.as_slice(), 1, x.width()).await?)?)
}

/// [`mux`] with one bit per row of x: b_r·x_r for every value of row r, one correlated OT of the
/// whole row per direction ([`crate::ot::Ot::cot_vec_send`]), so a row costs two random OTs and
/// 2·ℓ·len bits of corrections for x over Z_2^ℓ.
pub async fn mux_rows(sess: &mut Session, bits: &Bits, x: &Shares) -> ProtoResult<Shares> {
    if bits.len() != x.rows() {
        return Err(ProtoError::Input(format!("{} selector bits for the rows of {}", bits.len(), x.describe())));
    }
    Ok(x.with_values(mux_values(sess, &bits.to_bools(), x.as_slice(), x.cols().max(1), x.width()).await?)?)
}

/// The multiplexer on raw shares over Z_2^`width`: one bit per row of `len` values.
async fn mux_values(
    sess: &mut Session,
    bits: &[bool],
    shares: &[u64],
    len: usize,
    width: u32,
) -> ProtoResult<Vec<u64>> {
    let deltas: Vec<u64> =
        shares.iter().enumerate().map(|(i, &x)| if bits[i / len] { x.wrapping_neg() } else { x }).collect();
    let (x, y) = match sess.party() {
        Party::Server => {
            let x = sess.ot.cot_vec_send(sess.kind, &deltas, len, &[width]).await?;
            (x, sess.ot.cot_vec_receive(sess.kind, bits, len, &[width]).await?)
        }
        Party::Client => {
            let y = sess.ot.cot_vec_receive(sess.kind, bits, len, &[width]).await?;
            (sess.ot.cot_vec_send(sess.kind, &deltas, len, &[width]).await?, y)
        }
    };
    // own term b_p·x_p − x (as sender) plus the other party's term (as receiver)
    Ok((0..shares.len())
        .map(|i| (if bits[i / len] { shares[i] } else { 0 }).wrapping_sub(x[i]).wrapping_add(y[i]) & mask(width))
        .collect())
}

/// Most choice bits of one link of a carry chain ([`carry`], [`signs`]): a 1-of-64 OT, its
/// chunk of the client's value and its shares of the carries into the chunk.
const CARRY_LINK_BITS: u32 = 6;

/// Random OTs (the server as sender) a chain over `bits` bits with `lanes` carries and, with
/// `carry_in`, one shared carry into its first link uses per value: one per choice bit.
fn chain_ots(bits: u32, lanes: u32, carry_in: bool) -> usize {
    let links = bits.div_ceil(CARRY_LINK_BITS - lanes);
    (bits + carry_in as u32 + lanes * (links - 1)) as usize
}

/// Random OTs (the server as sender) one [`carry`] of `bits` bits uses per value.
pub fn carry_ots(bits: u32) -> usize {
    chain_ots(bits, 1, false)
}

/// Random OTs (the server as sender) one [`signs`] at `bits` bits uses per value.
pub fn signs_ots(bits: u32) -> usize {
    chain_ots(bits - 1, 2, true)
}

/// Random OTs (the server as sender) one [`at_least`] at `bits` bits uses per value, for any
/// number of thresholds (their AND triples aside).
pub fn at_least_ots(bits: u32) -> usize {
    (bits - 1) as usize
}

/// XOR shares of the carry [x_s + x_c ≥ 2^bits] out of the low `bits` bits of each party's
/// value (`mine`, read mod 2^bits): a ripple-carry chain of lookups, least significant chunk
/// first. Link i is a 1-of-2^(m_i+1) OT, the server as sender, the client choosing with its m_i
/// bits and its share of the carry into the chunk; the server's table holds
/// [x_s,i + v + (c_s ⊕ c_c) ≥ 2^m_i] ⊕ r_i. `bits` + (links − 1) random OTs per value, one round
/// per link, no AND gates.
pub async fn carry(sess: &mut Session, mine: &[u64], bits: u32) -> ProtoResult<Bits> {
    if !(1..=64).contains(&bits) {
        return Err(ProtoError::Input(format!("carry out of {bits} bits")));
    }
    let [carry] = chain(sess, mine, bits, [0], None).await?;
    Ok(Bits::from_bools(&carry))
}

/// XOR shares of \[v < 0\] and \[v > 0\] for v = x_s + x_c + c mod 2^bits read as a signed value,
/// with an XOR-shared carry-in c and |v| < 2^(bits−1) − 1 (the caller's bound): msb(v) and
/// ¬msb(v − 1), each the top bits of the two values ⊕ the carry out of their low bits − 1 bits.
/// The two carries ripple through one chain (two lanes: the server's value and its
/// value − 1): links of 4 bits, 1-of-64 lookups with 2-bit entries; [`signs_ots`] random OTs
/// per value, no AND gates.
pub async fn signs(sess: &mut Session, mine: &[u64], bits: u32, carry_in: &Bits) -> ProtoResult<(Bits, Bits)> {
    if !(2..=64).contains(&bits) || carry_in.len() != mine.len() {
        return Err(ProtoError::Input(format!(
            "signs of {} values at {bits} bits, {} carries",
            mine.len(),
            carry_in.len()
        )));
    }
    let server = sess.is_server();
    let low = bits - 1;
    let [zero, minus_one] = chain(sess, mine, low, [0, mask(bits)], Some(carry_in)).await?;
    let top = |v: u64, offset: u64| (v.wrapping_add(if server { offset } else { 0 }) >> low) & 1 == 1;
    let below: Vec<bool> = mine.iter().zip(&zero).map(|(&v, &c)| top(v, 0) ^ c).collect();
    // [v > 0] = [v − 1 ≥ 0] = ¬msb(v − 1): the server flips its share
    let above: Vec<bool> = mine.iter().zip(&minus_one).map(|(&v, &c)| top(v, mask(bits)) ^ c ^ server).collect();
    Ok((Bits::from_bools(&below), Bits::from_bools(&above)))
}

/// The ripple-carry chain of [`carry`] and [`signs`]: XOR shares of the carries out of the low
/// `bits` bits of x_s + δ_l + x_c (+ c), one lane per public offset δ_l (added by the server),
/// all lanes choosing with the client's same chunks. A link's choice is the client's m bits and
/// its shares of the lanes' carries into the chunk (of the carry-in c into the first link);
/// entry bit l is lane l's carry out ⊕ r_l.
async fn chain<const LANES: usize>(
    sess: &mut Session,
    mine: &[u64],
    bits: u32,
    offsets: [u64; LANES],
    carry_in: Option<&Bits>,
) -> ProtoResult<[Vec<bool>; LANES]> {
    let lanes = LANES as u32;
    let links = bits.div_ceil(CARRY_LINK_BITS - lanes);
    let server = sess.is_server();
    let n = mine.len();
    let own = |v: u64, l: usize| if server { v.wrapping_add(offsets[l]) } else { v };
    // the state: this party's share of each lane's carry into the next chunk
    let start = carry_in.map(Bits::to_bools);
    let mut state: [Vec<bool>; LANES] = std::array::from_fn(|_| start.clone().unwrap_or_else(|| vec![false; n]));
    let mut low = 0;
    for link in 0..links {
        // spread the bits evenly over the links
        let m = (bits - low).div_ceil(links - link);
        let chunk = |v: u64| (v >> low) & mask(m);
        // the first link's carries in are the one carry-in (or none)
        let in_bits = if link > 0 { lanes } else { start.is_some() as u32 };
        let log_n = m + in_bits;
        let carry_of = |l: usize, choice: u64| if link > 0 { (choice >> (m + l as u32)) & 1 } else { choice >> m };
        if server {
            let r = masks(sess, n, lanes);
            let mut table = Vec::with_capacity(n << log_n);
            for i in 0..n {
                let chunks: [u64; LANES] = std::array::from_fn(|l| chunk(own(mine[i], l)));
                let carries: [u64; LANES] = std::array::from_fn(|l| state[l][i] as u64);
                table.extend((0..1u64 << log_n).map(|choice| {
                    let entry = (0..LANES).fold(0, |acc, l| {
                        let sum = chunks[l] + (choice & mask(m)) + (carry_of(l, choice) ^ carries[l]);
                        acc | ((sum >> m) & 1) << l
                    });
                    entry ^ r[i]
                }));
            }
            sess.ot.one_of_n_send(sess.kind, log_n, lanes, &table).await?;
            state = std::array::from_fn(|l| r.iter().map(|&r| (r >> l) & 1 == 1).collect());
        } else {
            let choices: Vec<u32> = (0..n)
                .map(|i| {
                    let carries = if link > 0 {
                        (0..LANES).fold(0, |acc, l| acc | (state[l][i] as u64) << l)
                    } else {
                        state[0][i] as u64
                    };
                    (chunk(mine[i]) | carries << m) as u32
                })
                .collect();
            let got = sess.ot.one_of_n_receive(sess.kind, log_n, lanes, &choices).await?;
            state = std::array::from_fn(|l| got.iter().map(|&g| (g >> l) & 1 == 1).collect());
        }
        low += m;
    }
    Ok(state)
}

/// XOR shares of [x ≥ 0] for shared values with |x| < 2^(bits−1) (the caller's bound), at that
/// width: msb(x mod 2^bits) = top(x_s) ⊕ top(x_c) ⊕ carry of the low bits − 1 bits (a
/// [`carry`] chain: bits + ⌈(bits−1)/5⌉ − 2 random OTs, no AND gates).
pub async fn non_negative(sess: &mut Session, x: &Shares, bits: u32) -> ProtoResult<Bits> {
    if !(2..=64).contains(&bits) || bits > x.width() {
        return Err(ProtoError::Input(format!("sign test at {bits} bits of {}", x.describe())));
    }
    non_negative_values(sess, x.as_slice(), bits).await
}

async fn non_negative_values(sess: &mut Session, shares: &[u64], bits: u32) -> ProtoResult<Bits> {
    let server = sess.party() == Party::Server;
    let low: Vec<u64> = shares.iter().map(|&v| v & (u64::MAX >> (65 - bits))).collect();
    let c = carry(sess, &low, bits - 1).await?;
    Ok(shares.iter().zip(c.iter()).map(|(&v, c)| ((v >> (bits - 1)) & 1 == 1) ^ c ^ server).collect())
}

/// Shares of the maximum of each row of x (a column of x's ring and scale), and of its position
/// in the row (a column of integers) (the argmax; of equal maxima the first wins, as `torch.argmax` does): a tree of
/// ⌈log2 len⌉ levels of pairwise maxima of neighbours a (earlier) and b (later), [a ≥ b] from
/// [`non_negative`] on a − b at `bits` bits (|a − b| < 2^(bits−1), the caller's bound), then
/// (max, index) = (b, i_b) + [a ≥ b]·(a − b, i_a − i_b) by one multiplexer pair. A tree whose
/// random OTs fit one silent call takes them in one batch before its first level: an argmax
/// over E experts for a few tokens then reaches the silent extension's minimum batch instead of
/// running every level on IKNP (128 bits per OT); larger trees take each level's batch while
/// the next one's is generated.
pub async fn max(sess: &mut Session, x: &Shares, bits: u32) -> ProtoResult<(Shares, Shares)> {
    full_ring(x, "maximum")?;
    let (shares, len) = (x.as_slice(), x.cols());
    if len == 0 || !(2..=64).contains(&bits) {
        return Err(ProtoError::Input(format!("maximum at {bits} bits over the rows of {}", x.describe())));
    }
    let server = sess.party() == Party::Server;
    let groups = shares.len() / len;
    // positions are public: the server holds them, the client holds zeros
    let mut values: Vec<Vec<u64>> = shares.chunks_exact(len).map(<[u64]>::to_vec).collect();
    let mut index: Vec<Vec<u64>> =
        (0..groups).map(|_| (0..len as u64).map(|i| if server { i } else { 0 }).collect()).collect();
    // a level's random OTs: the sign's carry chain (server as sender), one multiplexer pair per
    // comparison (one OT each way per value)
    let level_ots = |pairs: usize| (pairs * (carry_ots(bits - 1) + 2), 2 * pairs);
    let tree = std::iter::successors(Some(len), |&l| (l > 1).then(|| l.div_ceil(2)))
        .take_while(|&l| l > 1)
        .map(|l| level_ots(groups * (l / 2)))
        .fold((0, 0), |(s, r), (ls, lr)| (s + ls, r + lr));
    let at_once = tree.0 <= SILENT_CALL_MAX;
    if at_once {
        super::prepare(sess, tree).await?;
    }
    while values[0].len() > 1 {
        let (mut diff, mut didx, mut base, mut bidx) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (v, ix) in values.iter().zip(&index) {
            for p in 0..v.len() / 2 {
                let (a, b) = (2 * p, 2 * p + 1);
                diff.push(v[a].wrapping_sub(v[b]));
                didx.push(ix[a].wrapping_sub(ix[b]));
                base.push(v[b]);
                bidx.push(ix[b]);
            }
        }
        if !at_once {
            // this level's random OTs in one go, the next level's generated in the background
            super::prepare(sess, level_ots(diff.len())).await?;
            let next_pairs = groups * (values[0].len().div_ceil(2) / 2);
            if next_pairs > 0 {
                super::prefetch(sess, level_ots(next_pairs)).await?;
            }
        }
        let ge = non_negative_values(sess, &diff, bits).await?.to_bools();
        let both: Vec<bool> = ge.iter().chain(&ge).copied().collect();
        let picked = mux_values(sess, &both, &[diff, didx].concat(), 1, 64).await?;
        let (dv, di) = picked.split_at(ge.len());
        let mut t = 0;
        for (v, ix) in values.iter_mut().zip(index.iter_mut()) {
            let pairs = v.len() / 2;
            let odd = (v.len() % 2 == 1).then(|| (v[v.len() - 1], ix[ix.len() - 1]));
            let (nv, ni): (Vec<u64>, Vec<u64>) =
                (0..pairs).map(|p| (base[t + p].wrapping_add(dv[t + p]), bidx[t + p].wrapping_add(di[t + p]))).unzip();
            t += pairs;
            (*v, *ix) = (nv, ni);
            if let Some((a, b)) = odd {
                v.push(a);
                ix.push(b);
            }
        }
    }
    let column = |v: Vec<Vec<u64>>| v.into_iter().map(|v| v[0]).collect::<Vec<u64>>();
    let maxima = Shares::new((groups, 1), column(values), 64, x.frac_bits())?;
    Ok((maxima, Shares::matrix((groups, 1), column(index), 0)?))
}

/// Largest one-hot vector [`one_hot`] builds: two lookups of at most 2^5 and 2^6 entries.
pub const MAX_ONE_HOT: usize = 1 << 11;

/// Entries of the low part of a two-level one-hot vector: its lookup also carries the carry bit
/// into the high part, in one message of 2^5 + 1 bits.
const LOW_BITS: u32 = 5;

/// XOR shares of the one-hot vector (`size` bits, `size` ≤ [`MAX_ONE_HOT`]) of a secret index
/// shared additively (`index`, integers in any ring: only their value mod 2^⌈log2 size⌉ is used;
/// each index must be below `size`), one vector per index in row-major order.
///
/// Up to 64 entries, one lookup: the client chooses with its share, the server's table holds
/// onehot(i_s + v) ⊕ r; ⌈log2 size⌉ random OTs per index. Beyond, the index splits into a low
/// part of 5 bits and a high part h: one lookup gives shares of onehot(l) and of the carry
/// [l_s + l_c ≥ 2^5], a second (on the client's h_c and carry share) shares of
/// onehot(h_s + h_c + carry), and the outer product high ⊗ low comes from the two cross terms,
/// one 1-of-2 OT of a 32-bit row per high entry each way. Three rounds; the server sees only
/// OT messages.
pub async fn one_hot(sess: &mut Session, index: &Shares, size: usize) -> ProtoResult<Vec<Bits>> {
    if !(2..=MAX_ONE_HOT).contains(&size) || index.frac_bits() != 0 {
        return Err(ProtoError::Input(format!(
            "one-hot vectors of {size} entries (2..={MAX_ONE_HOT}) of {} (integers expected)",
            index.describe()
        )));
    }
    let index = index.as_slice();
    let b = size.next_power_of_two().trailing_zeros();
    let bits_of = |word: u64, width: usize| (0..width).map(|i| (word >> i) & 1 == 1).collect::<Vec<bool>>();
    let packed = |word: u64, width: usize| Bits::from_words(vec![word], width);
    if b <= 6 {
        let words = lookup(sess, index, b, size as u32, |i, v| {
            1u64.checked_shl(i.wrapping_add(v) as u32 & ((1 << b) - 1)).unwrap_or(0)
        })
        .await?;
        return Ok(words.into_iter().map(|w| packed(w & mask(size as u32), size)).collect::<Result<_, _>>()?);
    }
    let (l_bits, h_bits) = (LOW_BITS, b - LOW_BITS);
    let (low_n, high_n) = (1usize << l_bits, 1usize << h_bits);
    let low_mask = (1u64 << l_bits) - 1;
    // low one-hot and the carry, in one lookup on the client's low bits
    let low = lookup(sess, index, l_bits, low_n as u32 + 1, |i, v| {
        let sum = (i & low_mask) + v;
        (1u64 << (sum & low_mask)) | (sum >> l_bits) << low_n
    })
    .await?;
    let carry: Vec<u64> = low.iter().map(|w| w >> low_n).collect();
    let low: Vec<u64> = low.iter().map(|w| w & mask(low_n as u32)).collect();
    // high one-hot of h_s + h_c + (c_s ⊕ c_c), on the client's high bits and carry share
    let high_index: Vec<u64> =
        index.iter().zip(&carry).map(|(&i, &c)| ((i >> l_bits) & ((1 << h_bits) - 1)) | c << h_bits).collect();
    let server = sess.is_server();
    let high = lookup(sess, &high_index, h_bits + 1, high_n as u32, |i, v| {
        let mask = (1u64 << h_bits) - 1;
        let carry = ((i >> h_bits) ^ (v >> h_bits)) & 1;
        1u64 << (((i & mask) + (v & mask) + carry) & mask)
    })
    .await?;
    // the outer product: z = u ⊗ v with u = high, v = low, each XOR-shared
    let n = index.len();
    let rows = n * high_n;
    let width = low_n as u32;
    let sent_pads = masks(sess, rows, width);
    let table =
        |v: &[u64]| -> Vec<u64> { (0..rows).flat_map(|r| [sent_pads[r], sent_pads[r] ^ v[r / high_n]]).collect() };
    let choices = |u: &[u64]| -> Vec<u32> { (0..rows).map(|r| ((u[r / high_n] >> (r % high_n)) & 1) as u32).collect() };
    // cross term 1: the client's u times the server's v (the server sends); 2: the other way
    let (first, second) = if server {
        sess.ot.one_of_n_send(sess.kind, 1, width, &table(&low)).await?;
        let got = sess.ot.one_of_n_receive(sess.kind, 1, width, &choices(&high)).await?;
        (sent_pads, got)
    } else {
        let got = sess.ot.one_of_n_receive(sess.kind, 1, width, &choices(&high)).await?;
        sess.ot.one_of_n_send(sess.kind, 1, width, &table(&low)).await?;
        (got, sent_pads)
    };
    Ok((0..n)
        .map(|t| {
            let mut bits = Vec::with_capacity(high_n * low_n);
            for a in 0..high_n {
                let r = t * high_n + a;
                let own = if (high[t] >> a) & 1 == 1 { low[t] } else { 0 };
                bits.extend(bits_of(own ^ first[r] ^ second[r], low_n));
            }
            bits.truncate(size);
            Bits::from_bools(&bits)
        })
        .collect())
}

/// XOR shares of `entry(i_s, i_c)` (below 2^width) by one 1-of-2^log_n lookup: the client
/// chooses with its value mod 2^log_n, the server's table holds entry(i_s, v) ⊕ r and keeps r.
async fn lookup(
    sess: &mut Session,
    values: &[u64],
    log_n: u32,
    width: u32,
    entry: impl Fn(u64, u64) -> u64,
) -> ProtoResult<Vec<u64>> {
    let low = |v: u64| v & ((1 << log_n) - 1);
    let entry = &entry;
    if sess.is_server() {
        let r = masks(sess, values.len(), width);
        let table: Vec<u64> = values
            .iter()
            .zip(&r)
            .flat_map(|(&i, &r)| (0..1u64 << log_n).map(move |v| (entry(i, v) ^ r) & mask(width)))
            .collect();
        sess.ot.one_of_n_send(sess.kind, log_n, width, &table).await?;
        Ok(r)
    } else {
        let choices: Vec<u32> = values.iter().map(|&i| low(i) as u32).collect();
        Ok(sess.ot.one_of_n_receive(sess.kind, log_n, width, &choices).await?)
    }
}
