//! The real transport under failure: every case ends in a clear error on the affected side,
//! within the timeout, never a hang or a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use secmoe::net::{Identity, LinkConfig, Listener, NetError, PublicParams, connect};
use secmoe::ot::OtKind;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn messages_round_trip_and_are_metered() {
    common::runtime().block_on(async {
        let (mut c, mut s) = common::links().await;
        {
            let _step = c.meter().scope("exchange");
            c.channel().send_u64s(&[7; 1000]).await.unwrap();
            assert_eq!(s.channel().recv_u64s("values", 1000).await.unwrap(), vec![7; 1000]);
            s.channel().send(b"ack").await.unwrap();
            assert_eq!(c.channel().recv().await.unwrap(), b"ack");
        }
        let step = c.meter().report().prefixed("exchange");
        assert!(step.bytes_sent >= 8000 && step.bytes_sent < 8200, "{step:?}");
        assert_eq!(step.rounds, 1);
        let (a, b) = tokio::join!(c.close(), s.close());
        a.unwrap();
        b.unwrap();
    });
}

#[test]
fn different_public_parameters_fail_on_both_sides_naming_the_field() {
    common::runtime().block_on(async {
        let id = Identity::generate().unwrap();
        let server_cfg =
            LinkConfig { timeout: Duration::from_secs(10), params: PublicParams::new().with("frac_bits", 16) };
        let listener = Listener::bind(any_port(), &id, server_cfg).unwrap();
        let (c, s) = tokio::join!(connect(listener.local_addr(), id.cert_pem(), common::config(10)), listener.accept());
        for err in [c.err().unwrap(), s.err().unwrap()] {
            assert!(matches!(&err, NetError::ParamMismatch { field, .. } if field.contains("frac_bits")), "{err}");
        }
    });
}

#[test]
fn a_server_with_another_certificate_is_refused() {
    common::runtime().block_on(async {
        let real = Identity::generate().unwrap();
        let impostor = Identity::generate().unwrap();
        assert_ne!(real.fingerprint(), impostor.fingerprint());
        let listener = Listener::bind(any_port(), &impostor, common::config(5)).unwrap();
        let addr = listener.local_addr();
        tokio::spawn(async move { listener.accept().await });
        let err = connect(addr, real.cert_pem(), common::config(5)).await.err().unwrap();
        assert!(matches!(err, NetError::Transport(_) | NetError::Timeout { .. }), "{err}");
    });
}

#[test]
fn nobody_listening_is_a_timeout_not_a_hang() {
    common::runtime().block_on(async {
        let id = Identity::generate().unwrap();
        // Bind and drop to get a port that is (very likely) closed.
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let start = Instant::now();
        let err = connect(port, id.cert_pem(), common::config(2)).await.err().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
        assert!(matches!(err, NetError::Transport(_) | NetError::Timeout { .. }), "{err}");
    });
}

#[test]
fn peer_hanging_up_mid_protocol_is_reported_quickly() {
    common::runtime().block_on(async {
        let (mut c, s) = common::links().await;
        drop(s);
        let _step = c.meter().scope("waiting-for-server");
        let start = Instant::now();
        let err = c.channel().recv().await.err().unwrap();
        assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
        assert!(
            matches!(&err, NetError::PeerClosed { step } | NetError::Io { step, .. } if step == "waiting-for-server"),
            "{err}"
        );
    });
}

#[test]
fn silent_peer_is_a_timeout_naming_the_step() {
    common::runtime().block_on(async {
        let (mut c, _s) = common::links().await;
        c.channel().set_timeout(Duration::from_millis(300));
        let _step = c.meter().scope("gelu");
        let err = c.channel().recv().await.err().unwrap();
        assert!(matches!(&err, NetError::Timeout { step, .. } if step == "gelu"), "{err}");
    });
}

#[test]
fn garbage_and_wrong_lengths_on_the_wire_are_errors() {
    common::runtime().block_on(async {
        let (mut c, mut s) = common::links().await;
        s.channel().send(&[1, 2, 3]).await.unwrap();
        let err = c.channel().recv_u64s("shares", 4).await.err().unwrap();
        assert!(matches!(err, NetError::WrongLength { expected: 32, actual: 3, .. }), "{err}");
        s.channel().send_unframed(&[0xff, 0xff, 0xff, 0xff, 0, 0]).await.unwrap();
        let err = c.channel().recv().await.err().unwrap();
        assert!(matches!(err, NetError::FrameTooLarge { .. }), "{err}");
    });
}

#[test]
fn peer_vanishing_during_ot_is_an_error_on_the_other_side() {
    common::runtime().block_on(async {
        let (_c, mut oc, s, os) = common::ot_pair().await;
        drop(os);
        drop(s);
        let start = Instant::now();
        let res = oc.random_send(OtKind::Iknp, 1 << 16).await;
        assert!(res.is_err(), "OT with a vanished peer succeeded");
        assert!(start.elapsed() < Duration::from_secs(40), "took {:?}", start.elapsed());
    });
}

