//! XOR-shared bits: AND triples from correlated OT, and AND gates.
//!
//! A bit b is shared as b = b_server ⊕ b_client. An AND of shared bits uses a triple
//! (a, b, c = a ∧ b) (Beaver): both parties open d = x ⊕ a and e = y ⊕ b, then
//! z = c ⊕ d·b ⊕ e·a ⊕ d·e (the last term added by the server only). Openings reveal nothing:
//! a and b are uniform and used once.

use super::{ProtoError, ProtoResult, Session};
use crate::net::Party;
use crate::ring::Bits;

/// One party's shares of AND triples, packed.
#[derive(Debug, Default)]
pub struct Triples {
    a: Bits,
    b: Bits,
    c: Bits,
    used: usize,
}

impl Triples {
    /// `n` fresh triples from two random bit-OTs each, one per direction: a random OT with
    /// messages (m0, m1) and choice c gives m0 ⊕ m_c = (m0 ⊕ m1)·c, so the sender's a = m0 ⊕ m1
    /// and the receiver's b = c have the product shared as (m0, m_c). The two cross terms
    /// a_s·b_c and a_c·b_s come from the two directions; a_p·b_p is local. Nothing travels
    /// beyond the OT extension itself.
    pub async fn generate(sess: &mut Session, n: usize) -> ProtoResult<Triples> {
        let (sent, received) = match sess.party() {
            Party::Server => {
                let s = sess.ot.random_bits_send(sess.kind, n).await?;
                (s, sess.ot.random_bits_receive(sess.kind, n).await?)
            }
            Party::Client => {
                let r = sess.ot.random_bits_receive(sess.kind, n).await?;
                (sess.ot.random_bits_send(sess.kind, n).await?, r)
            }
        };
        let (choices, chosen) = received;
        let a: Vec<bool> = sent.iter().map(|m| m[0] ^ m[1]).collect();
        let c: Bits = (0..n).map(|i| (a[i] & choices[i]) ^ sent[i][0] ^ chosen[i]).collect();
        Ok(Triples { a: Bits::from_bools(&a), b: Bits::from_bools(&choices), c, used: 0 })
    }

    /// Triples not used yet.
    pub fn remaining(&self) -> usize {
        self.a.len() - self.used
    }

    fn take(&mut self, n: usize) -> ProtoResult<[Bits; 3]> {
        if n > self.remaining() {
            return Err(ProtoError::Input(format!("{n} AND gates but {} triples left", self.remaining())));
        }
        let at = self.used;
        self.used += n;
        Ok([self.a.range(at, n), self.b.range(at, n), self.c.range(at, n)])
    }
}

/// Shares of x ∧ y, bit-wise, in one round: the openings d = x ⊕ a and e = y ⊕ b travel as one
/// message of 2n bits (d, then e), and z = c ⊕ d·b ⊕ e·a ⊕ d·e, 64 gates per word operation.
pub async fn and(sess: &mut Session, triples: &mut Triples, x: &Bits, y: &Bits) -> ProtoResult<Bits> {
    if x.len() != y.len() {
        return Err(ProtoError::Input(format!("AND of {} and {} bits", x.len(), y.len())));
    }
    let n = x.len();
    let server = sess.party() == Party::Server;
    let [a, b, c] = triples.take(n)?;
    let d = x.zip_words(&[&a], |x, o| x ^ o[0])?;
    let e = y.zip_words(&[&b], |y, o| y ^ o[0])?;
    let mine: Bits = d.iter().chain(e.iter()).collect();
    let ch = sess.ot.channel();
    ch.send(&mine.to_bytes()).await?;
    let theirs = ch.recv_exact("AND openings", (2 * n).div_ceil(8)).await?;
    let theirs = Bits::from_bytes(&theirs, 2 * n).map_err(|e| ProtoError::BadRequest(format!("AND openings: {e}")))?;
    let d = d.zip_words(&[&theirs.range(0, n)], |d, o| d ^ o[0])?;
    let e = e.zip_words(&[&theirs.range(n, n)], |e, o| e ^ o[0])?;
    let both = if server { u64::MAX } else { 0 };
    Ok(c.zip_words(&[&d, &e, &a, &b], |c, o| c ^ (o[0] & o[3]) ^ (o[1] & o[2]) ^ (both & o[0] & o[1]))?)
}
