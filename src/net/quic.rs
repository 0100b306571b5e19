//! The real transport: QUIC (s2n-quic) with TLS 1.3, pinned to the server's self-signed
//! certificate, carrying `cryprot-net` multiplexed streams.
//!
//! The server owns an [`Identity`] (certificate + key); the client trusts exactly that certificate
//! (copied to it out of band, e.g. checked by its SHA-256 fingerprint): its TLS trust store starts
//! empty — the operating system's authorities are not loaded — and holds that one certificate,
//! so no certificate authority is involved and a different server cannot impersonate it, even
//! with a certificate for the same name from an authority the machine trusts. The channel is encrypted
//! and authenticated in both directions by TLS; the client itself is not authenticated by
//! certificate (semi-honest model: the server serves whoever connects).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use s2n_quic::provider::event::{ConnectionInfo, ConnectionMeta, Subscriber, events};
use s2n_quic::provider::limits::Limits;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::handshake::handshake;
use super::{ByteCounter, Channel, DEFAULT_TIMEOUT, Meter, NetError, NetResult, Party, PublicParams};

/// The TLS server name both sides use; the client checks the pinned certificate carries it.
pub const SERVER_NAME: &str = "secmoe-server";

fn transport(what: &str, e: impl std::fmt::Display) -> NetError {
    NetError::Transport(format!("{what}: {e}"))
}

/// The server's TLS identity: a self-signed certificate and its private key.
pub struct Identity {
    cert_pem: String,
    key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("fingerprint", &fingerprint(&self.cert_pem).ok()).finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh self-signed certificate for [`SERVER_NAME`] with a new key.
    pub fn generate() -> NetResult<Identity> {
        let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| transport("generating certificate", e))?;
        Ok(Identity { cert_pem: ck.cert.pem(), key_pem: Zeroizing::new(ck.signing_key.serialize_pem()) })
    }

    /// Reads a certificate and key written by [`Identity::save`].
    pub fn load(cert: &Path, key: &Path) -> NetResult<Identity> {
        let cert_pem =
            std::fs::read_to_string(cert).map_err(|e| transport(&format!("reading {}", cert.display()), e))?;
        let key_pem = Zeroizing::new(
            std::fs::read_to_string(key).map_err(|e| transport(&format!("reading {}", key.display()), e))?,
        );
        fingerprint(&cert_pem)?;
        if !key_pem.contains("PRIVATE KEY") {
            return Err(NetError::Transport(format!("{} holds no PEM private key", key.display())));
        }
        Ok(Identity { cert_pem, key_pem })
    }

    /// Writes the certificate (public, give it to clients) and the key (private: mode 0600, set
    /// on the file whether it is new or not). Refuses to write through a symbolic link.
    pub fn save(&self, cert: &Path, key: &Path) -> NetResult<()> {
        for path in [cert, key] {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(NetError::Transport(format!(
                    "{} is a symbolic link; refusing to write through it",
                    path.display()
                )));
            }
        }
        let writing = |path: &Path, e: std::io::Error| transport(&format!("writing {}", path.display()), e);
        std::fs::write(cert, &self.cert_pem).map_err(|e| writing(cert, e))?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(key).map_err(|e| writing(key, e))?;
        // the mode above applies only to a file this call creates
        #[cfg(unix)]
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(|e| writing(key, e))?;
        std::io::Write::write_all(&mut f, self.key_pem.as_bytes()).map_err(|e| writing(key, e))
    }

    /// The certificate in PEM form (public).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 fingerprint of the certificate, as colon-separated hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_pem).unwrap_or_default()
    }
}

/// SHA-256 fingerprint of the certificate in a PEM text, as colon-separated hex. The text must
/// hold exactly one block, a certificate: what is fingerprinted is all that is trusted.
pub fn fingerprint(cert_pem: &str) -> NetResult<String> {
    let blocks = pem::parse_many(cert_pem).map_err(|e| transport("parsing certificate PEM", e))?;
    let [block] = &blocks[..] else {
        return Err(NetError::Transport(format!(
            "expected exactly one PEM block (the server's certificate), found {}",
            blocks.len()
        )));
    };
    if block.tag() != "CERTIFICATE" {
        return Err(NetError::Transport(format!("expected a CERTIFICATE PEM block, found {}", block.tag())));
    }
    Ok(hex_digest(block.contents()))
}

