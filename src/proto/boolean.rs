//! XOR-shared bits: AND triples with a shared input from correlated OT, and AND gates.
//!
//! A bit b is shared as b = b_server ⊕ b_client. An AND of shared bits uses a triple
//! (a, b, c = a ∧ b) (Beaver): both parties open d = x ⊕ a and e = y ⊕ b, then
//! z = c ⊕ d·b ⊕ e·a ⊕ d·e (the last term added by the server only). Openings reveal nothing:
//! a and b are uniform and used once. Two gates with a common input, x ∧ y0 and x ∧ y1 (the
//! comparison tree's gt and eq both take the high block's equality), share a: one triple pair
//! (a, b0, b1, c0, c1) costs the random OTs of one triple, and d is opened once.

use super::{ProtoError, ProtoResult, Session};
use crate::net::Party;
use crate::ring::Bits;

/// One party's shares of AND triple pairs with a shared first input, packed: a, b_k uniform and
/// c_k = a ∧ b_k for k = 0, 1.
#[derive(Debug, Default)]
pub struct Triples {
    a: Bits,
    b: [Bits; 2],
    c: [Bits; 2],
    used: usize,
}

impl Triples {
    /// `n` fresh triple pairs from two random OTs with 2-bit messages each, one per direction:
    /// a random OT with messages (m0, m1) and choice c gives m0 ⊕ m_c = c·(m0 ⊕ m1), so the
    /// receiver's a = c and the sender's (b0, b1) = m0 ⊕ m1 have both products shared as
    /// (m0, m_c). The two cross terms a_s·b_c and a_c·b_s come from the two directions; a_p·b_p
    /// is local. Nothing travels beyond the OT extension itself.
    pub async fn generate(sess: &mut Session, n: usize) -> ProtoResult<Triples> {
        let (sent, (choices, chosen)) = match sess.party() {
            Party::Server => {
                let s = sess.ot.random_messages_send(sess.kind, n, 2).await?;
                (s, sess.ot.random_messages_receive(sess.kind, n, 2).await?)
            }
            Party::Client => {
                let r = sess.ot.random_messages_receive(sess.kind, n, 2).await?;
                (sess.ot.random_messages_send(sess.kind, n, 2).await?, r)
            }
        };
        let b: Vec<u64> = sent.iter().map(|m| m[0] ^ m[1]).collect();
        let c: Vec<u64> = (0..n).map(|i| if choices[i] { b[i] } else { 0 } ^ sent[i][0] ^ chosen[i]).collect();
        let bit = |v: &[u64], k: usize| v.iter().map(|w| (w >> k) & 1 == 1).collect::<Bits>();
        Ok(Triples { a: Bits::from_bools(&choices), b: [bit(&b, 0), bit(&b, 1)], c: [bit(&c, 0), bit(&c, 1)], used: 0 })
    }

    /// Triple pairs not used yet.
    pub fn remaining(&self) -> usize {
        self.a.len() - self.used
    }

    fn take(&mut self, n: usize) -> ProtoResult<[Bits; 5]> {
        if n > self.remaining() {
            return Err(ProtoError::Input(format!("{n} AND gates but {} triples left", self.remaining())));
        }
        let at = self.used;
        self.used += n;
        let r = |b: &Bits| b.range(at, n);
        Ok([r(&self.a), r(&self.b[0]), r(&self.b[1]), r(&self.c[0]), r(&self.c[1])])
    }
}

/// Shares of x ∧ y, bit-wise, in one round (one triple pair per gate, its second half unused).
pub async fn and(sess: &mut Session, triples: &mut Triples, x: &Bits, y: &Bits) -> ProtoResult<Bits> {
    Ok(and_pairs(sess, triples, x, y, &Bits::zeros(0)).await?.0)
}

/// Shares of x ∧ y0 for every gate and of x ∧ y1 for the first `y1.len()` gates, in one round:
/// the openings d = x ⊕ a, e0 = y0 ⊕ b0 and e1 = y1 ⊕ b1 travel as one message, and
/// z_k = c_k ⊕ d·b_k ⊕ e_k·a ⊕ d·e_k, 64 gates per word operation. One triple pair per gate.
pub async fn and_pairs(
    sess: &mut Session,
    triples: &mut Triples,
    x: &Bits,
    y0: &Bits,
    y1: &Bits,
) -> ProtoResult<(Bits, Bits)> {
    if x.len() != y0.len() || y1.len() > x.len() {
        return Err(ProtoError::Input(format!("AND of {} bits with {} and {} bits", x.len(), y0.len(), y1.len())));
    }
    let (n, n1) = (x.len(), y1.len());
    let server = sess.party() == Party::Server;
    let [a, b0, b1, c0, c1] = triples.take(n)?;
    let (a1, b1, c1) = (a.range(0, n1), b1.range(0, n1), c1.range(0, n1));
    let d = x.zip_words(&[&a], |x, o| x ^ o[0])?;
    let e0 = y0.zip_words(&[&b0], |y, o| y ^ o[0])?;
    let e1 = y1.zip_words(&[&b1], |y, o| y ^ o[0])?;
    let mine: Bits = d.iter().chain(e0.iter()).chain(e1.iter()).collect();
    let total = 2 * n + n1;
    let ch = sess.ot.channel();
    ch.send(&mine.to_bytes()).await?;
    let theirs = ch.recv_exact("AND openings", total.div_ceil(8)).await?;
    let theirs = Bits::from_bytes(&theirs, total).map_err(|e| ProtoError::BadRequest(format!("AND openings: {e}")))?;
    let d = d.zip_words(&[&theirs.range(0, n)], |d, o| d ^ o[0])?;
    let e0 = e0.zip_words(&[&theirs.range(n, n)], |e, o| e ^ o[0])?;
    let e1 = e1.zip_words(&[&theirs.range(2 * n, n1)], |e, o| e ^ o[0])?;
    let both = if server { u64::MAX } else { 0 };
    let gate = |c: &Bits, d: &Bits, e: &Bits, a: &Bits, b: &Bits| {
        c.zip_words(&[d, e, a, b], |c, o| c ^ (o[0] & o[3]) ^ (o[1] & o[2]) ^ (both & o[0] & o[1]))
    };
    let d1 = d.range(0, n1);
    Ok((gate(&c0, &d, &e0, &a, &b0)?, gate(&c1, &d1, &e1, &a1, &b1)?))
}
