//! OT correctness over the real transport: every correlation of large batches is checked.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use rand::{RngExt, SeedableRng, rngs::StdRng};
use secmoe::ot::{OneOfN, OtKind};
use secmoe::ring::mask;

const MILLION: usize = 1 << 20;

#[test]
fn random_ots_match_in_both_directions_for_both_kinds() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::ot_pair().await;
        for kind in OtKind::ALL {
            // client sends, server receives: a full million, every OT checked
            let (snd, rcv) = tokio::join!(oc.random_send(kind, MILLION), os.random_receive(kind, MILLION));
            let (snd, rcv) = (snd.unwrap(), rcv.unwrap());
            assert_eq!(snd.keys.len(), MILLION);
            for i in 0..MILLION {
                let c = rcv.choices[i] as usize;
                assert_eq!(rcv.keys[i], snd.keys[i][c], "{kind} OT {i}");
                assert_ne!(rcv.keys[i], snd.keys[i][1 - c], "{kind} OT {i}: other key leaked");
            }
            let ones = rcv.choices.iter().filter(|&&c| c).count() as f64;
            assert!((ones / MILLION as f64 - 0.5).abs() < 0.01, "choice bits are biased");
            // the other direction, a smaller odd-sized batch
            let (snd, rcv) = tokio::join!(os.random_send(kind, 1001), oc.random_receive(kind, 1001));
            let (snd, rcv) = (snd.unwrap(), rcv.unwrap());
            assert!((0..1001).all(|i| rcv.keys[i] == snd.keys[i][rcv.choices[i] as usize]));
        }
    });
}

/// Silent batches that shrink and grow again on one engine give correlated keys every time, and
/// no key of an earlier batch comes back — also a batch made by two extension calls.
#[test]
fn silent_batches_of_changing_sizes_stay_correct_and_fresh() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::ot_pair().await;
        let mut seen = std::collections::HashSet::new();
        for n in [1 << 17, 1 << 16, 3 << 15, 1 << 18, 2 * MILLION + 3] {
            let (snd, rcv) = tokio::join!(oc.random_send(OtKind::Silent, n), os.random_receive(OtKind::Silent, n));
            let (snd, rcv) = (snd.unwrap(), rcv.unwrap());
            assert_eq!((snd.keys.len(), rcv.keys.len()), (n, n));
            for i in 0..n {
                let c = rcv.choices[i] as usize;
                assert_eq!(rcv.keys[i], snd.keys[i][c], "batch of {n}, OT {i}");
                assert_ne!(rcv.keys[i], snd.keys[i][1 - c], "batch of {n}, OT {i}: other key leaked");
                let key: [u64; 2] = bytemuck::cast(snd.keys[i][0]);
                assert!(seen.insert(key), "batch of {n}, OT {i}: a key of an earlier batch");
            }
        }
    });
}

/// A silent batch large one way and small the other: the small direction runs on IKNP (below
/// `SILENT_MIN` the silent extension's noise is light), both at once, and both pools fill.
#[test]
fn a_silent_preparation_mixes_extensions_by_direction() {
    use secmoe::ot::SILENT_MIN;
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::ot_pair().await;
        let (big, small) = (SILENT_MIN + 3, 500);
        let (a, b) = tokio::join!(oc.prepare(OtKind::Silent, big, small), os.prepare(OtKind::Silent, small, big));
        a.unwrap();
        b.unwrap();
        for _ in 0..2 {
            let (snd, rcv) = tokio::join!(oc.random_send(OtKind::Silent, big), os.random_receive(OtKind::Silent, big));
            let (snd, rcv) = (snd.unwrap(), rcv.unwrap());
            assert!((0..big).all(|i| rcv.keys[i] == snd.keys[i][rcv.choices[i] as usize]));
            let (snd, rcv) =
                tokio::join!(os.random_send(OtKind::Silent, small), oc.random_receive(OtKind::Silent, small));
            let (snd, rcv) = (snd.unwrap(), rcv.unwrap());
            assert!((0..small).all(|i| rcv.keys[i] == snd.keys[i][rcv.choices[i] as usize]));
        }
    });
}

