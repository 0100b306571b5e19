//! The MoE layer: outputs against the plaintext layer of the same fixed-point arithmetic for
//! every router family and expert kind, from 1 to 256 experts and top-1 to top-8, by the
//! default method and by Select-Then-Compute; the
//! baseline and the selected-weights methods against selecting rows; errors on both parties before anything moves; the
//! server's view independent of the routing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::he::HeParams;
use secmoe::moe::{
    ExpertKind, GroupLimit, Method, MoeConfig, MoeError, MoeOutput, MoeResult, MoeWeights, Routing, SharedExpert,
    moe_layer, reference,
};
use secmoe::net::Frame;
use secmoe::proto::HeUse;
use secmoe::proto::linear::KeySet;
use secmoe::ring::FixedPoint;

/// Largest error allowed against the plaintext layer, in real terms, for outputs of size ≲ 0.5
/// (measured: ≤ 1.2e-3): the gate softmax's relative error (exp pieces 5.2e-4 and the
/// reciprocal), the activations' protocol error and a few truncation units, with room. A token
/// routed to another expert moves its output by ~0.1.
const BOUND: f64 = 2e-3;

fn config(experts: usize, top_k: usize, routing: Routing, expert: ExpertKind) -> MoeConfig {
    MoeConfig {
        experts,
        top_k,
        d_model: 16,
        d_ff: 32,
        routing,
        expert,
        shared: None,
        expert_capacity: None,
        groups: None,
        expert_bias: false,
    }
}

fn tokens(n: usize, d: usize, seed: u64) -> Vec<u64> {
    let f = FixedPoint::default();
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n * d).map(|_| f.encode(rng.random_range(-1.0..1.0)).unwrap()).collect()
}

/// What one run of the layer gives: each party's result, the frames the server received.
struct Run {
    client: MoeResult<MoeOutput>,
    server: MoeResult<MoeOutput>,
    server_received: Vec<Frame>,
    client_received: Vec<Frame>,
}

/// Both parties run the layer on x shared between them (the client's config `ccfg`, the
/// server's `scfg`).
fn run(ccfg: &MoeConfig, scfg: &MoeConfig, method: Method, x: &[u64], w: &MoeWeights) -> Run {
    run_keyed(ccfg, scfg, method, x, w, matches!(method, Method::Capacity { .. }))
}

/// [`run`] with the keys for products of two shared matrices set up or not.
fn run_keyed(ccfg: &MoeConfig, scfg: &MoeConfig, method: Method, x: &[u64], w: &MoeWeights, shared: bool) -> Run {
    common::runtime().block_on(async {
        let (c, mut sc, s, mut ss) = common::session_pair().await;
        let p = HeParams::linear().unwrap();
        let (a, b) = tokio::join!(sc.setup_he(p.clone(), KeySet::Linear), ss.setup_he(p, KeySet::Linear));
        a.unwrap();
        b.unwrap();
        if shared {
            // the dispatch matrix times the shared rows: products of two shared matrices
            let p = HeParams::n8192().unwrap();
            let (a, b) = tokio::join!(
                sc.setup_he_for(HeUse::Shared, p.clone(), KeySet::Linear),
                ss.setup_he_for(HeUse::Shared, p, KeySet::Linear)
            );
            a.unwrap();
            b.unwrap();
        }
        if let Some(keys) = method.selection_keys() {
            let p = HeParams::select().unwrap();
            let (a, b) =
                tokio::join!(sc.setup_he_for(HeUse::Select, p.clone(), keys), ss.setup_he_for(HeUse::Select, p, keys));
            a.unwrap();
            b.unwrap();
        }
        let mut rng = StdRng::seed_from_u64(5);
        let d = ccfg.d_model;
        let (xs, xc) = common::share_rows(x, (x.len() / d, d), FixedPoint::default().frac_bits(), &mut rng);
        ss.channel().record_frames();
        sc.channel().record_frames();
        let (client, server) =
            tokio::join!(moe_layer(&mut sc, ccfg, method, &xc, None), moe_layer(&mut ss, scfg, method, &xs, Some(w)));
        let server_received = ss.channel().take_frames().into_iter().filter(|f| !f.sent).collect();
        let client_received = sc.channel().take_frames().into_iter().filter(|f| !f.sent).collect();
        drop((c, s));
        Run { client, server, server_received, client_received }
    })
}

