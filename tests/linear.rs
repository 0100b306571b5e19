//! HE matrix products between two parties over the real transport: the shares always
//! reconstruct to the exact product mod 2^64, whatever the shape, and wrong inputs end in errors
//! that name the problem on both sides.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::backend::{Backend, Workers};
use secmoe::he::HeParams;
use secmoe::he::matmul::tiling_for;
use secmoe::he::tiling::MatShape;
use secmoe::net::CostModel;
use secmoe::proto::linear::{HeClient, HeServer, KeySet, linear, linear_in, matmul_shared};
use secmoe::proto::{HeKeys, ProtoError, Session};
use secmoe::ring::{Shares, Weights};

/// Fixed-point-like weights: |w| < 2^20, both signs.
fn weights(rng: &mut StdRng, count: usize) -> Vec<u64> {
    (0..count).map(|_| rng.random_range(-(1i64 << 20)..(1 << 20)) as u64).collect()
}

/// Both parties' sessions with the HE keys of `params` set up.
async fn sessions(params: Arc<HeParams>) -> (secmoe::net::Link, Session, secmoe::net::Link, Session) {
    let (c, mut sc, s, mut ss) = common::session_pair().await;
    let (a, b) = tokio::join!(sc.setup_he(params.clone(), KeySet::Linear), ss.setup_he(params, KeySet::Linear));
    a.unwrap();
    b.unwrap();
    (c, sc, s, ss)
}

/// The HE keys alone on the links' own channels, for tests that speak the wire format.
fn workers() -> Workers {
    Workers::new(2, "test-worker").unwrap_or_else(|e| panic!("{e}"))
}

async fn raw_keys(params: Arc<HeParams>) -> (secmoe::net::Link, HeClient, secmoe::net::Link, HeServer) {
    let (mut c, mut s) = common::links().await;
    let be: Arc<dyn Backend> = common::backend();
    let mut rng = StdRng::seed_from_u64(1);
    let (hc, hs) = tokio::join!(
        HeClient::setup(c.channel(), params.clone(), be.clone(), workers(), KeySet::Linear, &mut rng),
        HeServer::setup(s.channel(), params, be, workers(), KeySet::Linear)
    );
    (c, hc.unwrap(), s, hs.unwrap())
}

fn server_keys(sess: &Session) -> &HeServer {
    match sess.he_for(secmoe::proto::HeUse::Linear) {
        Some(HeKeys::Server(hs)) => hs,
        other => panic!("not the server's keys: {other:?}"),
    }
}

/// Networks from "bytes are free" to "bytes are everything": with the shapes below, the tilings
/// they choose cover unpacked results and several packing levels.
const NETWORKS: [CostModel; 3] = [
    CostModel { name: "fast", bandwidth_bps: 1e15, latency_s: 0.0 },
    CostModel::WAN,
    CostModel { name: "slow", bandwidth_bps: 1e6, latency_s: 0.0 },
];

#[test]
fn linear_layers_give_exact_shares_of_x_times_w_for_any_shape_and_tiling() {
    common::runtime().block_on(async {
        let params = HeParams::linear().unwrap();
        let (_c, mut sc, _s, mut ss) = sessions(params.clone()).await;
        let mut rng = StdRng::seed_from_u64(2);
        let mut packs = std::collections::BTreeSet::new();
        let threads = match sc.he_for(secmoe::proto::HeUse::Linear) {
            Some(HeKeys::Client(hc)) => hc.server_threads(),
            other => panic!("not the client's keys: {other:?}"),
        };
        let shapes = [(1, 1, 1), (3, 5, 7), (2, 300, 41), (40, 9, 300), (130, 70, 3), (16, 128, 64), (8, 32, 64)];
        for ((n, d, m), net) in shapes.into_iter().flat_map(|s| NETWORKS.map(|net| (s, net))) {
            let shape = MatShape { n, d, m };
            packs.insert(tiling_for(&params, shape, &net, threads, 64).pack);
            sc.set_network(net);
            let x: Vec<u64> = (0..n * d).map(|_| rng.random()).collect();
            let w = weights(&mut rng, d * m);
            let (xs, xc) = common::share_rows(&x, (n, d), 0, &mut rng);
            let weights = Weights::bounded((d, m), &w, 20).unwrap();
            let (yc, ys) = tokio::join!(linear(&mut sc, shape, &xc, None), linear(&mut ss, shape, &xs, Some(weights)));
            let y = common::open_rows(&yc.unwrap(), &ys.unwrap());
            assert_eq!(
                y,
                shape.plain_product(&x, &w),
                "{shape} on {}: {:?}",
                net.name,
                tiling_for(&params, shape, &net, threads, 64)
            );
        }
        assert!(packs.contains(&0) && packs.len() >= 4, "packing levels exercised: {packs:?}");
        // the session's flooding account: every returned coefficient within 2^-40 + 2^-64
        let returned: usize = shapes.iter().map(|&(n, _, m)| n * m * NETWORKS.len()).sum();
        let distance = server_keys(&ss).statistical_distance();
        assert!(distance > 0.0 && distance <= returned as f64 * (2f64.powi(-40) + 2f64.powi(-64)), "{distance:e}");
    });
}