/// A batch generated in the background while the parties exchange messages: the foreground's
/// step is charged its own messages only, the batch its own step (nested where it started, the
/// same bytes on both sides), and its OTs join the pool in step on both sides.
#[test]
fn a_prefetched_batch_runs_beside_the_protocol_and_joins_the_pool_in_step() {
    use secmoe::ot::SILENT_MIN;
    common::runtime().block_on(async {
        let (mut c, mut oc, mut s, mut os) = common::ot_pair().await;
        let (big, other) = (SILENT_MIN + 7, SILENT_MIN + 100);
        let client = async {
            {
                let _s = c.meter().scope("next");
                oc.prefetch(OtKind::Silent, big, other).await.unwrap();
            }
            let _s = c.meter().scope("online");
            c.channel().send(&[7; 3000]).await.unwrap();
            c.channel().recv().await.unwrap();
        };
        let server = async {
            {
                let _s = s.meter().scope("next");
                os.prefetch(OtKind::Silent, other, big).await.unwrap();
            }
            let _s = s.meter().scope("online");
            s.channel().recv().await.unwrap();
            s.channel().send(&[8; 2000]).await.unwrap();
        };
        tokio::join!(client, server);
        // nothing is in the pool until the batch is settled: a preparation of nothing does it
        let (a, b) = tokio::join!(oc.prepare(OtKind::Silent, 0, 0), os.prepare(OtKind::Silent, 0, 0));
        a.unwrap();
        b.unwrap();
        assert_eq!((oc.prepared(OtKind::Silent), os.prepared(OtKind::Silent)), ((big, other), (other, big)));
        let (snd, rcv) = tokio::join!(oc.random_send(OtKind::Silent, big), os.random_receive(OtKind::Silent, big));
        let (snd, rcv) = (snd.unwrap(), rcv.unwrap());
        assert!((0..big).all(|i| rcv.keys[i] == snd.keys[i][rcv.choices[i] as usize]));
        let (snd, rcv) = tokio::join!(os.random_send(OtKind::Silent, other), oc.random_receive(OtKind::Silent, other));
        let (snd, rcv) = (snd.unwrap(), rcv.unwrap());
        assert!((0..other).all(|i| rcv.keys[i] == snd.keys[i][rcv.choices[i] as usize]));
        assert_eq!((oc.prepared(OtKind::Silent), os.prepared(OtKind::Silent)), ((0, 0), (0, 0)));
        let (client, server) = (c.meter().report(), s.meter().report());
        assert_eq!(client.prefixed("online").bytes_sent, 4 + 3000);
        assert_eq!(client.prefixed("online").bytes_received, 4 + 2000);
        let (cb, sb) = (client.prefixed("next/ot-silent"), server.prefixed("next/ot-silent"));
        // silent OT: the PPRF message, about 2·128 bits per noise point and direction, besides
        // the IKNP base OTs; the library's 9-byte stream header is written and never read
        assert!(cb.bytes() > 20_000 && cb.rounds >= 2, "{cb:?}");
        let unread = |sent: u64, received: u64| sent >= received && sent - received <= 32;
        assert!(unread(cb.bytes_sent, sb.bytes_received) && unread(sb.bytes_sent, cb.bytes_received), "{cb:?} {sb:?}");
    });
}

#[test]
fn correlated_ots_give_x_plus_choice_times_delta() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::ot_pair().await;
        let mut rng = StdRng::seed_from_u64(3);
        for (kind, n, width) in [
            (OtKind::Iknp, MILLION, 64),
            (OtKind::Silent, MILLION, 64),
            (OtKind::Iknp, 5000, 17),
            (OtKind::Silent, 777, 1),
            // below the silent extension's smallest batch
            (OtKind::Silent, 1, 64),
            (OtKind::Silent, 24, 64),
        ] {
            let deltas: Vec<u64> = (0..n).map(|_| rng.random()).collect();
            let choices: Vec<bool> = (0..n).map(|_| rng.random()).collect();
            let (x, y) = tokio::join!(os.cot_send(kind, &deltas, width), oc.cot_receive(kind, &choices, width));
            let (x, y) = (x.unwrap(), y.unwrap());
            let m = mask(width);
            for i in 0..n {
                let expect = x[i].wrapping_add(if choices[i] { deltas[i] } else { 0 }) & m;
                assert_eq!(y[i], expect, "{kind} COT {i} (width {width})");
            }
        }
    });
}

/// Vector COTs whose widths cycle (a cross term's w, w − 1, …): OT i's `len` values are
/// correlated mod 2^(its width), batches crossing the hashing chunks, vectors of 1 and of 777.
#[test]
fn vector_correlated_ots_follow_their_width_cycle() {
    use secmoe::ot::cross_term_widths;
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::ot_pair().await;
        let mut rng = StdRng::seed_from_u64(5);
        for (kind, n, len, widths) in [
            (OtKind::Silent, 200_000, 1, cross_term_widths(44, 44).unwrap()),
            (OtKind::Iknp, 3 * 51, 777, cross_term_widths(51, 51).unwrap()),
            (OtKind::Iknp, 10, 3, vec![5, 64, 1]),
        ] {
            let deltas: Vec<u64> = (0..n * len).map(|_| rng.random()).collect();
            let choices: Vec<bool> = (0..n).map(|_| rng.random()).collect();
            let (x, y) = tokio::join!(
                os.cot_vec_send(kind, &deltas, len, &widths),
                oc.cot_vec_receive(kind, &choices, len, &widths)
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            for v in 0..n * len {
                let (i, m) = (v / len, mask(widths[(v / len) % widths.len()]));
                assert_eq!(x[v] & !m, 0, "{kind}: the sender's value {v} is reduced");
                let expect = x[v].wrapping_add(if choices[i] { deltas[v] } else { 0 }) & m;
                assert_eq!(y[v], expect, "{kind} COT {i}, value {v}");
            }
        }
        assert!(cross_term_widths(45, 44).is_err(), "more choice bits than the ring");
        assert!(cross_term_widths(0, 44).is_err());
        assert_eq!(cross_term_widths(3, 10).unwrap(), vec![10, 9, 8]);
        assert!(oc.cot_vec_send(OtKind::Iknp, &[1], 1, &[]).await.is_err(), "no width");
        assert!(oc.cot_vec_send(OtKind::Iknp, &[1], 1, &[3, 65]).await.is_err());
    });
}