/// Runs `cfg` on n tokens and checks the output against the plaintext layer within [`BOUND`].
fn check(cfg: MoeConfig, method: Method, n: usize, seed: u64) -> Vec<f64> {
    let f = FixedPoint::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let w = MoeWeights::random(&cfg, f, 4.0, &mut rng);
    let x = tokens(n, cfg.d_model, seed + 1);
    let want = reference(&cfg, f, &x, &w, method.capacity(&cfg, n)).unwrap();
    let r = run(&cfg, &cfg, method, &x, &w);
    let (client, server) = (r.client.unwrap(), r.server.unwrap());
    assert_eq!(server.dropped, None, "the server learns nothing of the drops");
    assert_eq!(client.dropped, method.capacity(&cfg, n).map(|_| want.dropped), "dropped assignments");
    let got = f.decode_slice(&common::open_rows(&client.y, &server.y));
    let want = want.y;
    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    let size = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
    eprintln!("{cfg} {}: error {worst:.2e}, largest output {size:.3}", method.name());
    assert!(worst <= BOUND, "{cfg} {}: error {worst:.2e} > {BOUND:.0e}", method.name());
    got
}

/// Runs `cfg` on the given tokens and weights and checks the output against the plaintext
/// layer within [`BOUND`] scaled by the outputs' size where they exceed ½ (the gates' relative
/// error scales with them). Returns the largest output.
fn check_scaled(cfg: &MoeConfig, method: Method, x: &[u64], w: &MoeWeights) -> f64 {
    let f = FixedPoint::default();
    let n = x.len() / cfg.d_model;
    let want = reference(cfg, f, x, w, method.capacity(cfg, n)).unwrap();
    let r = run(cfg, cfg, method, x, w);
    let got = f.decode_slice(&common::open_rows(&r.client.unwrap().y, &r.server.unwrap().y));
    let worst = got.iter().zip(&want.y).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    let size = want.y.iter().map(|v| v.abs()).fold(0.5, f64::max);
    eprintln!("{cfg} {}: error {worst:.2e}, largest output {size:.2}", method.name());
    assert!(worst <= BOUND * size / 0.5, "{cfg} {}: error {worst:.2e}", method.name());
    size
}

/// The default method and the one whose bytes stay flat in E, each checked by [`check`].
fn check_both(cfg: MoeConfig, n: usize, seed: u64) {
    for method in [Method::SelectRows, Method::SelectThenCompute] {
        check(cfg, method, n, seed);
    }
}

#[test]
fn one_expert_top_1_gelu() {
    check_both(config(1, 1, Routing::TopKSoftmax, ExpertKind::Gelu), 3, 10);
}

#[test]
fn switch_routing_two_relu_experts() {
    check_both(config(2, 1, Routing::Switch, ExpertKind::Relu), 4, 20);
}

#[test]
fn mixtral_top_2_of_8_swiglu_with_a_sigmoid_gated_shared_expert() {
    let cfg = MoeConfig {
        shared: Some(SharedExpert { d_ff: 24, sigmoid_gate: true }),
        ..config(8, 2, Routing::TopKSoftmax, ExpertKind::SwiGlu)
    };
    check_both(cfg, 4, 30);
}

#[test]
fn olmoe_top_8_of_8_geglu_without_renormalization() {
    check_both(config(8, 8, Routing::SoftmaxTopK { normalize: false }, ExpertKind::GeGlu), 2, 40);
}

#[test]
fn qwen_top_2_of_64_renormalized_with_a_plain_shared_expert() {
    let cfg = MoeConfig {
        shared: Some(SharedExpert { d_ff: 16, sigmoid_gate: false }),
        ..config(64, 2, Routing::SoftmaxTopK { normalize: true }, ExpertKind::Gelu)
    };
    check_both(cfg, 3, 50);
}

#[test]
fn top_1_of_256_swiglu() {
    check_both(config(256, 1, Routing::TopKSoftmax, ExpertKind::SwiGlu), 2, 60);
}

