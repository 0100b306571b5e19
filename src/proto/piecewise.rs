//! Piecewise-quadratic functions over shares (GeLU, SiLU; the starting points of e^x, 1/x and
//! 1/√x), by Select-Then-Compute (SecMoE, Protocol 2) and by the baseline that evaluates every
//! piece and multiplexes (BumbleBee); ReLU and SwiGLU's gate product.
//!
//! A [`Piecewise`] function has K pieces of width 2^w starting at `start`: a left tail (x below
//! `start`), K − 2 quadratics, a right tail. Piece i evaluates y = α_i·d² + β_i·x + γ_i with
//! d = x − mid_i, the distance from the piece's midpoint (|d| ≤ 2^(w−1), so d² is small and can
//! be computed at a reduced width); the tails are linear (0 and x for GeLU and SiLU).
//!
//! **Select-Then-Compute** ([`evaluate`]), for x in the session's fixed point (f fractional bits,
//! 18 by default, [`MIN_FRAC`]..=[`MAX_FRAC`]) with |x| bounded
//! (`Piecewise::input_range`, the precondition):
//! 1. Both parties shift x by a public constant so it is positive, reduce their shares mod
//!    2^(f+R+1) and truncate them locally to k = 8 fractional bits (H = ⌊G/2^t⌋ or one less:
//!    in a ring reduced this way the local truncation cannot fail).
//! 2. H splits into the piece number (high bits) and the position in the piece (low k+w bits);
//!    the carry between them comes from a chain of lookups ([`super::compare::carry`]).
//! 3. One lookup (1-of-2^(R+2−w) OT on the client's high bits and carry share) gives shares of
//!    the piece index i mod 2^⌈log2 K⌉: the one-hot selection vector in compact form.
//! 4. d² once, from the low bits and the carry: one cross term of k+w bits and two correlated
//!    OTs for the carry's terms.
//! 5. Selection and computation in one step: each party obtains, by a 1-of-2^⌈log2 K⌉ OT on its
//!    own index share, the other party's term θ_i·(d²_p, x_p, 1) masked by a fresh pad — the
//!    paper's masked selection of the coefficient row, fused with the products by that party's
//!    shares, so no product of two secrets is left. Rows of zero coefficients contribute nothing.
//!    The two terms are shares of the result Y mod 2^s with 34 fractional bits; each is truncated
//!    locally to f fractional bits *before* it is masked (⌊A/2^t⌋ + ⌊B/2^t⌋ is ⌊Y/2^t⌋ or one
//!    less, mod 2^(s−t)), so the tables carry s − t bits instead of s (t = 34 − f: 16 at f = 18).
//! 6. One extension back to Z_2^64 (the lift of [`super::arith::truncate`], by 0 bits).
//! 7. Only when the session saturates ([`OutOfRange::Saturate`]): steps 1–3 read the shifted
//!    value in f + [`SATURATION_REACH`] + 3 bits, and its far part F above the piece number is
//!    zero for accepted inputs, negative below, positive above. The step-3 lookup also hands
//!    out the carry into F; one two-lane carry chain over F's 26 − R bits
//!    ([`super::compare::signs`]) gives \[F < 0\] and \[F > 0\], and one multiplexer pair puts the
//!    tail on that side (β·x + γ, local) in place of the result.
//!
//! The random OTs of each batch are prepared in one go, both directions at once; about 35 per
//! value for GeLU (67 saturating), no AND gates.
//!
//! Error model (against [`Piecewise::reference`], the same fixed-point arithmetic computed in
//! the clear): H can be one unit lower than its floor, which moves d by 2^-k or, at a piece
//! boundary, picks the neighbouring piece at its edge; the local truncation of step 5 can be one
//! unit (2^-f) low. [`Piecewise::protocol_bound`] states the resulting bound. Outside the input
//! range the shifted value wraps and the result is wrong, unless the session saturates (step 7,
//! as far as |x| < 2^24): callers bound their activations. (At the range's ends H one unit low
//! can move a value between the last piece and the tail; both are the tail there.)
//!
//! **Baseline** ([`evaluate_baseline`]): K − 1 breakpoint comparisons ([`super::compare::at_least`]),
//! the one-hot vector by XOR of neighbours, x² by a full-width product, every piece's polynomial
//! locally, K multiplexers and one truncation.

use std::sync::LazyLock;

use super::Session;
use super::arith::{cross_receive, cross_send, masks, mul_rows_in, square, truncate_extend};
use super::boolean::Triples;
use super::compare::{
    at_least, at_least_ots, carry, carry_ots, mux, non_negative, signs, signs_ots, triples_per_comparison,
};
use super::session::OutOfRange;
use super::{ProtoError, ProtoResult, prefetch_carrying, prepare, prepare_carrying};
use crate::net::Party;
use crate::ot::OtKind;
use crate::ring::{Bits, DEFAULT_FRAC_BITS, FixedPoint, Shares, mask};

/// Fractional bits of x on input and y on output, unless a format says otherwise
/// ([`Piecewise::for_format`]): the range [`MIN_FRAC`, `MAX_FRAC`] leaves d its 8 bits and the
/// coefficients of x at least 8.
const FRAC: u32 = DEFAULT_FRAC_BITS;
/// Fewest fractional bits a piecewise function can be evaluated at.
pub const MIN_FRAC: u32 = D_BITS;
/// Most fractional bits a piecewise function can be evaluated at.
pub const MAX_FRAC: u32 = ACC_BITS - 8;
/// How far saturation reaches ([`OutOfRange::Saturate`]): inputs with |x| < 2^24 (real units)
/// outside a function's range give its tail on their side; beyond, the shifted value wraps.
/// Far beyond any activation the other protocols accept (LayerNorm's widest range is 2^14), it
/// keeps the far part's sign chain at 26 − R bits (20 for GeLU's R = 6) instead of two sign
/// tests at 64.
pub const SATURATION_REACH: u32 = 24;
/// Fractional bits of d (the in-piece offset) when it is squared.
const D_BITS: u32 = 8;
/// Fractional bits of the selected terms before their local truncation (module notes, step 5).
const ACC_BITS: u32 = 34;
/// Fractional bits of the expanded coefficients in the baseline.
const BASE_COEF_BITS: u32 = 24;

/// One piece: y = α·d² + β·x + γ with d = x − (the piece's midpoint).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Piece {
    /// Coefficient of d².
    pub alpha: f64,
    /// Coefficient of x.
    pub beta: f64,
    /// Constant term.
    pub gamma: f64,
}