#[test]
fn one_of_n_ot_returns_the_chosen_message_only() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::ot_pair().await;
        let mut rng = StdRng::seed_from_u64(4);
        for (kind, log_n, width, inst) in [
            (OtKind::Iknp, 4, 2, 1 << 16),
            (OtKind::Silent, 4, 64, 1 << 14),
            (OtKind::Iknp, 1, 8, 100),
            (OtKind::Silent, 8, 3, 50),
        ] {
            let big_n = 1usize << log_n;
            let msgs: Vec<u64> = (0..inst * big_n).map(|_| rng.random::<u64>() & mask(width)).collect();
            let choices: Vec<u32> = (0..inst).map(|_| rng.random_range(0..big_n as u32)).collect();
            let (s, r) = tokio::join!(
                oc.one_of_n_send(kind, log_n, width, &msgs),
                os.one_of_n_receive(kind, log_n, width, &choices)
            );
            s.unwrap();
            let got = r.unwrap();
            for t in 0..inst {
                assert_eq!(got[t], msgs[t * big_n + choices[t] as usize], "{kind} 1-of-{big_n} instance {t}");
            }
        }
    });
}

/// One batch of runs of different sizes and widths (as the comparison's blocks with a narrower
/// top block): each instance gets its chosen message, across chunk boundaries too.
#[test]
fn grouped_one_of_n_ot_mixes_sizes_and_widths() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::ot_pair().await;
        let mut rng = StdRng::seed_from_u64(5);
        let groups = [
            OneOfN { log_n: 3, width: 1, instances: 700 },
            OneOfN { log_n: 3, width: 2, instances: 40_000 },
            OneOfN { log_n: 1, width: 2, instances: 300 },
            OneOfN { log_n: 12, width: 5, instances: 70 },
        ];
        for kind in OtKind::ALL {
            let (mut msgs, mut choices, mut expect) = (Vec::new(), Vec::new(), Vec::new());
            for g in &groups {
                for _ in 0..g.instances {
                    let row: Vec<u64> = (0..1u64 << g.log_n).map(|_| rng.random::<u64>() & mask(g.width)).collect();
                    let c = rng.random_range(0..1u32 << g.log_n);
                    expect.push(row[c as usize]);
                    choices.push(c);
                    msgs.extend(row);
                }
            }
            let (s, r) = tokio::join!(
                oc.one_of_n_send_grouped(kind, &groups, &msgs),
                os.one_of_n_receive_grouped(kind, &groups, &choices)
            );
            s.unwrap();
            assert!(r.unwrap() == expect, "{kind}");
        }
    });
}

#[test]
fn invalid_requests_are_errors_not_panics() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, _os) = common::ot_pair().await;
        assert!(oc.cot_send(OtKind::Iknp, &[1], 0).await.is_err());
        assert!(oc.cot_send(OtKind::Iknp, &[1], 65).await.is_err());
        assert!(oc.one_of_n_send(OtKind::Iknp, 4, 2, &[0; 15]).await.is_err());
        assert!(oc.one_of_n_receive(OtKind::Iknp, 2, 2, &[4]).await.is_err());
        assert!(oc.one_of_n_receive(OtKind::Iknp, 17, 2, &[0]).await.is_err());
    });
}

#[test]
fn ot_bytes_and_rounds_are_charged_to_steps() {
    common::runtime().block_on(async {
        let (c, mut oc, _s, mut os) = common::ot_pair().await;
        let n = 1 << 16;
        let (a, b) = tokio::join!(oc.random_send(OtKind::Iknp, n), os.random_receive(OtKind::Iknp, n));
        a.unwrap();
        b.unwrap();
        let report = c.meter().report();
        let iknp = report.prefixed("ot-iknp");
        // IKNP: the receiver sends 128 bits per OT (plus base OTs) to the sender.
        assert!(iknp.bytes_received >= (n as u64) * 16, "{iknp:?}");
        assert!(iknp.bytes() < (n as u64) * 16 + 200_000, "{iknp:?}");
        assert!(iknp.rounds >= 1);
    });
}
