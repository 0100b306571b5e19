//! The opening exchange: both parties check that they run the same protocol version, play
//! opposite roles and agree on every public parameter before any secret-dependent byte moves.

use super::{Channel, NetError, NetResult, Party};

/// Version of the wire protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 3;
const MAGIC: &[u8; 8] = b"SECMOE\0\x01";
const MAX_PARAMS: usize = 256;

/// Named public parameters both parties must agree on (fixed-point format, security level,
/// job sizes, later HE parameter sets and model digests). Kept in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicParams {
    entries: std::collections::BTreeMap<String, u64>,
}

impl PublicParams {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a parameter. Names longer than 255 bytes are cut (at a character
    /// boundary) to fit the wire format.
    pub fn with(mut self, name: &str, value: u64) -> Self {
        let mut end = name.len().min(255);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        self.entries.insert(name[..end].to_string(), value);
        self
    }

    /// Value of a parameter.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.entries.get(name).copied()
    }
}

/// The first message each party sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Wire protocol version.
    pub version: u16,
    /// Role the sender plays.
    pub party: Party,
    /// The sender's public parameters.
    pub params: PublicParams,
}

impl Hello {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 32 * self.params.entries.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(self.party.code());
        out.extend_from_slice(&(self.params.entries.len() as u16).to_le_bytes());
        for (name, value) in &self.params.entries {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }

    fn decode(buf: &[u8], step: &str) -> NetResult<Hello> {
        let bad =
            |reason: &str| NetError::Malformed { step: step.to_string(), what: "hello", reason: reason.to_string() };
        let mut r = Reader { buf, pos: 0 };
        if r.take(8).ok_or_else(|| bad("too short"))? != MAGIC {
            return Err(bad("not a secmoe peer (bad magic)"));
        }
        let version = u16::from_le_bytes(r.array().ok_or_else(|| bad("too short"))?);
        let party = match r.take(1).ok_or_else(|| bad("too short"))?[0] {
            1 => Party::Client,
            2 => Party::Server,
            _ => return Err(bad("unknown role")),
        };
        let count = u16::from_le_bytes(r.array().ok_or_else(|| bad("too short"))?) as usize;
        if count > MAX_PARAMS {
            return Err(bad("too many parameters"));
        }
        let mut params = PublicParams::new();
        for _ in 0..count {
            let len = r.take(1).ok_or_else(|| bad("truncated parameter"))?[0] as usize;
            let name = r.take(len).ok_or_else(|| bad("truncated parameter"))?;
            let name = std::str::from_utf8(name).map_err(|_| bad("parameter name is not UTF-8"))?;
            let value = u64::from_le_bytes(r.array().ok_or_else(|| bad("truncated parameter"))?);
            params = params.with(name, value);
        }
        if r.pos != buf.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Hello { version, party, params })
    }

    /// Checks the peer's hello against ours; the error names the first field that differs.
    fn check(&self, peer: &Hello) -> NetResult<()> {
        let mismatch = |field: &str, ours: String, theirs: String| {
            Err(NetError::ParamMismatch { field: field.to_string(), ours, theirs })
        };
        if peer.version != self.version {
            return mismatch("protocol version", self.version.to_string(), peer.version.to_string());
        }
        if peer.party != self.party.peer() {
            return mismatch("role (both sides play the same party)", self.party.to_string(), peer.party.to_string());
        }
        let names: std::collections::BTreeSet<&String> =
            self.params.entries.keys().chain(peer.params.entries.keys()).collect();
        for name in names {
            let show = |v: Option<&u64>| v.map_or_else(|| "(not set)".to_string(), u64::to_string);
            let (ours, theirs) = (self.params.entries.get(name), peer.params.entries.get(name));
            if ours != theirs {
                return mismatch(&format!("parameter `{name}`"), show(ours), show(theirs));
            }
        }
        Ok(())
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

/// Runs the handshake on `channel`: both send their hello at once, then each checks the peer's.
/// Both sides see the same mismatch, so both fail with an error naming it.
pub(crate) async fn handshake(channel: &mut Channel, party: Party, params: &PublicParams) -> NetResult<()> {
    let _scope = channel.meter().scope("handshake");
    let ours = Hello { version: PROTOCOL_VERSION, party, params: params.clone() };
    channel.send(&ours.encode()).await?;
    let buf = channel.recv().await?;
    let theirs = Hello::decode(&buf, "handshake")?;
    ours.check(&theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(party: Party) -> Hello {
        Hello { version: PROTOCOL_VERSION, party, params: PublicParams::new().with("frac_bits", 18).with("n", 5) }
    }

    #[test]
    fn encoding_round_trips() {
        let h = hello(Party::Server);
        assert_eq!(Hello::decode(&h.encode(), "t").ok(), Some(h));
    }

    #[test]
    fn long_names_are_cut_to_fit_the_wire_format() {
        let name = "é".repeat(200); // 400 bytes
        let h = Hello { version: 1, party: Party::Client, params: PublicParams::new().with(&name, 1) };
        let back = Hello::decode(&h.encode(), "t").ok();
        assert_eq!(back, Some(h.clone()));
        assert!(h.params.entries.keys().all(|k| k.len() <= 255));
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        let bytes = hello(Party::Client).encode();
        for cut in 0..bytes.len() {
            assert!(Hello::decode(&bytes[..cut], "t").is_err(), "prefix of {cut} bytes accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Hello::decode(&longer, "t").is_err());
    }

    #[test]
    fn mismatches_are_named() {
        let ours = hello(Party::Client);
        assert!(ours.check(&hello(Party::Server)).is_ok());
        let same_role = ours.check(&hello(Party::Client)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(same_role.contains("role"), "{same_role}");
        let mut other = hello(Party::Server);
        other.params = other.params.with("frac_bits", 16);
        let msg = ours.check(&other).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("frac_bits") && msg.contains("18") && msg.contains("16"), "{msg}");
        let mut old = hello(Party::Server);
        old.version = 0;
        let msg = ours.check(&old).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("protocol version"), "{msg}");
    }
}
