//! Framed messages with size limits and timeouts over any byte stream.
//!
//! Frame: a 4-byte little-endian length, then the payload. Every receive is bounded by a timeout
//! and by a maximum frame size, so a silent, vanished or garbage-sending peer ends in an error
//! naming the step, never in a hang or an unbounded allocation.

use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ByteCounter, Meter, NetError, NetResult};
use std::sync::Arc;

/// Buffer reserved for an incoming frame before its bytes arrive: a peer announcing a large
/// frame and then sending nothing costs this, not the announced length.
const INITIAL_READ: usize = 1 << 16;

/// How long a receive (or a blocked send) may wait for the peer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest frame accepted by default (1 GiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// One ordered, reliable message channel to the peer, charged to a [`Meter`]: a message's bytes
/// (its 4-byte length and its payload) are counted when it has been sent and when it has been
/// received, in the step open at that moment.
pub struct Channel {
    reader: Reader,
    writer: Writer,
    meter: Meter,
    timeout: Duration,
    max_frame: usize,
    /// The frames' lengths in order while recording ([`Channel::record_frames`]).
    frames: Option<Vec<Frame>>,
}

/// One message as a view test sees it: its direction and length (never its content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Sent by this party (else received).
    pub sent: bool,
    /// Payload bytes.
    pub len: usize,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("timeout", &self.timeout).field("max_frame", &self.max_frame).finish()
    }
}

impl Channel {
    /// A channel over a byte stream, counting its messages into `meter`.
    pub fn new(
        reader: impl AsyncRead + Send + Unpin + 'static,
        writer: impl AsyncWrite + Send + Unpin + 'static,
        meter: Meter,
        timeout: Duration,
    ) -> Self {
        Self {
            reader: Box::new(reader),
            writer: Box::new(writer),
            meter,
            timeout,
            max_frame: DEFAULT_MAX_FRAME,
            frames: None,
        }
    }