/// A batch started in the background after the peer has gone fails where it is taken, as an
/// error within the link's timeout, and the engine stays usable for reporting errors.
#[test]
fn a_background_batch_with_a_vanished_peer_is_an_error_where_it_is_taken() {
    common::runtime().block_on(async {
        let (_c, mut oc, s, os) = common::ot_pair().await;
        drop(os);
        drop(s);
        let start = Instant::now();
        oc.prefetch(OtKind::Silent, 1 << 16, 0).await.expect("starting a batch sends nothing yet");
        let res = oc.random_send(OtKind::Silent, 1 << 16).await;
        assert!(res.is_err(), "a background batch with a vanished peer succeeded");
        assert!(oc.random_send(OtKind::Iknp, 128).await.is_err(), "a later batch succeeded");
        assert!(start.elapsed() < Duration::from_secs(70), "took {:?}", start.elapsed());
    });
}

/// A byte is charged to the step that writes or reads it, not to the step its reader happens to
/// be in when it arrives: a server running two steps ahead of a sleeping client still has its
/// messages booked under the client's matching steps, and for every step the bytes one party
/// sent are the bytes the other received — in the OT extension's steps up to the few bytes that
/// name a stream the library opens and the peer never reads (9 bytes here: the writer books
/// them, the peer never does).
#[test]
fn every_step_books_the_same_bytes_on_both_sides() {
    common::runtime().block_on(async {
        let (mut c, mut oc, mut s, mut os) = common::ot_pair().await;
        let server = async {
            {
                let _one = s.meter().scope("ahead/one");
                s.channel().send(&[1; 1000]).await.unwrap();
            }
            {
                let _two = s.meter().scope("ahead/two");
                s.channel().send(&[2; 5000]).await.unwrap();
            }
            let _ot = s.meter().scope("ot");
            os.random_receive(OtKind::Iknp, 10_000).await.unwrap();
        };
        let client = async {
            {
                let _wait = c.meter().scope("waiting");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            {
                let _one = c.meter().scope("ahead/one");
                c.channel().recv().await.unwrap();
            }
            {
                let _two = c.meter().scope("ahead/two");
                c.channel().recv().await.unwrap();
            }
            let _ot = c.meter().scope("ot");
            oc.random_send(OtKind::Iknp, 10_000).await.unwrap();
        };
        tokio::join!(client, server);
        let (client, server) = (c.meter().report(), s.meter().report());
        assert_eq!(client.prefixed("waiting").bytes(), 0);
        assert_eq!(client.prefixed("ahead/one").bytes_received, 4 + 1000);
        assert_eq!(client.prefixed("ahead/two").bytes_received, 4 + 5000);
        // IKNP: the receiver's 128 columns of 10 000 bits, besides the base OTs
        assert!(client.prefixed("ot").bytes_received >= 10_000 * 128 / 8, "{client:?}");
        let steps: BTreeSet<&String> = client.steps.iter().chain(&server.steps).map(|(k, _)| k).collect();
        for step in steps {
            let (c, s) = (client.prefixed(step), server.prefixed(step));
            if step.starts_with("ot") {
                let unread = |sent: u64, received: u64| sent >= received && sent - received <= 32;
                assert!(
                    unread(c.bytes_sent, s.bytes_received) && unread(s.bytes_sent, c.bytes_received),
                    "{c:?} {s:?}"
                );
            } else {
                assert_eq!((c.bytes_sent, c.bytes_received), (s.bytes_received, s.bytes_sent), "step {step}");
            }
        }
        let (a, b) = tokio::join!(c.close(), s.close());
        a.unwrap();
        b.unwrap();
    });
}

/// A statement beyond `MAX_STATEMENT` is refused by the party that would send it: it says so,
/// with the start of the text, and both parties end with that reason (the peer does not take
/// it for garbage, neither waits).
#[test]
fn an_oversized_statement_is_refused_with_its_reason_on_both_sides() {
    use secmoe::proto::ProtoError;
    use secmoe::proto::agree::{MAX_STATEMENT, exchange};
    common::runtime().block_on(async {
        let (c, mut sc, s, mut ss) = common::session_pair().await;
        let (long, short) = (Ok(format!("model {}", "x".repeat(MAX_STATEMENT))), Ok("model y".into()));
        let (client, server) = tokio::join!(exchange(&mut sc, &long), exchange(&mut ss, &short));
        let size = format!("a statement of {} bytes (at most {MAX_STATEMENT}): model xxx", MAX_STATEMENT + 6);
        assert!(matches!(&client, Err(ProtoError::Input(m)) if m.starts_with(&size)), "{client:?}");
        assert!(matches!(&server, Err(ProtoError::Refused(m)) if m.starts_with(&size)), "{server:?}");
        drop((c, s));
    });
}
