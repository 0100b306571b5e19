//! The statement exchange that opens a multi-step protocol: each party checks its own side
//! and tells the peer what it is about to run (or why it refuses), before any share or
//! ciphertext moves, so that a misconfigured pair fails on both sides with the reason instead
//! of hanging or computing garbage.

use super::{ProtoError, ProtoResult, Session};

/// Longest statement accepted from the peer.
pub const MAX_STATEMENT: usize = 4096;

/// What this party says: what it runs, or why it will not.
pub type Statement = Result<String, String>;

/// Sends this party's statement (`refused <reason>` for a refusal) and returns the peer's:
/// the server speaks first. A peer's refusal is [`ProtoError::Refused`]; non-text or an
/// oversized statement is [`ProtoError::BadRequest`].
pub async fn exchange(sess: &mut Session, ours: &Statement) -> ProtoResult<String> {
    let mut text = match ours {
        Ok(s) => s.clone(),
        Err(reason) => format!("refused {reason}"),
    };
    // one the peer would take for garbage: refused, with the reason told to both
    let oversized = (text.len() > MAX_STATEMENT).then(|| {
        format!(
            "a statement of {} bytes (at most {MAX_STATEMENT}): {}…",
            text.len(),
            &text[..text.floor_char_boundary(200)]
        )
    });
    if let Some(reason) = &oversized {
        text = format!("refused {reason}");
        text.truncate(text.floor_char_boundary(MAX_STATEMENT));
    }
    let server = sess.is_server();
    let ch = sess.channel();
    let (sent, got) = if server {
        (ch.send(text.as_bytes()).await, ch.recv().await)
    } else {
        let got = ch.recv().await;
        (ch.send(text.as_bytes()).await, got)
    };
    sent?;
    let got = got?;
    if let Some(reason) = oversized {
        return Err(ProtoError::Input(reason));
    }
    let theirs = match std::str::from_utf8(&got) {
        Ok(s) if got.len() <= MAX_STATEMENT => s.to_string(),
        _ => return Err(ProtoError::BadRequest(format!("the peer's statement is {} bytes of garbage", got.len()))),
    };
    match theirs.strip_prefix("refused ") {
        Some(reason) => Err(ProtoError::Refused(reason.to_string())),
        None => Ok(theirs),
    }
}