/// 8 tokens, 4 experts, top-2, factor 1: 4 slots per expert for 16 assignments, so any
/// imbalance overflows an expert; the dropped assignments are those of the plaintext layer.
#[test]
fn capacity_dispatch_drops_the_overflow_like_the_plaintext() {
    let f = FixedPoint::default();
    let cfg = config(4, 2, Routing::TopKSoftmax, ExpertKind::Gelu);
    let method = Method::Capacity { factor: 1.0 };
    let w = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(100));
    let want = reference(&cfg, f, &tokens(8, 16, 101), &w, method.capacity(&cfg, 8)).unwrap();
    assert!(want.dropped > 0, "the case must overflow an expert");
    check(cfg, method, 8, 100);
    let swiglu = MoeConfig {
        shared: Some(SharedExpert { d_ff: 16, sigmoid_gate: true }),
        ..config(8, 1, Routing::SoftmaxTopK { normalize: false }, ExpertKind::SwiGlu)
    };
    check(swiglu, Method::Capacity { factor: 2.0 }, 6, 110);
}

/// A model's own expert capacity (Switch's `expert_capacity`): 6 tokens on 2 experts that
/// take 2 each, so at least 2 are dropped, in every method as in the plaintext; also with a
/// unit gate (top-1 of the chosen logits), whose gate then becomes secret.
#[test]
fn a_models_expert_capacity_drops_the_overflow_in_every_method() {
    let f = FixedPoint::default();
    let switch = MoeConfig { expert_capacity: Some(2), ..config(2, 1, Routing::Switch, ExpertKind::Relu) };
    let w = MoeWeights::random(&switch, f, 4.0, &mut StdRng::seed_from_u64(120));
    let want = reference(&switch, f, &tokens(6, 16, 121), &w, None).unwrap();
    assert!(want.dropped >= 2, "the case must overflow an expert");
    for method in [Method::SelectRows, Method::Baseline, Method::Capacity { factor: 2.0 }] {
        check(switch, method, 6, 120);
    }
    let unit = MoeConfig { expert_capacity: Some(1), ..config(4, 1, Routing::TopKSoftmax, ExpertKind::Gelu) };
    check(unit, Method::SelectRows, 5, 130);
}

/// Narrow experts, several chosen: selecting rows applies W2 by experts (each hidden row gated
/// and scattered to its expert's input, one product of n rows: `moe::layer`'s rule picks it for
/// these shapes) — top-4 of 16 renormalized, top-1 with a unit gate, and Switch routing whose
/// capacity drops tokens (their gates zeroed before the scatter); each against the plaintext.
#[test]
fn narrow_experts_take_w2_by_experts() {
    let narrow =
        |experts, top_k, routing, expert| MoeConfig { d_model: 32, d_ff: 8, ..config(experts, top_k, routing, expert) };
    check(narrow(16, 4, Routing::SoftmaxTopK { normalize: true }, ExpertKind::SwiGlu), Method::SelectRows, 4, 150);
    check(narrow(4, 1, Routing::TopKSoftmax, ExpertKind::Gelu), Method::SelectRows, 3, 160);
    let switch = MoeConfig { expert_capacity: Some(1), ..narrow(4, 1, Routing::Switch, ExpertKind::Relu) };
    let f = FixedPoint::default();
    let w = MoeWeights::random(&switch, f, 4.0, &mut StdRng::seed_from_u64(170));
    assert!(reference(&switch, f, &tokens(5, 32, 171), &w, None).unwrap().dropped >= 1, "the case must drop");
    check(switch, Method::SelectRows, 5, 170);
}

#[test]
fn a_capacity_factor_below_one_is_refused_by_both() {
    let f = FixedPoint::default();
    let cfg = config(4, 1, Routing::TopKSoftmax, ExpertKind::Gelu);
    let w = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(7));
    let method = Method::Capacity { factor: 0.5 };
    let r = run(&cfg, &cfg, method, &tokens(4, 16, 8), &w);
    let (c, s) = both_fail(&r);
    assert!(c.contains("capacity factor 0.5") && s.contains("capacity factor 0.5"), "{c} / {s}");
}

/// Capacity dispatch multiplies the secret dispatch matrix by the shared rows: without keys for
/// products of two shared matrices both parties stop, naming them, before any share moves.
#[test]
fn capacity_dispatch_without_keys_for_shared_products_is_refused_by_both() {
    let f = FixedPoint::default();
    let cfg = config(4, 1, Routing::TopKSoftmax, ExpertKind::Gelu);
    let w = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(9));
    let r = run_keyed(&cfg, &cfg, Method::Capacity { factor: 1.0 }, &tokens(4, 16, 10), &w, false);
    let (c, s) = both_fail(&r);
    assert!(c.contains("HeUse::Shared") && s.contains("HeUse::Shared"), "{c} / {s}");
    assert!(r.server_received.len() <= 1, "only the statement may travel");
}