/// Results asked for in a narrower ring Z_2^b (`linear_in`) are the product mod 2^b exactly,
/// packed or not, and leave the server in fewer bytes than the same product over Z_2^64.
#[test]
fn linear_layers_in_a_narrow_ring_give_the_product_mod_2_b_in_fewer_bytes() {
    common::runtime().block_on(async {
        let params = HeParams::linear().unwrap();
        let (c, mut sc, _s, mut ss) = sessions(params.clone()).await;
        let mut rng = StdRng::seed_from_u64(12);
        let shape = MatShape { n: 16, d: 128, m: 64 };
        let x: Vec<u64> = (0..shape.n * shape.d).map(|_| rng.random()).collect();
        let w = weights(&mut rng, shape.d * shape.m);
        let (xs, xc) = common::share_rows(&x, (shape.n, shape.d), 0, &mut rng);
        let want = shape.plain_product(&x, &w);
        for net in NETWORKS {
            sc.set_network(net);
            let mut sent = Vec::new();
            for bits in [64, 44, 24] {
                let before = c.meter().report().total().bytes();
                let weights = Weights::bounded((shape.d, shape.m), &w, 20).unwrap();
                let (yc, ys) = tokio::join!(
                    linear_in(&mut sc, shape, &xc, None, bits),
                    linear_in(&mut ss, shape, &xs, Some(weights), bits)
                );
                let (yc, ys) = (yc.unwrap(), ys.unwrap());
                assert_eq!((yc.width(), ys.width()), (bits, bits));
                let mask = u64::MAX >> (64 - bits);
                let y: Vec<u64> =
                    yc.as_slice().iter().zip(ys.as_slice()).map(|(a, b)| a.wrapping_add(*b) & mask).collect();
                assert_eq!(
                    y,
                    want.iter().map(|v| v & mask).collect::<Vec<_>>(),
                    "{shape} mod 2^{bits} on {}",
                    net.name
                );
                sent.push(c.meter().report().total().bytes() - before);
            }
            assert!(sent.windows(2).all(|w| w[1] < w[0]), "bytes for 64, 44, 24 bits on {}: {sent:?}", net.name);
        }
    });
}

