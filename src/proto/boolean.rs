//! XOR-shared bits: AND triples from correlated OT, and AND gates.
//!
//! A bit b is shared as b = b_server ⊕ b_client. An AND of shared bits uses a triple
//! (a, b, c = a ∧ b) (Beaver): both parties open d = x ⊕ a and e = y ⊕ b, then
//! z = c ⊕ d·b ⊕ e·a ⊕ d·e (the last term added by the server only). Openings reveal nothing:
//! a and b are uniform and used once.

use super::ProtoResult;
use super::Session;
use crate::net::Party;
use crate::ring::{pack_bits, unpack_bits};

/// One party's shares of AND triples.
#[derive(Debug, Default)]
pub struct Triples {
    a: Vec<bool>,
    b: Vec<bool>,
    c: Vec<bool>,
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
        let c = (0..n).map(|i| (a[i] & choices[i]) ^ sent[i][0] ^ chosen[i]).collect();
        Ok(Triples { a, b: choices, c, used: 0 })
    }

    /// Triples not used yet.
    pub fn remaining(&self) -> usize {
        self.a.len() - self.used
    }

    fn take(&mut self, n: usize) -> ProtoResult<(&[bool], &[bool], &[bool])> {
        if n > self.remaining() {
            return Err(super::ProtoError::Input(format!("{n} AND gates but {} triples left", self.remaining())));
        }
        let r = self.used..self.used + n;
        self.used += n;
        Ok((&self.a[r.clone()], &self.b[r.clone()], &self.c[r]))
    }
}

/// Shares of x ∧ y, element-wise, in one round.
pub async fn and(sess: &mut Session, triples: &mut Triples, x: &[bool], y: &[bool]) -> ProtoResult<Vec<bool>> {
    if x.len() != y.len() {
        return Err(super::ProtoError::Input(format!("AND of {} and {} bits", x.len(), y.len())));
    }
    let n = x.len();
    let server = sess.party() == Party::Server;
    let (a, b, c) = triples.take(n)?;
    let (a, b, c) = (a.to_vec(), b.to_vec(), c.to_vec());
    let mine: Vec<u64> = (0..n).flat_map(|i| [(x[i] ^ a[i]) as u64, (y[i] ^ b[i]) as u64]).collect();
    let ch = sess.ot.channel();
    ch.send(&pack_bits(&mine, 1)).await?;
    let theirs = ch.recv_exact("AND openings", crate::ring::packed_len(2 * n, 1)).await?;
    let theirs = unpack_bits(&theirs, 2 * n, 1).map_err(|e| super::ProtoError::Input(e.to_string()))?;
    Ok((0..n)
        .map(|i| {
            let d = (mine[2 * i] ^ theirs[2 * i]) == 1;
            let e = (mine[2 * i + 1] ^ theirs[2 * i + 1]) == 1;
            c[i] ^ (d & b[i]) ^ (e & a[i]) ^ (server & d & e)
        })
        .collect())
}