/// gpt-oss's experts: biases on every map (the public 1 on the inputs, the bias as each
/// matrix's last row), the clamped SwiGLU with some pre-activations driven past its ±7 clamp,
/// under a router with its own bias; every method against the plaintext layer, W2 by rows
/// (d_ff = 32) and by experts (d_ff = 8).
#[test]
fn biased_clamped_swiglu_experts_in_every_method() {
    let f = FixedPoint::default();
    for (d_ff, seed) in [(32, 600), (8, 610)] {
        let cfg =
            MoeConfig { d_ff, expert_bias: true, ..config(8, 4, Routing::TopKSoftmax, ExpertKind::ClampedSwiGlu) };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut w = MoeWeights::random(&cfg, f, 4.0, &mut rng);
        let bias_row = cfg.d_model * d_ff;
        for x in &mut w.experts {
            // the gate above its clamp, the up branch beyond it on both sides
            x.w1[bias_row] = f.encode(9.0).unwrap() as i64 as i32;
            let w3 = x.w3.as_mut().unwrap();
            w3[bias_row + 1] = f.encode(-9.5).unwrap() as i64 as i32;
            w3[bias_row + 2] = f.encode(8.0).unwrap() as i64 as i32;
        }
        w.logit_bias = Some((0..8).map(|i| f.encode(i as f64 / 4.0 - 1.0).unwrap() as i64 as i32).collect());
        let x = tokens(6, cfg.d_model, seed + 1);
        let methods = [
            Method::SelectRows,
            Method::SelectThenCompute,
            Method::Baseline,
            Method::Paper,
            Method::Capacity { factor: 2.0 },
        ];
        for method in methods {
            // outputs beyond BOUND's ½ (the clamped hidden values reach 7·8)
            check_scaled(&cfg, method, &x, &w);
        }
        // the biases matter: without them the layer is another
        let plain = MoeWeights { logit_bias: None, ..w.clone() };
        let (a, b) = (reference(&cfg, f, &x, &w, None).unwrap(), reference(&cfg, f, &x, &plain, None).unwrap());
        assert_ne!(a.chosen, b.chosen, "the router's bias changes a choice");
    }
}

/// Experts whose outputs reach beyond 2^12 (a checkpoint's massive activations come out of its
/// FFNs) are gated and summed in Z_2^64: top-2 by rows (W2 by rows), the capacity dispatch and
/// the baseline agree with the plaintext layer, relative to the outputs' size (≈ 2^15 here).
#[test]
fn outputs_beyond_two_to_the_twelve_are_gated_exactly() {
    let f = FixedPoint::default();
    let cfg = config(8, 2, Routing::TopKSoftmax, ExpertKind::SwiGlu);
    let mut rng = StdRng::seed_from_u64(700);
    let mut w = MoeWeights::random(&cfg, f, 4.0, &mut rng);
    // inputs of ones: the gate and the up branch near 48 (within their ranges), the hidden
    // values near SiLU(48)·48 ≈ 2300, each output a sum of 32 of them times ½
    let (three, half) = (f.encode(3.0).unwrap() as i64 as i32, f.encode(0.5).unwrap() as i64 as i32);
    for (i, x) in w.experts.iter_mut().enumerate() {
        let jitter = |j: usize| if (i + j).is_multiple_of(5) { three - (1 << 16) } else { three };
        x.w1.iter_mut().enumerate().for_each(|(j, v)| *v = jitter(j));
        x.w3.as_mut().unwrap().iter_mut().enumerate().for_each(|(j, v)| *v = jitter(j + 1));
        x.w2.iter_mut().for_each(|v| *v = half);
    }
    let x: Vec<u64> = (0..4 * cfg.d_model).map(|_| f.encode(1.0).unwrap()).collect();
    for method in [Method::SelectRows, Method::Baseline, Method::Capacity { factor: 2.0 }] {
        let size = check_scaled(&cfg, method, &x, &w);
        assert!(size > 8192.0, "the outputs reach {size}");
    }
}