/// SHA-256 of `der` as colon-separated hex.
fn hex_digest(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// What a connection's events tell: the certificate the peer presented (its verified chain's
/// leaf, DER). Bytes are counted by the channels and the OT calls, where they are written and
/// read (see [`Meter`]).
#[derive(Clone, Default)]
struct ConnectionRecord {
    peer_leaf: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

/// Fills a [`ConnectionRecord`] per connection.
struct RecordingSubscriber;

impl Subscriber for RecordingSubscriber {
    type ConnectionContext = ConnectionRecord;

    fn create_connection_context(&mut self, _meta: &ConnectionMeta, _info: &ConnectionInfo) -> ConnectionRecord {
        ConnectionRecord::default()
    }

    fn on_tls_exporter_ready(
        &mut self,
        ctx: &mut ConnectionRecord,
        _meta: &ConnectionMeta,
        e: &events::TlsExporterReady,
    ) {
        let leaf = e.session.peer_cert_chain_der().ok().and_then(|chain| chain.into_iter().next());
        *ctx.peer_leaf.lock().unwrap_or_else(|p| p.into_inner()) = leaf;
    }
}

/// Settings of a link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Longest wait for the peer (each receive, each connection attempt); also the QUIC idle
    /// timeout, so a vanished peer is noticed.
    pub timeout: Duration,
    /// Public parameters checked in the handshake.
    pub params: PublicParams,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self { timeout: DEFAULT_TIMEOUT, params: PublicParams::new() }
    }
}

fn limits(cfg: &LinkConfig) -> NetResult<Limits> {
    const MIB: u32 = 1 << 20;
    let max_streams = 1u64 << 40;
    Limits::new()
        .with_max_send_buffer_size(16 * MIB)
        .and_then(|l| l.with_data_window(64 * MIB as u64))
        .and_then(|l| l.with_bidirectional_local_data_window(16 * MIB as u64))
        .and_then(|l| l.with_unidirectional_data_window(16 * MIB as u64))
        .and_then(|l| l.with_max_open_local_unidirectional_streams(max_streams))
        .and_then(|l| l.with_max_open_remote_unidirectional_streams(max_streams))
        .and_then(|l| l.with_max_idle_timeout(cfg.timeout))
        .and_then(|l| l.with_max_handshake_duration(cfg.timeout))
        .map_err(|e| transport("QUIC limits", e))
}

fn io(addr: SocketAddr) -> NetResult<s2n_quic::provider::io::Default> {
    s2n_quic::provider::io::Default::builder()
        .with_receive_address(addr)
        .and_then(|b| b.build())
        .map_err(|e| transport(&format!("binding UDP socket {addr}"), e))
}

/// An established, handshaken connection to the peer.
pub struct Link {
    party: Party,
    conn: cryprot_net::Connection,
    channel: Channel,
    handle: s2n_quic::connection::Handle,
    timeout: Duration,
    /// The QUIC endpoint (client or server) stays alive as long as the link.
    _endpoint: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("party", &self.party).finish_non_exhaustive()
    }
}

impl Link {
    async fn establish(
        party: Party,
        quic: s2n_quic::Connection,
        cfg: &LinkConfig,
        endpoint: Box<dyn std::any::Any + Send + Sync>,
    ) -> NetResult<Link> {
        let handle = quic.handle();
        let (mut conn, manager) = cryprot_net::Connection::new(quic);
        tokio::spawn(manager.start());
        let (send, recv) = tokio::time::timeout(cfg.timeout, conn.byte_stream())
            .await
            .map_err(|_| NetError::Timeout { step: "open channel".into(), after: cfg.timeout })?
            .map_err(|e| transport("opening the message stream", e))?;
        let mut channel = Channel::new(recv, send, Meter::new(Arc::new(ByteCounter::default())), cfg.timeout);
        handshake(&mut channel, party, &cfg.params).await?;
        Ok(Link { party, conn, channel, handle, timeout: cfg.timeout, _endpoint: endpoint })
    }