impl Piece {
    const ZERO: Piece = Piece { alpha: 0.0, beta: 0.0, gamma: 0.0 };
    const IDENTITY: Piece = Piece { alpha: 0.0, beta: 1.0, gamma: 0.0 };

    /// Fixed-point coefficients (A, B, C) with y·2^ACC = A·D² + B·X + C for D = d·2^k, X = x·2^f.
    fn fixed(&self, frac: u32) -> (i64, i64, i64) {
        let q = |v: f64, bits: u32| (v * (1u64 << bits) as f64).round() as i64;
        (q(self.alpha, ACC_BITS - 2 * D_BITS), q(self.beta, ACC_BITS - frac), q(self.gamma, ACC_BITS))
    }
}

/// Where a function's accepted inputs lie: (0, 2^(R+1)) − lift, and a bound on its outputs.
#[derive(Debug, Clone, Copy)]
struct Window {
    range_bits: u32,
    /// Real shift (rounded down to a piece boundary).
    lift: f64,
    output_bits: u32,
}

impl Window {
    /// Inputs about (−2^R, 2^R), outputs below 2^(R+1) (GeLU, SiLU: |f(x)| ≤ |x|).
    fn centred(range_bits: u32) -> Window {
        let r = (1u64 << range_bits) as f64;
        Window { range_bits, lift: r + 1.0, output_bits: range_bits + 1 }
    }
}

/// A piecewise-quadratic approximation of an activation function.
#[derive(Debug, Clone)]
pub struct Piecewise {
    name: &'static str,
    exact: fn(f64) -> f64,
    /// Left end of the first quadratic piece (an integer).
    start: i64,
    /// log2 of the pieces' width (−1 for half-unit pieces).
    width_log2: i32,
    /// [left tail, quadratics…, right tail].
    pieces: Vec<Piece>,
    /// Inputs must satisfy 0 < x + lift < 2^(R+1) (see [`Piecewise::input_range`]).
    range_bits: u32,
    /// Fractional bits of inputs and outputs.
    frac: u32,
    /// The shift in real units asked for; `lift` is it rounded to a piece boundary.
    lift_real: f64,
    /// The public shift making accepted inputs positive, in units of 2^-frac; `start + lift` is
    /// a multiple of the piece width.
    lift: i64,
    /// |f(x)| < 2^output_bits on the accepted inputs.
    output_bits: u32,
}