#[test]
fn the_baseline_computes_the_same_layer() {
    let cfg = config(8, 2, Routing::TopKSoftmax, ExpertKind::Gelu);
    let rows = check(cfg, Method::SelectRows, 3, 70);
    let base = check(cfg, Method::Baseline, 3, 70);
    let worst = rows.iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= 2.0 * BOUND, "baseline and select-rows differ by {worst:.2e}");
}

/// Select-Then-Compute and the paper's Protocol 1 as written (expert weights selected under
/// HE, ciphertext×ciphertext products; the layout chooser's order, or the weights always
/// first) compute the layer too, with their products relinearized and packed or returned
/// unrelinearized (opened with s²): top-2 of 8 GeLU experts, and Switch routing over SwiGLU
/// experts.
#[test]
fn the_selected_weights_methods_compute_the_same_layer() {
    let cfg = config(8, 2, Routing::TopKSoftmax, ExpertKind::Gelu);
    let rows = check(cfg, Method::SelectRows, 3, 70);
    for method in [Method::SelectThenCompute, Method::Paper, Method::PaperTensored] {
        let selected = check(cfg, method, 3, 70);
        let worst = rows.iter().zip(&selected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 2.0 * BOUND, "{method} and select-rows differ by {worst:.2e}");
        check(config(3, 1, Routing::Switch, ExpertKind::SwiGlu), method, 2, 75);
    }
}

/// Experts 1 and 2 have the same router column, so their logits tie exactly for every token;
/// the lower index must win, as in the plaintext reference (and torch.topk).
#[test]
fn ties_go_to_the_lower_expert_index() {
    let f = FixedPoint::default();
    let cfg = config(4, 1, Routing::TopKSoftmax, ExpertKind::Gelu);
    let mut rng = StdRng::seed_from_u64(80);
    let mut w = MoeWeights::random(&cfg, f, 4.0, &mut rng);
    // expert 1 and 2 above the others for every token: their column is large and positive on
    // positive inputs
    let x: Vec<u64> = (0..3 * cfg.d_model).map(|_| f.encode(rng.random_range(0.1..1.0)).unwrap()).collect();
    for a in 0..cfg.d_model {
        for e in 0..cfg.experts {
            w.router[a * cfg.experts + e] = f.encode(if e == 1 || e == 2 { 0.5 } else { -0.5 }).unwrap() as i64 as i32;
        }
    }
    let want = reference(&cfg, f, &x, &w, None).unwrap();
    assert!(want.chosen.iter().all(|c| c == &[1]), "reference picks {:?}", want.chosen);
    let r = run(&cfg, &cfg, Method::SelectRows, &x, &w);
    let got = f.decode_slice(&common::open_rows(&r.client.unwrap().y, &r.server.unwrap().y));
    let worst = got.iter().zip(&want.y).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    assert!(worst <= BOUND, "error {worst:.2e}: the tie went another way");
}

/// The frames the server receives for two client inputs that route differently are the same
/// in number, order and length, for every method (and for selecting rows both ways of W2:
/// narrow experts take it by experts).
#[test]
fn the_servers_view_does_not_depend_on_the_routing() {
    let f = FixedPoint::default();
    let cfg = config(4, 2, Routing::TopKSoftmax, ExpertKind::Gelu);
    let narrow = MoeConfig { d_model: 32, d_ff: 8, ..cfg };
    let w = MoeWeights::random(&narrow, f, 4.0, &mut StdRng::seed_from_u64(95));
    let one = tokens(3, 32, 96);
    let other: Vec<u64> = one.iter().map(|v| v.wrapping_neg()).collect();
    assert_ne!(
        reference(&narrow, f, &one, &w, None).unwrap().chosen,
        reference(&narrow, f, &other, &w, None).unwrap().chosen
    );
    let (a, b) =
        (run(&narrow, &narrow, Method::SelectRows, &one, &w), run(&narrow, &narrow, Method::SelectRows, &other, &w));
    assert!(a.client.is_ok() && b.client.is_ok() && !a.server_received.is_empty());
    assert_eq!(a.server_received, b.server_received, "narrow experts: the server's view differs");
    let mut rng = StdRng::seed_from_u64(90);
    let w = MoeWeights::random(&cfg, f, 4.0, &mut rng);
    let one = tokens(3, cfg.d_model, 91);
    let other: Vec<u64> = one.iter().map(|v| v.wrapping_neg()).collect();
    let routes_one = reference(&cfg, f, &one, &w, None).unwrap().chosen;
    let routes_other = reference(&cfg, f, &other, &w, None).unwrap().chosen;
    assert_ne!(routes_one, routes_other, "the two inputs must route differently");
    for method in [
        Method::SelectThenCompute,
        Method::SelectRows,
        Method::Capacity { factor: 1.0 },
        Method::Baseline,
        Method::Paper,
        Method::PaperTensored,
    ] {
        let a = run(&cfg, &cfg, method, &one, &w);
        let b = run(&cfg, &cfg, method, &other, &w);
        assert!(a.client.is_ok() && b.client.is_ok(), "{method}");
        assert!(!a.server_received.is_empty());
        assert_eq!(a.server_received, b.server_received, "{method}: the server's view differs");
    }
}