    /// Which party this side plays.
    pub fn party(&self) -> Party {
        self.party
    }

    /// The message channel to the peer.
    pub fn channel(&mut self) -> &mut Channel {
        &mut self.channel
    }

    /// The meter charged by everything on this link.
    pub fn meter(&self) -> &Meter {
        self.channel.meter()
    }

    /// The configured wait limit for the peer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Opens another message channel on its own stream, charged to the same meter. The n-th call
    /// on one side pairs with the n-th call on the other.
    pub async fn open_channel(&mut self) -> NetResult<Channel> {
        let step = self.meter().current_step();
        let (send, recv) = tokio::time::timeout(self.timeout, self.conn.byte_stream())
            .await
            .map_err(|_| NetError::Timeout { step, after: self.timeout })?
            .map_err(|e| transport("opening a stream", e))?;
        Ok(Channel::new(recv, send, self.meter().clone(), self.timeout))
    }

    /// A new multiplexed sub-connection for a library protocol (the OT extension). The n-th call
    /// on one side pairs with the n-th call on the other; creating it sends nothing.
    pub fn sub_connection(&mut self) -> cryprot_net::Connection {
        self.conn.sub_connection()
    }

    /// Ends the session cleanly: the client says goodbye, the server acknowledges, the client
    /// closes the connection once it has read the acknowledgement (and waits until the close is
    /// sent), and the server returns when it sees the close. Neither side closes while the other
    /// still has a message in flight.
    pub async fn close(mut self) -> NetResult<()> {
        let _s = self.meter().scope("close");
        match self.party {
            Party::Client => {
                self.channel.send(b"bye").await?;
                self.channel.recv_exact("goodbye acknowledgement", 3).await?;
                self.handle.close(0u32.into());
                if let Some(client) = self._endpoint.downcast_mut::<s2n_quic::Client>() {
                    // Bounded: a lost close only costs the server its grace period.
                    let _ = tokio::time::timeout(CLOSE_GRACE, client.wait_idle()).await;
                }
            }
            Party::Server => {
                self.channel.recv_exact("goodbye", 3).await?;
                self.channel.send(b"ack").await?;
                // Closing now could discard the ack before the client reads it: wait (briefly)
                // until the client, having read it, closes the connection.
                self.channel.set_timeout(CLOSE_GRACE.min(self.timeout));
                match self.channel.recv().await {
                    Err(NetError::PeerClosed { .. } | NetError::Io { .. } | NetError::Timeout { .. }) => {}
                    Err(e) => return Err(e),
                    Ok(_) => {
                        return Err(NetError::Malformed {
                            step: "close".into(),
                            what: "goodbye",
                            reason: "the client kept sending after its goodbye".into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// How long the end of a session waits for the connection close to travel.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

impl Drop for Link {
    fn drop(&mut self) {
        // Tell the peer at once instead of leaving it to the idle timeout.
        self.handle.close(0u32.into());
    }
}

/// A listening server endpoint.
pub struct Listener {
    server: Arc<tokio::sync::Mutex<s2n_quic::Server>>,
    addr: SocketAddr,
    cfg: LinkConfig,
}

impl Listener {
    /// Listens on `addr` (use port 0 for any free port) with the server's identity.
    pub fn bind(addr: SocketAddr, identity: &Identity, cfg: LinkConfig) -> NetResult<Listener> {
        let server = s2n_quic::Server::builder()
            .with_tls((identity.cert_pem.as_str(), identity.key_pem.as_str()))
            .map_err(|e| transport("TLS setup", e))?
            .with_io(io(addr)?)
            .map_err(|e| transport("QUIC io", e))?
            .with_limits(limits(&cfg)?)
            .map_err(|e| transport("QUIC limits", e))?
            .with_event(RecordingSubscriber)
            .map_err(|e| transport("QUIC events", e))?
            .start()
            .map_err(|e| transport(&format!("starting QUIC server on {addr}"), e))?;
        let addr = server.local_addr().map_err(|e| transport("local address", e))?;
        Ok(Listener { server: Arc::new(tokio::sync::Mutex::new(server)), addr, cfg })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the next client and runs the handshake with it.
    pub async fn accept(&self) -> NetResult<Link> {
        let quic = self
            .server
            .lock()
            .await
            .accept()
            .await
            .ok_or_else(|| NetError::Transport("QUIC server stopped accepting".into()))?;
        let remote = quic.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%remote, "client connected");
        Link::establish(Party::Server, quic, &self.cfg, Box::new(self.server.clone())).await
    }
}

/// Connects to a server at `addr` that must present exactly the certificate `peer_cert_pem`: the
/// TLS trust store holds that certificate alone (no system authorities).
pub async fn connect(addr: SocketAddr, peer_cert_pem: &str, cfg: LinkConfig) -> NetResult<Link> {
    fingerprint(peer_cert_pem)?;
    let local: SocketAddr =
        if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|e| transport("local address", e))?;
    let tls = s2n_quic::provider::tls::default::Client::builder()
        .with_empty_trust_store()
        .and_then(|b| b.with_certificate(peer_cert_pem))
        .and_then(|b| b.build())
        .map_err(|e| transport("TLS setup (is the peer certificate valid PEM?)", e))?;
    let client = s2n_quic::Client::builder()
        .with_tls(tls)
        .map_err(|e| transport("TLS setup", e))?
        .with_io(io(local)?)
        .map_err(|e| transport("QUIC io", e))?
        .with_limits(limits(&cfg)?)
        .map_err(|e| transport("QUIC limits", e))?
        .with_event(RecordingSubscriber)
        .map_err(|e| transport("QUIC events", e))?
        .start()
        .map_err(|e| transport("starting QUIC client", e))?;
    let connect = s2n_quic::client::Connect::new(addr).with_server_name(SERVER_NAME);
    let quic = tokio::time::timeout(cfg.timeout, client.connect(connect))
        .await
        .map_err(|_| NetError::Timeout { step: format!("connect to {addr}"), after: cfg.timeout })?
        .map_err(|e| {
            NetError::Transport(format!(
                "connecting to {addr}: {e} (is the server running, and is its certificate the pinned one?)"
            ))
        })?;
    // The trust store held the pin alone; check the leaf too, so that even a pinned certificate
    // able to sign others (a CA) admits no certificate but itself.
    let leaf = quic
        .query_event_context(|c: &ConnectionRecord| c.peer_leaf.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .map_err(|e| transport("reading the server's certificate", e))?;
    let pinned = pem::parse(peer_cert_pem).map_err(|e| transport("parsing certificate PEM", e))?;
    if leaf.as_deref() != Some(pinned.contents()) {
        return Err(NetError::Transport(format!(
            "{addr} presented a certificate other than the pinned one (SHA-256 {})",
            leaf.map(|der| hex_digest(&der)).unwrap_or_else(|| "unavailable".into())
        )));
    }
    Link::establish(Party::Client, quic, &cfg, Box::new(client)).await
}

/// Both parties in this process over the real transport on loopback (QUIC + TLS on 127.0.0.1,
/// a fresh self-signed identity): returns (client link, server link). For the demo, tests and
/// benchmarks.
pub async fn loopback(cfg: LinkConfig) -> NetResult<(Link, Link)> {
    let identity = Identity::generate()?;
    let addr: SocketAddr = "127.0.0.1:0".parse().map_err(|e| transport("loopback address", e))?;
    let listener = Listener::bind(addr, &identity, cfg.clone())?;
    let server_addr = listener.local_addr();
    let (client, server) = tokio::join!(connect(server_addr, identity.cert_pem(), cfg), listener.accept());
    Ok((client?, server?))
}