#[test]
fn products_of_two_shared_matrices_are_exact() {
    common::runtime().block_on(async {
        let mut rng = StdRng::seed_from_u64(3);
        let shape = MatShape { n: 6, d: 16, m: 5 };
        let x: Vec<u64> = (0..shape.n * shape.d).map(|_| rng.random()).collect();
        let y: Vec<u64> = (0..shape.d * shape.m).map(|_| rng.random()).collect();
        let (xs, xc) = common::share_rows(&x, (shape.n, shape.d), 0, &mut rng);
        let (ys, yc) = common::share_rows(&y, (shape.d, shape.m), 0, &mut rng);
        let want = shape.plain_product(&x, &y);
        // over Z_2^64, and over narrower rings (the shares read mod 2^ℓ): exact mod 2^ℓ, and each
        // bit less is a bit more of flooding margin, so the server books a smaller distance
        let mut distances = Vec::new();
        for bits in [64, 50, 30] {
            let (_c, mut sc, _s, mut ss) = sessions(HeParams::n8192().unwrap()).await;
            let [xc, yc, xs, ys] = [&xc, &yc, &xs, &ys].map(|s| s.clone().narrowed(bits).unwrap());
            let (zc, zs) =
                tokio::join!(matmul_shared(&mut sc, shape, &xc, &yc), matmul_shared(&mut ss, shape, &xs, &ys));
            let (zc, zs) = (zc.unwrap(), zs.unwrap());
            assert_eq!((zc.width(), zs.width()), (bits, bits));
            let mask = u64::MAX >> (64 - bits);
            let z: Vec<u64> = common::open_rows(&zc, &zs).iter().map(|v| v & mask).collect();
            assert_eq!(z, want.iter().map(|v| v & mask).collect::<Vec<_>>(), "mod 2^{bits}");
            assert!(sc.exposure().is_none(), "the client books nothing");
            distances.push(ss.exposure().unwrap().distance());
            // shares of two rings do not multiply
            if bits < 64 {
                let (xc, xs) = (xc.narrowed(bits - 1).unwrap(), xs.narrowed(bits - 1).unwrap());
                let (rc, rs) =
                    tokio::join!(matmul_shared(&mut sc, shape, &xc, &yc), matmul_shared(&mut ss, shape, &xs, &ys));
                let ring = format!("over Z_2^{}", bits - 1);
                assert!(rc.unwrap_err().to_string().contains(&ring));
                assert!(rs.unwrap_err().to_string().contains(&ring));
            }
        }
        assert!(distances.windows(2).all(|d| d[1] < d[0] / 1000.0), "distances for 64, 50, 30 bits: {distances:?}");
    });
}