/// The frames the client receives do not depend on the server's weights either (two weight
/// sets of the same shapes, the same tokens; narrow experts, whose W2 goes by experts, too).
#[test]
fn the_clients_view_does_not_depend_on_the_weights() {
    let f = FixedPoint::default();
    let cfg = config(4, 2, Routing::SoftmaxTopK { normalize: false }, ExpertKind::SwiGlu);
    let narrow = MoeConfig { d_model: 32, d_ff: 8, ..cfg };
    let x = tokens(3, 32, 125);
    let one = MoeWeights::random(&narrow, f, 4.0, &mut StdRng::seed_from_u64(126));
    let other = MoeWeights::random(&narrow, f, 4.0, &mut StdRng::seed_from_u64(127));
    let (a, b) =
        (run(&narrow, &narrow, Method::SelectRows, &x, &one), run(&narrow, &narrow, Method::SelectRows, &x, &other));
    assert!(a.server.is_ok() && b.server.is_ok() && !a.client_received.is_empty());
    assert_eq!(a.client_received, b.client_received, "narrow experts: the client's view differs");
    let x = tokens(3, cfg.d_model, 120);
    let one = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(121));
    let other = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(122));
    for method in [Method::SelectThenCompute, Method::SelectRows, Method::Paper, Method::PaperTensored] {
        let (a, b) = (run(&cfg, &cfg, method, &x, &one), run(&cfg, &cfg, method, &x, &other));
        assert!(a.server.is_ok() && b.server.is_ok(), "{method}");
        assert!(!a.client_received.is_empty());
        assert_eq!(a.client_received, b.client_received, "{method}: the client's view differs");
    }
}

/// Top-8 of 256 experts with a shared expert, and top-2 of 2 (every expert chosen).
#[test]
fn many_experts_and_every_expert() {
    let cfg = MoeConfig {
        shared: Some(SharedExpert { d_ff: 16, sigmoid_gate: false }),
        ..config(256, 8, Routing::TopKSoftmax, ExpertKind::Gelu)
    };
    check(cfg, Method::SelectRows, 2, 130);
    check(config(2, 2, Routing::SoftmaxTopK { normalize: false }, ExpertKind::Relu), Method::SelectRows, 3, 140);
}

/// The selected-weights methods take at most 1024 experts (one expansion per row): more is
/// refused by both parties before any ciphertext moves.
#[test]
fn selecting_weights_refuses_more_experts_than_one_expansion_holds() {
    let f = FixedPoint::default();
    let cfg = config(2048, 1, Routing::TopKSoftmax, ExpertKind::Relu);
    let w = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(3));
    let r = run(&cfg, &cfg, Method::Paper, &tokens(2, 16, 4), &w);
    let (c, s) = both_fail(&r);
    assert!(c.contains("at most 1024 experts") && s.contains("at most 1024 experts"), "{c} / {s}");
    assert!(r.server_received.len() <= 1, "only the statement may travel");
}

fn both_fail(r: &Run) -> (String, String) {
    match (&r.client, &r.server) {
        (Err(c), Err(s)) => (c.to_string(), s.to_string()),
        _ => panic!("both parties must fail: client {:?}, server {:?}", r.client.is_ok(), r.server.is_ok()),
    }
}