    /// Two connected in-memory channels (client end, server end) for unit tests. Each counts its
    /// own bytes into its own meter.
    pub fn in_memory_pair(timeout: Duration) -> (Channel, Channel) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let end = |s: tokio::io::DuplexStream| {
            let (r, w) = tokio::io::split(s);
            Channel::new(r, w, Meter::new(Arc::new(ByteCounter::default())), timeout)
        };
        (end(a), end(b))
    }

    /// Sets the largest frame this side accepts.
    pub fn with_max_frame(mut self, max: usize) -> Self {
        self.max_frame = max;
        self
    }

    /// Sets the receive timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Starts recording the direction and length of every message (for view tests: what a
    /// party receives must not depend on the other party's secrets).
    pub fn record_frames(&mut self) {
        self.frames = Some(Vec::new());
    }

    /// The messages recorded since [`Channel::record_frames`]; recording stops.
    pub fn take_frames(&mut self) -> Vec<Frame> {
        self.frames.take().unwrap_or_default()
    }

    /// The meter this channel charges.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    fn io_error(&self, e: std::io::Error) -> NetError {
        let step = self.meter.current_step();
        match e.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::NotConnected => NetError::PeerClosed { step },
            _ => NetError::Io { step, source: e },
        }
    }

    fn timeout_error(&self) -> NetError {
        NetError::Timeout { step: self.meter.current_step(), after: self.timeout }
    }

    /// Sends one message.
    pub async fn send(&mut self, payload: &[u8]) -> NetResult<()> {
        if payload.len() > self.max_frame {
            return Err(NetError::FrameTooLarge {
                step: self.meter.current_step(),
                len: payload.len() as u64,
                max: self.max_frame,
            });
        }
        self.meter.on_send();
        let header = (payload.len() as u32).to_le_bytes();
        let write = async {
            self.writer.write_all(&header).await?;
            self.writer.write_all(payload).await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Err(_) => return Err(self.timeout_error()),
            Ok(Err(e)) => return Err(self.io_error(e)),
            Ok(Ok(())) => {}
        }
        self.meter.counter().add_sent((header.len() + payload.len()) as u64);
        if let Some(f) = &mut self.frames {
            f.push(Frame { sent: true, len: payload.len() });
        }
        Ok(())
    }

    /// Writes bytes without a frame header. Only for tests of how a peer copes with garbage.
    #[doc(hidden)]
    pub async fn send_unframed(&mut self, bytes: &[u8]) -> NetResult<()> {
        self.writer.write_all(bytes).await.map_err(|e| self.io_error(e))
    }

    /// Pushes buffered bytes to the transport (used before a deliberate close).
    pub async fn flush(&mut self) -> NetResult<()> {
        match tokio::time::timeout(self.timeout, self.writer.flush()).await {
            Err(_) => Err(self.timeout_error()),
            Ok(r) => r.map_err(|e| self.io_error(e)),
        }
    }

    /// Receives one message of any size up to the frame limit.
    pub async fn recv(&mut self) -> NetResult<Vec<u8>> {
        let timeout = self.timeout;
        let max = self.max_frame;
        let read = async {
            let mut header = [0u8; 4];
            self.reader.read_exact(&mut header).await.map_err(Ok)?;
            let len = u32::from_le_bytes(header) as usize;
            if len > max {
                return Err(Err(len));
            }
            // grow with what arrives, not with what the header announces
            let mut buf = Vec::with_capacity(len.min(INITIAL_READ));
            (&mut self.reader).take(len as u64).read_to_end(&mut buf).await.map_err(Ok)?;
            if buf.len() < len {
                return Err(Ok(std::io::Error::from(ErrorKind::UnexpectedEof)));
            }
            Ok(buf)
        };
        let buf = match tokio::time::timeout(timeout, read).await {
            Err(_) => return Err(self.timeout_error()),
            Ok(Err(Ok(e))) => return Err(self.io_error(e)),
            Ok(Err(Err(len))) => {
                return Err(NetError::FrameTooLarge { step: self.meter.current_step(), len: len as u64, max });
            }
            Ok(Ok(buf)) => buf,
        };
        self.meter.counter().add_received(4 + buf.len() as u64);
        self.meter.on_receive();
        if let Some(f) = &mut self.frames {
            f.push(Frame { sent: false, len: buf.len() });
        }
        Ok(buf)
    }

    /// Receives one message that must be exactly `expected` bytes long.
    pub async fn recv_exact(&mut self, what: &'static str, expected: usize) -> NetResult<Vec<u8>> {
        let buf = self.recv().await?;
        if buf.len() != expected {
            return Err(NetError::WrongLength { step: self.meter.current_step(), what, expected, actual: buf.len() });
        }
        Ok(buf)
    }

    /// Sends ring elements (8 bytes each, little endian).
    pub async fn send_u64s(&mut self, values: &[u64]) -> NetResult<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.send(&bytes).await
    }

    /// Receives exactly `count` ring elements.
    pub async fn recv_u64s(&mut self, what: &'static str, count: usize) -> NetResult<Vec<u64>> {
        let buf = self.recv_exact(what, count * 8).await?;
        Ok(buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
    }

    /// Receives `count` values of `width` bits packed by [`crate::ring::pack_bits`].
    pub async fn recv_packed(&mut self, what: &'static str, count: usize, width: u32) -> NetResult<Vec<u64>> {
        self.recv_packed_widths(what, count, std::iter::repeat(width)).await
    }

    /// Receives `count` values packed by [`crate::ring::pack_bits_widths`] to the first `count`
    /// of `widths`.
    pub async fn recv_packed_widths(
        &mut self,
        what: &'static str,
        count: usize,
        widths: impl Iterator<Item = u32> + Clone,
    ) -> NetResult<Vec<u64>> {
        let bits: usize = widths.clone().take(count).map(|w| w as usize).sum();
        let buf = self.recv_exact(what, bits.div_ceil(8)).await?;
        crate::ring::unpack_bits_widths(&buf, count, widths).map_err(|e| NetError::Malformed {
            step: self.meter.current_step(),
            what,
            reason: e.to_string(),
        })
    }

    /// Sends `values` packed to `width` bits each.
    pub async fn send_packed(&mut self, values: &[u64], width: u32) -> NetResult<()> {
        self.send(&crate::ring::pack_bits(values, width)).await
    }

    /// Sends `values` packed to their `widths` ([`crate::ring::pack_bits_widths`]).
    pub async fn send_packed_widths(&mut self, values: &[u64], widths: impl Iterator<Item = u32>) -> NetResult<()> {
        self.send(&crate::ring::pack_bits_widths(values, widths)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn messages_arrive_in_order_and_are_counted() {
        rt().block_on(async {
            // a frame that announces far more than it brings: the reader fails cleanly when the
            // peer goes away (and reserves only what arrives, not the announced length)
            let (mut a, b) = Channel::in_memory_pair(Duration::from_secs(5));
            let mut b = b.with_max_frame(1 << 30);
            a.send_unframed(&(1u32 << 29).to_le_bytes()).await.ok();
            a.send_unframed(&[7u8; 10]).await.ok();
            drop(a);
            assert!(matches!(b.recv().await, Err(NetError::PeerClosed { .. })));
        });
    }

    #[test]
    fn a_short_frame_is_an_error_not_a_huge_buffer() {
        rt().block_on(async {
            let (mut a, mut b) = Channel::in_memory_pair(Duration::from_secs(5));
            let _s = a.meter().scope("step");
            a.send_u64s(&[1, 2, 3]).await.ok();
            a.send(b"hi").await.ok();
            assert_eq!(b.recv_u64s("v", 3).await.ok(), Some(vec![1, 2, 3]));
            assert_eq!(b.recv().await.ok(), Some(b"hi".to_vec()));
            b.send_packed(&[1, 0, 1], 1).await.ok();
            assert_eq!(a.recv_packed("bits", 3, 1).await.ok(), Some(vec![1, 0, 1]));
            let ra = a.meter().report();
            let step = ra.steps.iter().find(|(n, _)| n == "step").map(|x| x.1).unwrap_or_default();
            assert_eq!(step.bytes_sent, 4 + 24 + 4 + 2);
            assert_eq!(step.bytes_received, 4 + 1);
            assert_eq!(step.rounds, 1);
        });
    }

    #[test]
    fn wrong_length_names_the_message() {
        rt().block_on(async {
            let (mut a, mut b) = Channel::in_memory_pair(Duration::from_secs(5));
            a.send(&[0u8; 5]).await.ok();
            let err = b.recv_u64s("shares", 1).await.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("shares") && err.contains("expected 8") && err.contains('5'), "{err}");
        });
    }

    #[test]
    fn garbage_header_is_rejected_without_allocating() {
        rt().block_on(async {
            let (mut a, b) = Channel::in_memory_pair(Duration::from_secs(5));
            let mut b = b.with_max_frame(1 << 20);
            a.send_unframed(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]).await.ok();
            assert!(matches!(b.recv().await, Err(NetError::FrameTooLarge { .. })));
        });
    }

    #[test]
    fn silent_peer_times_out() {
        rt().block_on(async {
            let (_a, mut b) = Channel::in_memory_pair(Duration::from_millis(100));
            let _s = b.meter().scope("waiting");
            let err = b.recv().await.err();
            assert!(matches!(&err, Some(NetError::Timeout { step, .. }) if step == "waiting"), "{err:?}");
        });
    }

    #[test]
    fn vanished_peer_is_reported_as_closed() {
        rt().block_on(async {
            let (a, mut b) = Channel::in_memory_pair(Duration::from_secs(5));
            drop(a);
            assert!(matches!(b.recv().await, Err(NetError::PeerClosed { .. })));
            // a frame cut in the middle is the same
            let (mut a, mut b) = Channel::in_memory_pair(Duration::from_secs(5));
            a.send_unframed(&[10, 0, 0, 0, 1, 2]).await.ok();
            drop(a);
            assert!(matches!(b.recv().await, Err(NetError::PeerClosed { .. })));
        });
    }
}