/// GeLU(x) = x·Φ(x) in f64 (the erf form, as PyTorch's default), for references.
pub fn gelu_exact(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// SiLU(x) = x·σ(x) in f64, for references.
pub fn silu_exact(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// gpt-oss's `swiglu_limit`: its experts clamp the gate above and the linear branch both ways.
pub const SWIGLU_LIMIT: f64 = 7.0;
/// gpt-oss's `swiglu_alpha`, the gain of the gate's sigmoid.
pub const SWIGLU_ALPHA: f64 = 1.702;

/// gpt-oss's gate g·σ(α·g) with g = min(x, 7), α = 1.702, in f64, for references.
pub fn clamped_swish_exact(x: f64) -> f64 {
    let g = x.min(SWIGLU_LIMIT);
    g * sigmoid_exact(SWIGLU_ALPHA * g)
}

/// gpt-oss's linear branch clamp(x, ±7) + 1, in f64, for references.
pub fn clamped_up_exact(x: f64) -> f64 {
    x.clamp(-SWIGLU_LIMIT, SWIGLU_LIMIT) + 1.0
}

/// σ(x) = 1/(1 + e^-x) in f64, for references.
pub fn sigmoid_exact(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The error function for the f64 reference (std has none): its Maclaurin series below 2.5,
/// 1 − erfc by erfc's continued fraction above; |error| < 1e-14.
fn erf(x: f64) -> f64 {
    if x.abs() < 2.5 {
        // Maclaurin series
        let mut sum = x;
        let mut term = x;
        let x2 = x * x;
        for n in 1..80 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc by its continued fraction (Lentz)
        let z = x.abs();
        let mut f = z;
        let mut c = z;
        let mut d = 0.0;
        for n in 1..200 {
            let a = n as f64 / 2.0;
            d = z + a * d;
            d = 1.0 / d;
            c = z + a / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-z * z).exp() / (f * std::f64::consts::PI.sqrt());
        (1.0 - erfc).copysign(x)
    }
}

impl Piecewise {
    /// GeLU (erf form): 0 below −5, quadratics on [−5, −3), [−3, −1), [−1, 1), [1, 3), x from 3 on
    /// (the SecMoE paper's segments); |x| < 63.
    pub fn gelu() -> Piecewise {
        static FIT: LazyLock<Piecewise> = LazyLock::new(|| {
            Piecewise::fit("gelu", gelu_exact, -5, 1, 4, (Piece::ZERO, Piece::IDENTITY), Window::centred(6))
        });
        FIT.clone()
    }

    /// SiLU (x·σ(x)): 0 below −7, fourteen quadratics of width 1 on [−7, 7), x from 7 on
    /// (16 pieces, the most a 4-bit index selects); |x| < 63. Within [−7, 7) it is 1.4e-3
    /// from SiLU, and the tails' 6.4e-3 at ±7 fall off as x·e^-|x|. The paper's seven pieces
    /// of width 2 are five times farther (7.1e-3): in a SwiGLU model that is most of the
    /// logits' error (Qwen2-MoE's 2.4e-2 against 7e-3 now, `tests/model.rs`), for 22% fewer
    /// bits a value.
    pub fn silu() -> Piecewise {
        static FIT: LazyLock<Piecewise> = LazyLock::new(|| {
            Piecewise::fit("silu", silu_exact, -7, 0, 14, (Piece::ZERO, Piece::IDENTITY), Window::centred(6))
        });
        FIT.clone()
    }

    /// gpt-oss's gate g·σ(1.702·g), g = min(x, 7): 0 below −7 (−4.7e-5 there), 28
    /// quadratics of width ½ on [−7, 7) — the sigmoid's gain makes it twice as steep as SiLU,
    /// and its error, times an up branch of up to 8 in 24 layers of 4 experts each, is most of
    /// the model's — and its value at 7 from 7 on, where the clamp puts a kink on a piece
    /// boundary; |x| < 63 (saturating sessions: any x).
    pub fn clamped_swish() -> Piecewise {
        static FIT: LazyLock<Piecewise> = LazyLock::new(|| {
            let limit = SWIGLU_LIMIT as i64;
            let top = Piece { gamma: clamped_swish_exact(SWIGLU_LIMIT), ..Piece::ZERO };
            let pieces = 4 * limit as usize;
            Piecewise::fit(
                "clamped-swish",
                clamped_swish_exact,
                -limit,
                -1,
                pieces,
                (Piece::ZERO, top),
                Window::centred(6),
            )
        });
        FIT.clone()
    }

    /// gpt-oss's linear branch clamp(x, ±7) + 1: −6 below −7, x + 1 on seven pieces of width 2
    /// (exact: the fit of a line is the line), 8 from 7 on; |x| < 63 (saturating sessions: any x).
    pub fn clamped_up() -> Piecewise {
        static FIT: LazyLock<Piecewise> = LazyLock::new(|| {
            let limit = SWIGLU_LIMIT as i64;
            let (low, high) = (clamped_up_exact(-SWIGLU_LIMIT), clamped_up_exact(SWIGLU_LIMIT));
            let tails = (Piece { gamma: low, ..Piece::ZERO }, Piece { gamma: high, ..Piece::ZERO });
            Piecewise::fit("clamped-up", clamped_up_exact, -limit, 1, limit as usize, tails, Window::centred(6))
        });
        FIT.clone()
    }

    /// σ(x) = 1/(1 + e^-x), a router's expert score: 0 below −10 (σ(−10) = 4.5e-5), 40
    /// quadratics of width ½ on [−10, 10), 1 from 10 on; |x| < 63.
    pub fn sigmoid() -> Piecewise {
        static FIT: LazyLock<Piecewise> = LazyLock::new(|| {
            let one = Piece { gamma: 1.0, ..Piece::ZERO };
            let window = Window { range_bits: 6, lift: 65.0, output_bits: 1 };
            Piecewise::fit("sigmoid", sigmoid_exact, -10, -1, 40, (Piece::ZERO, one), window)
        });
        FIT.clone()
    }

    /// e^x for softmax after max-subtraction (x ≤ 0): 0 below −12 (e^-12 = 6e-6), 24 quadratics
    /// of width ½ on [−12, 0), 1 + x from 0 on (the max subtracted may sit a little below the true
    /// maximum); accepted inputs (−63.5, 0.5).
    pub fn exp() -> Piecewise {
        static FIT: LazyLock<Piecewise> = LazyLock::new(|| {
            let one_plus = Piece { alpha: 0.0, beta: 1.0, gamma: 1.0 };
            let window = Window { range_bits: 5, lift: 63.5, output_bits: 1 };
            Piecewise::fit("exp", f64::exp, -12, -1, 24, (Piece::ZERO, one_plus), window)
        });
        FIT.clone()
    }

    /// 1/x on [1, 128] (a softmax denominator over up to 128 values), as the starting point of
    /// Newton's iteration: 127 quadratics of width 1 on [1, 128), 1/128 from 128 on; accepted
    /// inputs (2^-7, 256).
    pub fn reciprocal() -> Piecewise {
        static FIT: LazyLock<Piecewise> = LazyLock::new(|| {
            let (left, right) = (Piece { gamma: 1.0, ..Piece::ZERO }, Piece { gamma: 1.0 / 128.0, ..Piece::ZERO });
            let window = Window { range_bits: 7, lift: 0.0, output_bits: 1 };
            Piecewise::fit("reciprocal", |x| 1.0 / x, 1, 0, 127, (left, right), window)
        });
        FIT.clone()
    }

    /// 1/√x on [1, 4) (a normalized variance), as the starting point of Newton's iteration:
    /// six quadratics of width ½, 1 below 1 and ½ from 4 on; accepted inputs (2^-7, 8).
    pub fn rsqrt() -> Piecewise {
        static FIT: LazyLock<Piecewise> = LazyLock::new(|| {
            let (left, right) = (Piece { gamma: 1.0, ..Piece::ZERO }, Piece { gamma: 0.5, ..Piece::ZERO });
            let window = Window { range_bits: 2, lift: 0.0, output_bits: 1 };
            Piecewise::fit("rsqrt", |x| 1.0 / x.sqrt(), 1, -1, 6, (left, right), window)
        });
        FIT.clone()
    }

    /// Least-squares fit of α·d² + β·x + γ on each quadratic piece (4096 points per piece,
    /// minimax-refined by iteratively reweighted least squares). The named constructors fit
    /// once per process and hand out clones.
    fn fit(
        name: &'static str,
        exact: fn(f64) -> f64,
        start: i64,
        width_log2: i32,
        quadratics: usize,
        (left, right): (Piece, Piece),
        window: Window,
    ) -> Piecewise {
        let width = 2f64.powi(width_log2);
        let mut pieces = vec![left];
        for q in 0..quadratics {
            let lo = start as f64 + q as f64 * width;
            let mid = lo + width / 2.0;
            pieces.push(fit_piece(exact, lo, width, mid));
        }
        pieces.push(right);
        debug_assert!(
            [left, right].iter().all(|p| p.alpha == 0.0 && (p.beta == 0.0 || p.beta == 1.0)),
            "tails are β·x + γ with β ∈ {{0, 1}} (saturation computes them locally)"
        );
        let f = Piecewise {
            name,
            exact,
            start,
            width_log2,
            pieces,
            range_bits: window.range_bits,
            frac: FRAC,
            lift_real: window.lift,
            lift: 0,
            output_bits: window.output_bits,
        };
        f.at_frac(FRAC)
    }

    /// The same function for shares with `frac` fractional bits (the shift is recomputed).
    fn at_frac(mut self, frac: u32) -> Piecewise {
        // shift by `lift_real` units, rounded down to a piece boundary offset from `start`
        let unit = 1i64 << (frac as i32 + self.width_log2);
        let lift_units = (self.lift_real * (1u64 << frac) as f64) as i64;
        self.lift = lift_units - (self.start * (1 << frac) + lift_units).rem_euclid(unit);
        self.frac = frac;
        self
    }

    /// The same function for shares in fixed-point format `format`: an error when its
    /// fractional bits are outside [`MIN_FRAC`, `MAX_FRAC`].
    pub fn for_format(&self, format: FixedPoint) -> ProtoResult<Piecewise> {
        let frac = format.frac_bits();
        if !(MIN_FRAC..=MAX_FRAC).contains(&frac) {
            return Err(ProtoError::Input(format!(
                "{} at {frac} fractional bits (piecewise functions take {MIN_FRAC}..={MAX_FRAC})",
                self.name
            )));
        }
        Ok(self.clone().at_frac(frac))
    }

    /// Fractional bits of the inputs and outputs.
    pub fn frac_bits(&self) -> u32 {
        self.frac
    }

    /// The function's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The K pieces: left tail, quadratics, right tail.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The exact function (f64).
    pub fn exact(&self, x: f64) -> f64 {
        (self.exact)(x)
    }

    /// The approximation in real arithmetic.
    pub fn approx(&self, x: f64) -> f64 {
        let i = self.piece_of(x);
        let p = self.pieces[i];
        p.alpha * (x - self.mid(i)).powi(2) + p.beta * x + p.gamma
    }

    /// Inputs the protocols accept: [lo, hi).
    pub fn input_range(&self) -> (f64, f64) {
        let lift = self.lift as f64 / (1u64 << self.frac) as f64;
        let r = (1u64 << self.range_bits) as f64;
        (-lift + 2f64.powi(-(D_BITS as i32) + 1), 2.0 * r - lift)
    }

    fn piece_of(&self, x: f64) -> usize {
        let j = ((x - self.start as f64) / 2f64.powi(self.width_log2)).floor();
        (j + 1.0).clamp(0.0, (self.pieces.len() - 1) as f64) as usize
    }

    fn mid(&self, i: usize) -> f64 {
        let width = 2f64.powi(self.width_log2);
        self.start as f64 + (i as f64 - 1.0) * width + width / 2.0
    }

    fn index_bits(&self) -> u32 {
        (self.pieces.len() as u32).next_power_of_two().trailing_zeros()
    }

    /// Bits of the ring the selected terms are summed in: |Y| < 2^(R+1+ACC) ≤ 2^(bits−2).
    fn sum_bits(&self) -> u32 {
        self.output_bits + ACC_BITS + 2
    }

    /// Piece index from the high part h = ⌊(x + lift)/2^w⌋.
    fn index_of_high(&self, high: u64) -> u64 {
        let base = ((self.start << self.frac) + self.lift) >> (self.frac as i32 + self.width_log2);
        (high as i64 - base + 1).clamp(0, self.pieces.len() as i64 - 1) as u64
    }

    /// The protocol's arithmetic in the clear, with exact floors: X = x·2^18 → y·2^18.
    pub fn reference(&self, x: u64) -> u64 {
        let l = self.layout(false);
        let g = x.wrapping_add(self.lift as u64) & mask(l.ring);
        let h = g >> l.shift;
        let (lo, hi) = (h & mask(l.lo), h >> l.lo);
        let i = self.index_of_high(hi) as usize;
        let d = lo as i64 - (1i64 << (l.lo - 1)) + 1;
        let (a, b, c) = self.pieces[i].fixed(self.frac);
        let y = a as i128 * (d * d) as i128 + b as i128 * (x as i64) as i128 + c as i128;
        (y >> (ACC_BITS - self.frac)) as i64 as u64
    }

    /// Random OTs one batch of `n` values takes, (server as sender, client as sender), generated
    /// in one go before the batch: the carry, the index lookup, one correlated OT for the carry's
    /// term in d² and the final extension on the server's side; the cross term of d² and the
    /// other carry term on the client's; one selection lookup each. Saturating: the far part's
    /// sign chain on the server's side, the tails' multiplexer pair on both.
    fn random_ots(&self, n: usize, saturate: bool) -> (usize, usize) {
        let l = self.layout(saturate);
        let b = self.index_bits() as usize;
        let stc = (carry_ots(l.lo) + 1 + l.hi as usize + 1 + b + 1, l.lo as usize + 1 + b);
        let tails = if saturate { (signs_ots(l.far) + 2, 2) } else { (0, 0) };
        ((stc.0 + tails.0) * n, (stc.1 + tails.1) * n)
    }

    /// Bits those random OTs carry per OT on average, counting the lookups' tables, the
    /// cross term's, c's and the tails' corrections (the carry's and the truncation's few bits
    /// left out: an underestimate, which only keeps the OT batches' calls larger).
    fn payload_bits(&self, saturate: bool) -> f64 {
        let l = self.layout(saturate);
        let (b, sum) = (self.index_bits(), self.sum_bits());
        let out_bits = sum - (ACC_BITS - self.frac);
        let index = (1u64 << (l.hi + 1)) * u64::from(b + saturate as u32);
        let terms = 2 * (1u64 << b) * u64::from(out_bits);
        let cross: u64 = (0..l.lo).map(|j| u64::from(sum - j)).sum();
        let tails = if saturate { 128 * u64::from(l.far).div_ceil(4) + 4 * 64 } else { 0 };
        let (send, receive) = self.random_ots(1, saturate);
        (index + terms + cross + 2 * u64::from(sum) + tails) as f64 / (send + receive) as f64
    }

    /// The same for the baseline: AND triples (two random OTs each, one per direction), the
    /// comparisons' lookups, the square, two truncations, K multiplexers (one OT each way).
    fn baseline_ots(&self, kind: OtKind, n: usize) -> (usize, usize) {
        let k = self.pieces.len();
        let bits = self.comparison_bits();
        let triples = n * (k - 1) * triples_per_comparison(kind, bits - 1);
        (triples + n * (at_least_ots(bits) + 64 + 2 + k), triples + n * k)
    }

    /// Width of the baseline's breakpoint comparisons: |x − c| < 2^(R+2) for accepted x and
    /// every breakpoint.
    fn comparison_bits(&self) -> u32 {
        self.frac + self.range_bits + 3
    }

    /// How the shifted value's bits are read (module notes, steps 1–3): accepted inputs fill
    /// f + R + 1 bits; a saturating evaluation reads f + [`SATURATION_REACH`] + 3, the far part
    /// above the piece number signed, with a bit to spare on each side for the truncation's −1.
    fn layout(&self, saturate: bool) -> Layout {
        let (shift, lo) = (self.frac - D_BITS, (D_BITS as i32 + self.width_log2) as u32);
        let hi = self.frac + self.range_bits + 1 - shift - lo;
        let far = if saturate { SATURATION_REACH + 2 - self.range_bits } else { 0 };
        Layout { ring: shift + lo + hi + far, shift, lo, hi, far }
    }

    /// Bound (in real units) on |protocol − reference| from the two one-unit truncation errors
    /// (module notes): one unit of D changes d² by at most (2^w + 2^-k)·2^-k, weighed by the
    /// largest |α|; a piece change at a boundary costs the largest jump between neighbouring
    /// pieces there plus their slopes' difference over the unit 2^-k the input may lie beyond
    /// it (a kink, as the clamp's at 7: slope 1 against 0); the local truncation of the
    /// selected terms 2^-f.
    pub fn protocol_bound(&self) -> f64 {
        let k = 2f64.powi(-(D_BITS as i32));
        let width = 2f64.powi(self.width_log2);
        let step = self.pieces.iter().map(|p| p.alpha.abs() * (width + k) * k).fold(0.0, f64::max);
        let jump = (1..self.pieces.len())
            .map(|i| {
                let b = self.start as f64 + (i as f64 - 1.0) * width;
                let (l, r) = (self.pieces[i - 1], self.pieces[i]);
                let at = |p: Piece, mid: f64| p.alpha * (b - mid).powi(2) + p.beta * b + p.gamma;
                let slope = |p: Piece, mid: f64| 2.0 * p.alpha * (b - mid) + p.beta;
                let (ml, mr) = (self.mid(i - 1), self.mid(i));
                (at(l, ml) - at(r, mr)).abs() + (slope(l, ml) - slope(r, mr)).abs() * k
            })
            .fold(0.0, f64::max);
        2.0 * step + jump + 2.0 * 2f64.powi(-(self.frac as i32))
    }
}

/// Least-squares fit of α·(x−mid)² + β·x + γ to `exact` on [lo, lo + width), refined towards the
/// minimax fit by reweighting (Lawson's algorithm).
fn fit_piece(exact: fn(f64) -> f64, lo: f64, width: f64, mid: f64) -> Piece {
    const POINTS: usize = 4096;
    let xs: Vec<f64> = (0..POINTS).map(|j| lo + width * (j as f64 + 0.5) / POINTS as f64).collect();
    let ys: Vec<f64> = xs.iter().map(|&x| exact(x)).collect();
    let mut weights = vec![1.0 / POINTS as f64; POINTS];
    let mut best = Piece::ZERO;
    for _ in 0..60 {
        let mut m = [[0.0f64; 3]; 3];
        let mut v = [0.0f64; 3];
        for ((&x, &y), &w) in xs.iter().zip(&ys).zip(&weights) {
            let basis = [(x - mid).powi(2), x, 1.0];
            for r in 0..3 {
                for c in 0..3 {
                    m[r][c] += w * basis[r] * basis[c];
                }
                v[r] += w * basis[r] * y;
            }
        }
        let [alpha, beta, gamma] = solve3(m, v);
        best = Piece { alpha, beta, gamma };
        let errs: Vec<f64> =
            xs.iter().zip(&ys).map(|(&x, &y)| (alpha * (x - mid).powi(2) + beta * x + gamma - y).abs()).collect();
        let total: f64 = weights.iter().zip(&errs).map(|(w, e)| w * e).sum();
        if total == 0.0 {
            break;
        }
        for (w, e) in weights.iter_mut().zip(&errs) {
            *w *= e / total;
        }
    }
    best
}

/// The bits of the shifted value G = x + lift mod 2^ring, from the bottom: `shift` dropped by the
/// local truncation, `lo` of the position in the piece, `hi` of the piece number, and under
/// saturation `far`, zero for accepted inputs and otherwise negative below and positive above.
#[derive(Debug, Clone, Copy)]
struct Layout {
    ring: u32,
    shift: u32,
    lo: u32,
    hi: u32,
    far: u32,
}

/// Solves a 3×3 linear system by Cramer's rule.
fn solve3(m: [[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    let det = |a: [[f64; 3]; 3]| {
        a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
    };
    let d = det(m);
    let mut out = [0.0; 3];
    for (col, o) in out.iter_mut().enumerate() {
        let mut a = m;
        for r in 0..3 {
            a[r][col] = v[r];
        }
        *o = det(a) / d;
    }
    out
}

/// Values evaluated per batch: bounds the memory of the lookup tables and OT keys (about 2 KB
/// per value in flight); each batch adds its rounds.
pub const BATCH: usize = 1 << 16;

/// Select-Then-Compute evaluation of `f` on shared fixed-point values (module notes): returns
/// this party's shares of f(x). Inputs must lie in `f.input_range()`, unless the session
/// saturates ([`OutOfRange::Saturate`]): then inputs beyond it give the value of the tail on
/// their side (for GeLU: 0 below the range, x above).
#[tracing::instrument(level = "debug", skip_all, fields(f = f.name, n = x.len()))]
pub async fn evaluate(sess: &mut Session, f: &Piecewise, x: &Shares) -> ProtoResult<Shares> {
    sess.check_format(x, f.name)?;
    let y = evaluate_values(sess, f, x.as_slice()).await?;
    Ok(x.with_values(y)?)
}

pub(crate) async fn evaluate_values(sess: &mut Session, f: &Piecewise, shares: &[u64]) -> ProtoResult<Vec<u64>> {
    evaluate_in(sess, f, shares, sess.out_of_range()).await
}

/// [`evaluate_values`] with the out-of-range rule given: the steps whose inputs lie in range by
/// construction (a Newton start on a normalized value) pay no saturation.
pub(crate) async fn evaluate_in(
    sess: &mut Session,
    f: &Piecewise,
    shares: &[u64],
    range: OutOfRange,
) -> ProtoResult<Vec<u64>> {
    let f = &f.for_format(sess.format())?;
    let saturate = range == OutOfRange::Saturate;
    let mut out = Vec::with_capacity(shares.len());
    let batches: Vec<&[u64]> = shares.chunks(BATCH).collect();
    for (i, batch) in batches.iter().enumerate() {
        // the next batch's random OTs generate while this one runs
        let next = batches.get(i + 1).map(|b| b.len());
        out.extend(evaluate_batch(sess, f, batch, next, saturate).await?);
    }
    Ok(out)
}

/// One batch; with `next`, the random OTs of a next batch of that many values are started in
/// the background once this batch's are in the pool. With `saturate`, results at inputs
/// outside the range are replaced by the tail on their side (module notes, step 7).
async fn evaluate_batch(
    sess: &mut Session,
    f: &Piecewise,
    shares: &[u64],
    next: Option<usize>,
    saturate: bool,
) -> ProtoResult<Vec<u64>> {
    let server = sess.party() == Party::Server;
    let n = shares.len();
    let payload = Some(f.payload_bits(saturate));
    prepare_carrying(sess, f.random_ots(n, saturate), payload).await?;
    if let Some(next) = next {
        prefetch_carrying(sess, f.random_ots(next, saturate), payload).await?;
    }
    let layout = f.layout(saturate);
    let (lo_bits, hi_bits) = (layout.lo, layout.hi);
    let sum = f.sum_bits();
    // 1–2: shift, reduce, truncate locally; split into the in-piece position, the piece
    // number and (saturating) the far part
    let lifted = f.lift as u64;
    let h: Vec<u64> = shares
        .iter()
        .map(|&x| (if server { x.wrapping_add(lifted) } else { x } & mask(layout.ring)) >> layout.shift)
        .collect();
    let lo: Vec<u64> = h.iter().map(|v| v & mask(lo_bits)).collect();
    let hi: Vec<u64> = h.iter().map(|v| (v >> lo_bits) & mask(hi_bits)).collect();
    let c = carry(sess, &lo, lo_bits).await?.to_bools();

    // 4: D = P + Q − 2^(k+w)·c with P = lo_s + e, e = 1 − 2^(k+w−1) (server), Q = lo_c (client);
    // D² = P² + Q² + 2PQ + c·(2^(2k+2w) − 2^(k+w+1)·P) − 2^(k+w+1)·c·Q, mod 2^sum, where
    // 2PQ = 2·lo_s·Q (a cross term, the server choosing with its bits) + 2e·Q (the client's).
    let e = 1u64.wrapping_sub(1 << (lo_bits - 1));
    let cross = if server {
        cross_receive(sess, &lo, lo_bits, sum).await?
    } else {
        let doubled: Vec<u64> = lo.iter().map(|q| q.wrapping_mul(2)).collect();
        let cross = cross_send(sess, &doubled, lo_bits, sum).await?;
        cross.iter().zip(&doubled).map(|(x, q)| x.wrapping_add(q.wrapping_mul(e))).collect()
    };
    let own: Vec<u64> = if server { lo.iter().map(|&l| l.wrapping_add(e)).collect() } else { lo };
    // c = c_s ⊕ c_c, so c·Z = c_p·Z + c_other·(1 − 2c_p)·Z for the Z party p knows
    let z: Vec<u64> = own
        .iter()
        .map(|&v| {
            let scaled = v.wrapping_mul(1 << (lo_bits + 1)).wrapping_neg();
            if server { scaled.wrapping_add(1 << (2 * lo_bits)) } else { scaled }
        })
        .collect();
    let deltas: Vec<u64> = z.iter().zip(&c).map(|(&z, &b)| if b { z.wrapping_neg() } else { z }).collect();
    let (sent, got) = if server {
        let x = sess.ot.cot_send(sess.kind, &deltas, sum).await?;
        (x, sess.ot.cot_receive(sess.kind, &c, sum).await?)
    } else {
        let y = sess.ot.cot_receive(sess.kind, &c, sum).await?;
        (sess.ot.cot_send(sess.kind, &deltas, sum).await?, y)
    };
    let d2: Vec<u64> = (0..n)
        .map(|i| {
            let own_c = if c[i] { z[i] } else { 0 };
            own[i]
                .wrapping_mul(own[i])
                .wrapping_add(cross[i])
                .wrapping_add(own_c)
                .wrapping_sub(sent[i])
                .wrapping_add(got[i])
                & mask(sum)
        })
        .collect();

    // 3: index shares i = i_s + i_c mod 2^b from one lookup on (hi_c, c_c); saturating, the
    // entry's bit b also carries XOR shares of the carry out of the piece number into the far part
    let b = f.index_bits();
    let log_n = hi_bits + 1;
    let width = b + saturate as u32;
    let entries: Vec<u64> = if server {
        let r = masks(sess, n, width);
        let mut table = Vec::with_capacity(n << log_n);
        for i in 0..n {
            table.extend((0..1u64 << log_n).map(|v| {
                let high = hi[i] + (v & mask(hi_bits)) + ((v >> hi_bits == 1) ^ c[i]) as u64;
                let index = f.index_of_high(high & mask(hi_bits)).wrapping_sub(r[i]) & mask(b);
                let carry_out = ((high >> hi_bits) & 1) ^ (r[i] >> b);
                index | ((carry_out << b) & mask(width))
            }));
        }
        sess.ot.one_of_n_send(sess.kind, log_n, width, &table).await?;
        r
    } else {
        let choices: Vec<u32> = (0..n).map(|i| (hi[i] | (c[i] as u64) << hi_bits) as u32).collect();
        sess.ot.one_of_n_receive(sess.kind, log_n, width, &choices).await?
    };
    let index: Vec<u64> = entries.iter().map(|&e| e & mask(b)).collect();

    // 5: each party's masked term θ_i·(d²_p, x_p, 1) to the other, selected by its index share;
    // each term is a share of Y mod 2^sum, truncated locally by ACC − f bits before it is masked
    // (⌊A/2^s⌋ + ⌊B/2^s⌋ = ⌊Y/2^s⌋ or one less, mod 2^(sum − s)): the tables carry sum − s bits
    let coefs: Vec<(u64, u64, u64)> =
        f.pieces.iter().map(|p| p.fixed(f.frac)).map(|(a, b, c)| (a as u64, b as u64, c as u64)).collect();
    let shift = ACC_BITS - f.frac;
    let out_bits = sum - shift;
    let term = |i: u64, d2: u64, x: u64| {
        coefs.get(i as usize).map_or(0, |&(a, b, c)| {
            let constant = if server { c } else { 0 };
            (a.wrapping_mul(d2).wrapping_add(b.wrapping_mul(x)).wrapping_add(constant) & mask(sum)) >> shift
        })
    };
    let r = masks(sess, n, out_bits);
    let mut table = Vec::with_capacity(n << b);
    for i in 0..n {
        table.extend(
            (0..1u64 << b)
                .map(|v| term((index[i] + v) & mask(b), d2[i], shares[i]).wrapping_sub(r[i]) & mask(out_bits)),
        );
    }
    let choices: Vec<u32> = index.iter().map(|&v| v as u32).collect();
    let got = if server {
        sess.ot.one_of_n_send(sess.kind, b, out_bits, &table).await?;
        sess.ot.one_of_n_receive(sess.kind, b, out_bits, &choices).await?
    } else {
        let got = sess.ot.one_of_n_receive(sess.kind, b, out_bits, &choices).await?;
        sess.ot.one_of_n_send(sess.kind, b, out_bits, &table).await?;
        got
    };
    let y: Vec<u64> = r.iter().zip(&got).map(|(r, g)| r.wrapping_add(*g) & mask(out_bits)).collect();

    // 6: extended to Z_2^64 (at f fractional bits already)
    let y = truncate_extend(sess, &y, out_bits, 0).await?;
    if !saturate {
        return Ok(y);
    }

    // 7: the far part F = far_s + far_c + c' (c' the carry out of the piece number) is 0 for
    // accepted inputs, negative below, positive above; its two signs select the tails,
    // y + [F < 0]·(tail_L(x) − y) + [F > 0]·(tail_R(x) − y) by one multiplexer pair. The tails
    // are β·x + γ with β ∈ {0, 1}, computed locally.
    let far: Vec<u64> = h.iter().map(|v| v >> (lo_bits + hi_bits)).collect();
    let carry_in = Bits::from_bools(&entries.iter().map(|&e| e >> b & 1 == 1).collect::<Vec<_>>());
    let (below, above) = signs(sess, &far, layout.far, &carry_in).await?;
    let scale = (1u64 << f.frac) as f64;
    let tail = |p: Piece, x: u64| {
        let linear = if p.beta == 1.0 { x } else { 0 };
        let constant = if server { (p.gamma * scale).round() as i64 as u64 } else { 0 };
        linear.wrapping_add(constant)
    };
    let (left, right) = (f.pieces[0], f.pieces[f.pieces.len() - 1]);
    let deltas: Vec<u64> = (0..n)
        .map(|i| tail(left, shares[i]).wrapping_sub(y[i]))
        .chain((0..n).map(|i| tail(right, shares[i]).wrapping_sub(y[i])))
        .collect();
    let bits: Vec<bool> = below.to_bools().into_iter().chain(above.to_bools()).collect();
    let picked = mux(sess, &Bits::from_bools(&bits), &Shares::matrix((2, n), deltas, f.frac)?).await?.into_vec();
    Ok((0..n).map(|i| y[i].wrapping_add(picked[i]).wrapping_add(picked[n + i])).collect())
}

/// The baseline (module notes): every piece evaluated, then multiplexed by the one-hot vector
/// from K − 1 breakpoint comparisons. Same input range and fixed point as [`evaluate`].
#[tracing::instrument(level = "debug", skip_all, fields(f = f.name, n = x.len()))]
pub async fn evaluate_baseline(sess: &mut Session, f: &Piecewise, x: &Shares) -> ProtoResult<Shares> {
    sess.check_format(x, f.name)?;
    let f = &f.for_format(sess.format())?;
    let mut out = Vec::with_capacity(x.len());
    for batch in x.as_slice().chunks(BATCH) {
        out.extend(baseline_batch(sess, f, batch).await?);
    }
    Ok(x.with_values(out)?)
}

async fn baseline_batch(sess: &mut Session, f: &Piecewise, shares: &[u64]) -> ProtoResult<Vec<u64>> {
    let server = sess.party() == Party::Server;
    let n = shares.len();
    prepare(sess, f.baseline_ots(sess.kind, n)).await?;
    let k = f.pieces.len();
    let thresholds: Vec<u64> = (0..k as i64 - 1)
        .map(|j| ((f.start << f.frac) + ((j << f.frac) >> -f.width_log2.min(0) << f.width_log2.max(0))) as u64)
        .collect();
    let bits = f.comparison_bits();
    let mut triples = Triples::generate(sess, n * (k - 1) * triples_per_comparison(sess.kind, bits - 1)).await?;
    let x = Shares::vector(shares.to_vec(), f.frac)?;
    let ge = at_least(sess, &mut triples, &x, &thresholds, bits).await?.to_bools();
    // one-hot: piece i is selected when x ≥ breakpoint i−1 and not x ≥ breakpoint i
    let selector: Vec<bool> = (0..n)
        .flat_map(|v| {
            let ge = &ge[v * (k - 1)..(v + 1) * (k - 1)];
            (0..k).map(move |i| {
                let above = if i == 0 { server } else { ge[i - 1] };
                let below = if i == k - 1 { false } else { ge[i] };
                above ^ below
            })
        })
        .collect();
    let x2 = square(sess, shares, 64, 64).await?;
    let x2 = truncate_extend(sess, &x2, 64, f.frac).await?;
    // α(x − m)² + βx + γ = α·x² + (β − 2αm)·x + (α·m² + γ), at BASE_COEF_BITS + 18 bits
    let q = |v: f64, bits: u32| (v * (1u64 << bits) as f64).round() as i64 as u64;
    let values: Vec<u64> = (0..n)
        .flat_map(|v| {
            let (x, x2) = (shares[v], x2[v]);
            f.pieces.iter().enumerate().map(move |(i, p)| {
                let m = f.mid(i);
                let a = q(p.alpha, BASE_COEF_BITS);
                let b = q(p.beta - 2.0 * p.alpha * m, BASE_COEF_BITS);
                let c = if server { q(p.alpha * m * m + p.gamma, BASE_COEF_BITS + f.frac) } else { 0 };
                a.wrapping_mul(x2).wrapping_add(b.wrapping_mul(x)).wrapping_add(c)
            })
        })
        .collect();
    let values = Shares::matrix((n, k), values, BASE_COEF_BITS + f.frac)?;
    let picked = mux(sess, &Bits::from_bools(&selector), &values).await?.into_vec();
    let y: Vec<u64> = picked.chunks_exact(k).map(|c| c.iter().fold(0u64, |s, v| s.wrapping_add(*v))).collect();
    truncate_extend(sess, &y, 64, BASE_COEF_BITS).await
}

/// Shares of ReLU(x) = [x ≥ 0]·x for |x| < 2^(bits−1), any scale: the sign at that width
/// ([`super::compare::non_negative`]) and one multiplexer.
pub async fn relu(sess: &mut Session, x: &Shares, bits: u32) -> ProtoResult<Shares> {
    let positive = non_negative(sess, x, bits).await?;
    mux(sess, &positive, x).await
}

/// Shares of SwiGLU's gate product SiLU(g) ⊙ u for shared g (in SiLU's input range) and u
/// (|u| < 64): [`gated`] with SiLU.
pub async fn swiglu(sess: &mut Session, gate: &Shares, up: &Shares) -> ProtoResult<Shares> {
    gated(sess, &Piecewise::silu(), gate, up).await
}

/// Shares of a gated unit's product f(g) ⊙ u (SwiGLU with SiLU, GeGLU with GeLU) for shared g
/// (in f's input range) and u (|u| < 64) of one shape, in the session's fixed point (f = 18:
/// the product in a 50-bit ring, 2f + 14 bits in general; |f(g)·u| < 2^12 in real terms): f by
/// Select-Then-Compute, the product with u's shares read in the f + 8 bits its range needs
/// (SCI's product by a value with a known top bit, rows of one value: 2(f + 9) correlated OTs
/// per value instead of 2(2f + 14)) and one truncation back to Z_2^64.
pub async fn gated(sess: &mut Session, f: &Piecewise, gate: &Shares, up: &Shares) -> ProtoResult<Shares> {
    sess.check_format(gate, "gate")?;
    gate.check_same(up)?;
    let frac = sess.format().frac_bits();
    let bits = 2 * frac + 14;
    let activated = evaluate_values(sess, f, gate.as_slice()).await?;
    let product = mul_rows_in(sess, &activated, up.as_slice(), frac + 8, bits).await?;
    Ok(gate.with_values(truncate_extend(sess, &product, bits, frac).await?)?)
}

/// Checks a batch against the function's input range, for callers that hold plaintext (tests,
/// benches): the protocols themselves cannot see the values.
pub fn check_range(f: &Piecewise, xs: &[f64]) -> ProtoResult<()> {
    let (lo, hi) = f.input_range();
    match xs.iter().find(|&&x| !(lo..hi).contains(&x)) {
        Some(x) => Err(ProtoError::Input(format!("{} input {x} outside [{lo}, {hi})", f.name))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lookups' OTs carry tens of bits each, so their batches run in the small silent
    /// calls whose encoding stays in the caches.
    #[test]
    fn the_lookups_payload_asks_for_cache_sized_silent_calls() {
        for f in [Piecewise::gelu(), Piecewise::silu(), Piecewise::sigmoid(), Piecewise::exp()] {
            let bits = f.payload_bits(false);
            eprintln!("{}: {bits:.1} bits per OT", f.name);
            assert!(bits > 20.0 && bits < 200.0, "{}: {bits}", f.name);
            assert_eq!(crate::ot::silent_call_max(Some(bits)), 1 << 18, "{}", f.name);
            // saturating adds the sign chain's narrow entries and the multiplexers' corrections
            let bits = f.payload_bits(true);
            assert!(bits > 20.0 && bits < 200.0, "{} saturating: {bits}", f.name);
        }
    }

    fn errors(f: &Piecewise, xs: impl Iterator<Item = f64>) -> (f64, f64) {
        let (mut max, mut sum, mut n) = (0.0f64, 0.0, 0);
        for x in xs {
            let e = (f.approx(x) - f.exact(x)).abs();
            max = max.max(e);
            sum += e;
            n += 1;
        }
        eprintln!("{}: max {max:.2e}, mean {:.2e}", f.name, sum / n as f64);
        (max, sum / n as f64)
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in
            [(0.0, 0.0), (0.5, 0.520_499_877_813_046_5), (1.0, 0.842_700_792_949_714_9), (3.0, 0.999_977_909_503_001_4)]
        {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x})");
            assert!((erf(-x) + want).abs() < 1e-14, "erf(-{x})");
        }
    }

    #[test]
    fn gelu_fit_beats_the_papers_error() {
        let f = Piecewise::gelu();
        let (max, mean) = errors(&f, (0..200_000).map(|j| -8.0 + 16.0 * j as f64 / 200_000.0));
        assert!(max <= 1.2e-2 && mean <= 1.7e-3, "max {max}, mean {mean}");
    }

    #[test]
    fn silu_fit_is_within_a_thousandth_and_a_half() {
        let f = Piecewise::silu();
        let (max, mean) = errors(&f, (0..200_000).map(|j| -7.0 + 14.0 * j as f64 / 200_000.0));
        assert!(max <= 1.4e-3 && mean <= 3e-4, "within [−7, 7): max {max}, mean {mean}");
        let (max, _) = errors(&f, (0..200_000).map(|j| -12.0 + 24.0 * j as f64 / 200_000.0));
        assert!(max <= 6.4e-3, "the tails: max {max}");
    }

    /// gpt-oss's gate within 6e-4 (more than twice as close as SiLU's fit), its clamp exact (within
    /// the coefficients' rounding), the kink at 7 on a piece boundary.
    #[test]
    fn clamped_swiglu_fits() {
        let f = Piecewise::clamped_swish();
        let (max, mean) = errors(&f, (0..200_000).map(|j| -12.0 + 24.0 * j as f64 / 200_000.0));
        assert!(max <= 6e-4 && mean <= 4e-5, "max {max}, mean {mean}");
        assert_eq!(f.approx(7.0), f.approx(40.0));
        let up = Piecewise::clamped_up();
        let (max, _) = errors(&up, (0..200_000).map(|j| -12.0 + 24.0 * j as f64 / 200_000.0));
        assert!(max <= 1e-9, "max {max}");
    }

    /// Half-unit pieces: a router's scores are close to σ well below the gates' other errors.
    #[test]
    fn sigmoid_fit_is_within_a_ten_thousandth() {
        let f = Piecewise::sigmoid();
        let (max, _) = errors(&f, (0..200_000).map(|j| -16.0 + 32.0 * j as f64 / 200_000.0));
        assert!(max <= 1e-4, "max {max}");
    }

    /// Just past a boundary the 2PC evaluation may read the piece one low (the in-piece
    /// position is truncated to 2^-8, `tests/activation.rs`): at a kink — the clamp's at 7,
    /// slope 1 against 0, whose pieces are otherwise exact — that costs the slopes' difference
    /// over the unit, which the bound counts.
    #[test]
    fn the_bound_counts_a_kink_read_one_piece_low() {
        let up = Piecewise::clamped_up();
        let unit = 2f64.powi(-(D_BITS as i32));
        assert!(up.protocol_bound() >= unit && up.protocol_bound() < unit + 1e-5, "{}", up.protocol_bound());
    }

    #[test]
    fn reference_follows_the_real_approximation() {
        for f in [Piecewise::gelu(), Piecewise::silu(), Piecewise::sigmoid(), Piecewise::clamped_swish()] {
            let (lo, hi) = f.input_range();
            for j in 0..10_000 {
                let x = lo + (hi - lo) * j as f64 / 10_000.0;
                let fixed = (x * (1u64 << FRAC) as f64).round() as i64 as u64;
                let got = f.reference(fixed) as i64 as f64 / (1u64 << FRAC) as f64;
                // d is quantized to 2^-8, plus the rounding of the coefficients
                assert!((got - f.approx(x)).abs() < f.protocol_bound(), "{} at {x}: {got} vs {}", f.name, f.approx(x));
            }
        }
    }
}