#[test]
fn a_top_k_above_the_expert_count_is_refused_by_both() {
    let f = FixedPoint::default();
    let good = config(4, 2, Routing::TopKSoftmax, ExpertKind::Gelu);
    let w = MoeWeights::random(&good, f, 4.0, &mut StdRng::seed_from_u64(1));
    let bad = MoeConfig { top_k: 5, ..good };
    let r = run(&bad, &bad, Method::SelectRows, &tokens(2, 16, 2), &w);
    let (c, s) = both_fail(&r);
    assert!(c.contains("top-5 of 4 experts") && s.contains("top-5 of 4 experts"), "{c} / {s}");
    assert!(r.server_received.len() <= 1, "only the statement may travel");
}

#[test]
fn a_misshapen_expert_matrix_is_named_to_both() {
    let f = FixedPoint::default();
    let cfg = config(4, 1, Routing::TopKSoftmax, ExpertKind::Gelu);
    let mut w = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(3));
    w.experts[3].w2.truncate(100);
    let r = run(&cfg, &cfg, Method::SelectRows, &tokens(2, 16, 4), &w);
    let (c, s) = both_fail(&r);
    assert!(s.contains("experts.3.w2") && c.contains("experts.3.w2"), "{c} / {s}");
    assert!(matches!(r.client, Err(MoeError::PeerRefused(_))));
}

#[test]
fn parties_with_different_layers_both_stop() {
    let f = FixedPoint::default();
    let cfg = config(4, 1, Routing::TopKSoftmax, ExpertKind::Gelu);
    let w = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(5));
    let other = MoeConfig { top_k: 2, ..cfg };
    let r = run(&other, &cfg, Method::SelectRows, &tokens(2, 16, 6), &w);
    both_fail(&r);
    assert!(matches!(r.client, Err(MoeError::Mismatch { .. })) && matches!(r.server, Err(MoeError::Mismatch { .. })));
}

/// Switch routing over 256 experts: the gate is a softmax over 256 logits (the wide reciprocal).
#[test]
fn switch_routing_over_256_experts() {
    check(config(256, 1, Routing::Switch, ExpertKind::Relu), Method::SelectRows, 2, 150);
}

/// DeepSeek-V3's routing (GLM-4.5, dots.llm1): σ scores, the top-k of score + bias, the chosen
/// scores as gates, renormalized or not, with an ungated shared expert; top-1 renormalized is
/// a unit gate. The bias is what chooses: without it the plaintext layer routes otherwise.
/// ERNIE-4.5's biased softmax routing likewise.
#[test]
fn sigmoid_routing_with_a_selection_bias() {
    let f = FixedPoint::default();
    let sigmoid = |normalize| Routing::SigmoidTopK { normalize };
    let cfg = MoeConfig {
        shared: Some(SharedExpert { d_ff: 16, sigmoid_gate: false }),
        ..config(16, 4, sigmoid(true), ExpertKind::SwiGlu)
    };
    let mut w = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(180));
    let x = tokens(4, 16, 181);
    let biased = reference(&cfg, f, &x, &w, None).unwrap().chosen;
    w.selection_bias = None;
    assert_ne!(biased, reference(&cfg, f, &x, &w, None).unwrap().chosen, "the bias must steer the choice");
    check_both(cfg, 4, 180);
    check(config(8, 2, sigmoid(false), ExpertKind::SwiGlu), Method::SelectRows, 3, 190);
    check(
        MoeConfig { d_model: 32, d_ff: 8, ..config(8, 1, sigmoid(true), ExpertKind::Gelu) },
        Method::SelectRows,
        3,
        200,
    );
    // ERNIE-4.5's: the softmax over all experts ranked with the bias, renormalized
    check_both(config(8, 3, Routing::BiasedSoftmaxTopK, ExpertKind::SwiGlu), 3, 230);
}