#[test]
fn mismatched_shapes_and_oversized_weights_are_refused_by_name() {
    common::runtime().block_on(async {
        let (_c, mut sc, _s, mut ss) = sessions(HeParams::linear().unwrap()).await;
        let x = Shares::matrix((4, 3), vec![1; 4 * 3], 0).unwrap();
        let other = Shares::matrix((4, 4), vec![0; 16], 0).unwrap();
        // the client thinks d = 3, the server d = 4
        let zeros = Weights::bounded((4, 2), &[0; 8], 20).unwrap();
        let (rc, rs) = tokio::join!(
            linear(&mut sc, MatShape { n: 4, d: 3, m: 2 }, &x, None),
            linear(&mut ss, MatShape { n: 4, d: 4, m: 2 }, &other, Some(zeros))
        );
        let (ec, es) = (rc.unwrap_err().to_string(), rs.unwrap_err().to_string());
        assert!(ec.contains("refused") && ec.contains("4×3 · 3×2"), "{ec}");
        assert!(es.contains("server expects 4×4 · 4×2"), "{es}");
        // a weight beyond the declared bound
        let shape = MatShape { n: 4, d: 3, m: 2 };
        let mut w = vec![5u64; 6];
        w[4] = (-(1i64 << 21)) as u64;
        let (rc, rs) = tokio::join!(
            linear(&mut sc, shape, &x, None),
            linear(&mut ss, shape, &x, Some(Weights::bounded((3, 2), &w, 20).unwrap()))
        );
        // the client learns that a weight is out of bounds, not which one nor its value
        let refusal = match rc {
            Err(ProtoError::Refused(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(refusal.contains("exceeds the declared bound 2^20"), "{refusal}");
        assert!(!refusal.contains('4') && !refusal.contains("2097152"), "{refusal}");
        assert!(rs.unwrap_err().to_string().contains("exceeds the declared bound"));
        // and the session still works afterwards
        let w = vec![3u64; 6];
        let (yc, ys) = tokio::join!(
            linear(&mut sc, shape, &x, None),
            linear(&mut ss, shape, &x, Some(Weights::bounded((3, 2), &w, 20).unwrap()))
        );
        assert_eq!(common::open_rows(&yc.unwrap(), &ys.unwrap()), vec![18; 8]);
        // weights of the right size but the wrong shape (2×3 for a 3×2 product): the server
        // names both shapes, the client is told before any ciphertext moves
        let (rc, rs) = tokio::join!(
            linear(&mut sc, shape, &x, None),
            linear(&mut ss, shape, &x, Some(Weights::bounded((2, 3), &w, 20).unwrap()))
        );
        let es = rs.unwrap_err().to_string();
        assert!(es.contains("weights of 2×3") && es.contains("needs 3×2"), "{es}");
        assert!(matches!(rc, Err(ProtoError::Refused(_))), "{rc:?}");
        // shares whose shape is not the announced one are this party's input error
        let err = linear(&mut sc, shape, &other, None).await.unwrap_err().to_string();
        assert!(err.contains("4×3") && err.contains("4×4"), "{err}");
    });
}

#[test]
fn a_bad_tiling_or_a_truncated_ciphertext_is_an_error_naming_it() {
    common::runtime().block_on(async {
        let (mut c, _hc, mut s, hs) = raw_keys(HeParams::linear().unwrap()).await;
        let mut rng = StdRng::seed_from_u64(5);
        let shape = MatShape { n: 1, d: 1, m: 1 };
        let client = async {
            let ch = c.channel();
            // a tiling that does not fit the ring is refused before any ciphertext moves
            ch.send_u64s(&[1, 1, 1, 1, 1 << 40, 1, 0, 0, 64]).await.unwrap();
            let refusal = ch.recv().await.unwrap();
            assert_eq!(refusal[0], 1);
            // so is a degenerate one: 1×1×1 tiles for a product that fills 512 coefficients
            ch.send_u64s(&[8, 8, 8, 1, 1, 1, 0, 0, 64]).await.unwrap();
            assert_eq!(ch.recv().await.unwrap()[0], 1);
            // and inputs that would drop more of c0 than a ciphertext can lose
            ch.send_u64s(&[1, 1, 1, 1, 1, 1, 0, 99, 64]).await.unwrap();
            assert_eq!(ch.recv().await.unwrap()[0], 1);
            // and results in another ring than the server's
            ch.send_u64s(&[1, 1, 1, 1, 1, 1, 0, 0, 32]).await.unwrap();
            assert_eq!(ch.recv().await.unwrap()[0], 1);
            // a server asked (by its own caller) for a ring that no share lives in refuses
            // even a client that asks for the same
            ch.send_u64s(&[1, 1, 1, 1, 1, 1, 0, 0, 65]).await.unwrap();
            assert_eq!(ch.recv().await.unwrap()[0], 1);
            ch.send_u64s(&[1, 1, 1, 1, 1, 1, 0, 0, 64]).await.unwrap();
            assert_eq!(ch.recv().await.unwrap(), [0]);
            ch.send(&[0u8; 100]).await.unwrap();
        };
        let server = async {
            let e = hs
                .product(s.channel(), (shape, 64), Weights::bounded((1, 1), &[1], 20).unwrap(), None, &mut rng)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("tiling") && e.contains("does not fit"), "{e}");
            let narrow = MatShape { n: 8, d: 8, m: 8 };
            let e = hs
                .product(s.channel(), (narrow, 64), Weights::bounded((8, 8), &[1; 64], 20).unwrap(), None, &mut rng)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("less than half"), "{e}");
            let e = hs
                .product(s.channel(), (shape, 64), Weights::bounded((1, 1), &[1], 20).unwrap(), None, &mut rng)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("drop 99 bits"), "{e}");
            let e = hs
                .product(s.channel(), (shape, 64), Weights::bounded((1, 1), &[1], 20).unwrap(), None, &mut rng)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("mod 2^32") && e.contains("mod 2^64"), "{e}");
            let e = hs
                .product(s.channel(), (shape, 65), Weights::bounded((1, 1), &[1], 20).unwrap(), None, &mut rng)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("not mod 2^65"), "{e}");
            hs.product(s.channel(), (shape, 64), Weights::bounded((1, 1), &[1], 20).unwrap(), None, &mut rng).await
        };
        let (_, rs) = tokio::join!(client, server);
        let e = rs.unwrap_err().to_string();
        assert!(e.contains("input ciphertext") && e.contains("100 bytes"), "{e}");
    });
}