/// Group-limited routing (DeepSeek's): each token's experts come from its best groups — by the
/// sum of each group's two best σ + b (V3: top-4 of 16 in the best 2 of 4 groups), or by each
/// group's best logit (V2: top-3 of 8 in the best 2 of 4) — against the plaintext layer, with a
/// check that the groups change the choice; the server's view stays the same for tokens that
/// route differently.
#[test]
fn group_limited_routing_chooses_within_the_best_groups() {
    let f = FixedPoint::default();
    let v3 = MoeConfig {
        groups: Some(GroupLimit { groups: 4, chosen: 2 }),
        ..config(16, 4, Routing::SigmoidTopK { normalize: true }, ExpertKind::SwiGlu)
    };
    let v2 = MoeConfig {
        groups: Some(GroupLimit { groups: 4, chosen: 2 }),
        ..config(8, 3, Routing::SoftmaxTopK { normalize: false }, ExpertKind::SwiGlu)
    };
    for (cfg, seed) in [(v3, 240), (v2, 250)] {
        let w = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(seed));
        let x = tokens(6, 16, seed + 1);
        let limited = reference(&cfg, f, &x, &w, None).unwrap().chosen;
        let free = reference(&MoeConfig { groups: None, ..cfg }, f, &x, &w, None).unwrap().chosen;
        assert_ne!(limited, free, "{cfg}: the groups must change a choice");
        for experts in &limited {
            let mut groups: Vec<usize> = experts.iter().map(|e| e / (cfg.experts / 4)).collect();
            groups.sort();
            groups.dedup();
            assert!(groups.len() <= 2, "{cfg}: experts {experts:?} from more than two groups");
        }
        check(cfg, Method::SelectRows, 6, seed);
    }
    check(v3, Method::SelectThenCompute, 3, 260);
    let w = MoeWeights::random(&v3, f, 4.0, &mut StdRng::seed_from_u64(270));
    let one = tokens(3, 16, 271);
    let other: Vec<u64> = one.iter().map(|v| v.wrapping_neg()).collect();
    let (a, b) = (run(&v3, &v3, Method::SelectRows, &one, &w), run(&v3, &v3, Method::SelectRows, &other, &w));
    assert!(a.client.is_ok() && b.client.is_ok());
    assert_eq!(a.server_received, b.server_received, "the server's view differs");
}

/// Sigmoid routing keeps both views: the server's frames do not depend on the client's tokens
/// (two inputs that route differently), the client's not on the weights (two weight sets, the
/// selection bias among them).
#[test]
fn sigmoid_routing_views_depend_on_neither_secret() {
    let f = FixedPoint::default();
    let cfg = config(8, 2, Routing::SigmoidTopK { normalize: true }, ExpertKind::SwiGlu);
    let w = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(210));
    let one = tokens(3, 16, 211);
    let other: Vec<u64> = one.iter().map(|v| v.wrapping_neg()).collect();
    assert_ne!(
        reference(&cfg, f, &one, &w, None).unwrap().chosen,
        reference(&cfg, f, &other, &w, None).unwrap().chosen
    );
    let (a, b) = (run(&cfg, &cfg, Method::SelectRows, &one, &w), run(&cfg, &cfg, Method::SelectRows, &other, &w));
    assert!(a.client.is_ok() && b.client.is_ok() && !a.server_received.is_empty());
    assert_eq!(a.server_received, b.server_received, "the server's view differs");
    let w2 = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(212));
    let (a, b) = (run(&cfg, &cfg, Method::SelectRows, &one, &w), run(&cfg, &cfg, Method::SelectRows, &one, &w2));
    assert!(a.server.is_ok() && b.server.is_ok() && !a.client_received.is_empty());
    assert_eq!(a.client_received, b.client_received, "the client's view differs");
}

/// A selection bias is the server's own input: one outside ±64, or one for a routing without
/// a bias, is named to both parties before anything moves.
#[test]
fn a_bad_selection_bias_is_named_to_both() {
    let f = FixedPoint::default();
    let cfg = config(4, 2, Routing::SigmoidTopK { normalize: true }, ExpertKind::Gelu);
    let mut w = MoeWeights::random(&cfg, f, 4.0, &mut StdRng::seed_from_u64(220));
    w.selection_bias.as_mut().unwrap()[2] = f.encode(70.0).unwrap() as i64 as i32;
    let (c, s) = both_fail(&run(&cfg, &cfg, Method::SelectRows, &tokens(2, 16, 221), &w));
    assert!(c.contains("selection_bias[2]") && s.contains("selection_bias[2]"), "{c} / {s}");
    let softmax = config(4, 2, Routing::TopKSoftmax, ExpertKind::Gelu);
    w.selection_bias = Some(vec![0; 4]);
    let r = run(&softmax, &softmax, Method::SelectRows, &tokens(2, 16, 222), &w);
    let (c, s) = both_fail(&r);
    assert!(c.contains("selection_bias") && s.contains("no selection bias"), "{c} / {s}");
    assert!(r.server_received.len() <= 1, "only the statement may travel");
}
