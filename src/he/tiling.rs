//! Cheetah's coefficient packing of a matrix product A (n×d) · B (d×m) into RLWE polynomials of
//! degree N (Huang et al., USENIX Security 2022, §3.2).
//!
//! The product is cut into tiles of n_w × d_w × m_w with n_w·d_w·m_w ≤ N. A tile of A becomes
//! â = Σ A\[i,j\]·X^(i·d_w·m_w + j) and a tile of B becomes b̂ = Σ B\[j,k\]·X^(k·d_w + d_w − 1 − j);
//! in â·b̂ the coefficient of X^(i·d_w·m_w + k·d_w + d_w − 1) is Σ_j A\[i,j\]·B\[j,k\], with no
//! wrap-around because every exponent stays below n_w·d_w·m_w ≤ N. Summing â·b̂ over the d-tiles
//! gives the output tile.

use std::ops::Range;

/// Shape of a product A (n×d) · B (d×m).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatShape {
    /// Rows of A (tokens).
    pub n: usize,
    /// Inner dimension.
    pub d: usize,
    /// Columns of B.
    pub m: usize,
}

impl MatShape {
    /// The product A·B over Z_2^64 in the clear (row-major A: n×d, B: d×m): a party's local
    /// term, and the plaintext reference of the protocols.
    pub fn plain_product(&self, a: &[u64], b: &[u64]) -> Vec<u64> {
        use rayon::prelude::*;
        let mut c = vec![0u64; self.n * self.m];
        c.par_chunks_mut(self.m.max(1)).enumerate().for_each(|(i, row)| {
            for j in 0..self.d {
                let aij = a[i * self.d + j];
                for (dst, &bjk) in row.iter_mut().zip(&b[j * self.m..(j + 1) * self.m]) {
                    *dst = dst.wrapping_add(aij.wrapping_mul(bjk));
                }
            }
        });
        c
    }
}

impl std::fmt::Display for MatShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{} · {}×{}", self.n, self.d, self.d, self.m)
    }
}

/// Estimated costs that decide the tiling: bytes on the wire against server work.
#[derive(Debug, Clone, Copy)]
pub struct TilingCost {
    /// Bytes of one input ciphertext.
    pub input_bytes: f64,
    /// Bytes of an output ciphertext with no kept coefficient (its c1).
    pub output_bytes: f64,
    /// Bytes per kept output coefficient.
    pub kept_bytes: f64,
    /// Seconds of one NTT stage of a weight polynomial over every limb (a weight supported on
    /// s coefficients needs log2 s stages).
    pub weight_stage_s: f64,
    /// Seconds of one ciphertext × plaintext product.
    pub product_s: f64,
    /// Seconds of one key switch (one merge when packing results).
    pub keyswitch_s: f64,
    /// Seconds of one ciphertext's way across, besides its products and merges: for an input,
    /// the client's encryption, the transport at both ends and the server's expansion and
    /// transforms; for a returned result, its masking, re-randomization and flooding, the
    /// transport and the client's decryption.
    pub ciphertext_s: f64,
    /// Bytes per second that make one second of compute worth as much as the bytes.
    pub bandwidth: f64,
    /// Largest packing level available (log2 of the most results merged per ciphertext).
    pub max_pack: u32,
}

/// How the server multiplies an input ciphertext by a weight polynomial of s coefficients
/// (s = d_w·m_w): whole, by N-point transforms (the weight's costs log2 s stages of N slots, the
/// product N slots), or in blocks (overlap-add): the input's N coefficients cut into ⌈N/B⌉
/// blocks of B, each padded to M ≥ B + s − 1 and transformed at M points once, the weight
/// transformed at M points only (log2 s stages of M slots), and each block's product an
/// M-slot one whose linear convolution does not wrap; the blocks' products summed back at
/// offsets b·B, folded mod X^N + 1. The product is the same polynomial either way; blocks trade
/// ⌈N/B⌉·M ≥ N product slots for a weight transform N/M times smaller, which pays where each
/// transformed weight serves few input tiles. The server's own choice: nothing of it reaches
/// the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// Transform size M (N when whole).
    pub size: usize,
    /// Input coefficients per block B (N when whole).
    pub stride: usize,
    /// Blocks per input, ⌈N/B⌉ (1 when whole).
    pub count: usize,
}

impl Blocking {
    /// The whole N-point product.
    pub fn whole(degree: usize) -> Blocking {
        Blocking { size: degree, stride: degree, count: 1 }
    }

    /// Blocks of M = `size` points for weights of `support` coefficients, where they fit.
    pub fn blocks(degree: usize, size: usize, support: usize) -> Option<Blocking> {
        let stride = (size + 1).checked_sub(support).filter(|&b| b > 0 && size < degree)?;
        Some(Blocking { size, stride, count: degree.div_ceil(stride) })
    }

    /// Product slots per input and weight, relative to the whole product's N.
    pub fn product_slots(&self, degree: usize) -> f64 {
        (self.count * self.size) as f64 / degree as f64
    }
}

/// A tiling of one product shape for ring degree N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// The product.
    pub shape: MatShape,
    /// Ring degree.
    pub degree: usize,
    /// Rows of A per tile.
    pub n_w: usize,
    /// Inner dimension per tile.
    pub d_w: usize,
    /// Columns of B per tile.
    pub m_w: usize,
    /// Results merged per returned ciphertext: 2^pack (then d_w = 2^pack), or 1 unpacked.
    pub pack: u32,
}

impl Tiling {
    /// The tiling with the lowest estimated time `bytes / bandwidth + server seconds` among those
    /// that [fill the ring](Tiling::fills_ring).
    pub fn choose(shape: MatShape, degree: usize, cost: &TilingCost) -> Tiling {
        let mut best = (f64::INFINITY, Tiling { shape, degree, n_w: 1, d_w: 1, m_w: 1, pack: 0 });
        for n_w in 1..=shape.n.min(degree) {
            for d_w in 1..=shape.d.min(degree / n_w) {
                let m_w = shape.m.min(degree / (n_w * d_w));
                let packs = [0, d_w.trailing_zeros()];
                for pack in packs.into_iter().filter(|&l| l <= cost.max_pack && (l == 0 || d_w == 1 << l)) {
                    let t = Tiling { shape, degree, n_w, d_w, m_w, pack };
                    if !t.fills_ring() {
                        continue;
                    }
                    let score = t.estimate(cost);
                    if score < best.0 {
                        best = (score, t);
                    }
                }
            }
        }
        best.1
    }

    /// Whether a tile holds at least half of what the ring allows: n_w·d_w·m_w ≥ min(N, n·d·m)/2.
    /// Narrower tiles only cost more, and the server refuses them: each would carry fewer weights
    /// per ciphertext, the degenerate end of which (1×1×1) a malicious client could try to attack.
    /// The tiling n_w = min(n, N), d_w = min(d, N/n_w), m_w = min(m, N/(n_w·d_w)) always fills.
    pub fn fills_ring(&self) -> bool {
        let whole = self.shape.n.saturating_mul(self.shape.d).saturating_mul(self.shape.m);
        2 * self.n_w * self.d_w * self.m_w >= whole.min(self.degree)
    }

    /// `bytes / bandwidth + server seconds` under `cost`, the server multiplying in its
    /// [`Tiling::blocking`].
    pub fn estimate(&self, cost: &TilingCost) -> f64 {
        let (ti, tj, tk) = self.tile_counts();
        let results = ti * tk;
        let returned = self.returned();
        let bytes = (ti * tj) as f64 * cost.input_bytes
            + returned as f64 * cost.output_bytes
            + (self.shape.n * self.shape.m) as f64 * cost.kept_bytes;
        let work = (tj * tk) as f64 * self.weight_cost(self.blocking(cost), cost)
            + (results - returned) as f64 * cost.keyswitch_s
            + (ti * tj + returned) as f64 * cost.ciphertext_s;
        bytes / cost.bandwidth + work
    }

    /// Coefficients of a weight polynomial: d_w·m_w.
    pub fn support(&self) -> usize {
        self.d_w * self.m_w
    }

    /// The cheapest way under `cost` to multiply by each weight polynomial: whole, or blocks of
    /// M points from 2·s up (every M < N with M ≥ B + s − 1 has B ≥ 1).
    pub fn blocking(&self, cost: &TilingCost) -> Blocking {
        let first = (2 * self.support()).next_power_of_two();
        std::iter::successors(Some(first), |m| Some(m * 2))
            .take_while(|&m| m < self.degree)
            .filter_map(|m| Blocking::blocks(self.degree, m, self.support()))
            .chain([Blocking::whole(self.degree)])
            .min_by(|a, b| self.weight_cost(*a, cost).total_cmp(&self.weight_cost(*b, cost)))
            .unwrap_or(Blocking::whole(self.degree))
    }

    /// Seconds spent per weight polynomial in `blocking`: its transform (log2 s stages of M
    /// slots) and its products with the row tiles' inputs.
    fn weight_cost(&self, blocking: Blocking, cost: &TilingCost) -> f64 {
        let (ti, _, _) = self.tile_counts();
        let stages = self.support().next_power_of_two().trailing_zeros().max(1) as f64;
        let scale = blocking.size as f64 / self.degree as f64;
        cost.weight_stage_s * stages * scale + ti as f64 * cost.product_s * blocking.product_slots(self.degree)
    }

    /// Number of ciphertexts returned (results merged 2^pack at a time).
    pub fn returned(&self) -> usize {
        let (ti, _, tk) = self.tile_counts();
        (ti * tk).div_ceil(1 << self.pack)
    }

    /// Number of tiles along n, d and m.
    pub fn tile_counts(&self) -> (usize, usize, usize) {
        (self.shape.n.div_ceil(self.n_w), self.shape.d.div_ceil(self.d_w), self.shape.m.div_ceil(self.m_w))
    }

    fn rows(&self, ti: usize) -> Range<usize> {
        ti * self.n_w..((ti + 1) * self.n_w).min(self.shape.n)
    }

    fn inner(&self, tj: usize) -> Range<usize> {
        tj * self.d_w..((tj + 1) * self.d_w).min(self.shape.d)
    }

    fn cols(&self, tk: usize) -> Range<usize> {
        tk * self.m_w..((tk + 1) * self.m_w).min(self.shape.m)
    }

    /// The polynomial of tile (ti, tj) of A (row-major n×d).
    pub fn encode_a(&self, a: &[u64], ti: usize, tj: usize) -> Vec<u64> {
        let mut poly = vec![0u64; self.degree];
        let stride = self.d_w * self.m_w;
        for (ii, i) in self.rows(ti).enumerate() {
            let cols = self.inner(tj);
            let len = cols.len();
            poly[ii * stride..ii * stride + len].copy_from_slice(&a[i * self.shape.d + cols.start..][..len]);
        }
        poly
    }

    /// The polynomial of tile (tj, tk) of B (row-major d×m).
    pub fn encode_b(&self, b: &[u64], tj: usize, tk: usize) -> Vec<u64> {
        let mut poly = vec![0u64; self.degree];
        self.encode_b_into(b, tj, tk, &mut poly[..self.d_w * self.m_w]);
        poly
    }

    /// The polynomial of tile (tj, tk) of B written into its support `out` (d_w·m_w values: the
    /// polynomial has no coefficient above).
    pub fn encode_b_into(&self, b: &[u64], tj: usize, tk: usize, out: &mut [u64]) {
        out.fill(0);
        for (jj, j) in self.inner(tj).enumerate() {
            for (kk, k) in self.cols(tk).enumerate() {
                out[kk * self.d_w + self.d_w - 1 - jj] = b[j * self.shape.m + k];
            }
        }
    }

    /// Output tile of result number `r` in the order results are computed and returned: by
    /// column tile, then row tile.
    pub fn result_tile(&self, r: usize) -> (usize, usize) {
        let (ti, _, _) = self.tile_counts();
        (r % ti, r / ti)
    }

    /// The coefficients of returned ciphertext `g` that hold A·B: (coefficient, member result,
    /// (row, column)). Member j of a packed group has its outputs at multiples of d_w after a
    /// shift by X^-(d_w−1); packing moves coefficient a·d_w of member j to a·d_w + j.
    pub fn returned_positions(&self, g: usize) -> Vec<(usize, usize, (usize, usize))> {
        let (ti, _, tk) = self.tile_counts();
        let size = 1usize << self.pack;
        let shift = if self.pack > 0 { self.d_w - 1 } else { 0 };
        let mut out = Vec::new();
        for j in 0..size {
            let r = g * size + j;
            if r >= ti * tk {
                break;
            }
            let (i, k) = self.result_tile(r);
            out.extend(self.output_positions(i, k).into_iter().map(|(c, ik)| (c - shift + j, j, ik)));
        }
        out
    }

    /// The coefficients of output tile (ti, tk) that hold A·B, with the (row, column) of each.
    pub fn output_positions(&self, ti: usize, tk: usize) -> Vec<(usize, (usize, usize))> {
        let stride = self.d_w * self.m_w;
        let mut out = Vec::with_capacity(self.n_w * self.m_w);
        for (ii, i) in self.rows(ti).enumerate() {
            for (kk, k) in self.cols(tk).enumerate() {
                out.push((ii * stride + kk * self.d_w + self.d_w - 1, (i, k)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::he::negacyclic_mod_2_64;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn packed_products_hold_the_matrix_product(
            n in 1usize..9, d in 1usize..11, m in 1usize..9, n_w in 1usize..5, d_w in 1usize..6, seed in any::<u64>(),
        ) {
            let degree = 64;
            let s = MatShape { n, d, m };
            let (n_w, d_w) = (n_w.min(n), d_w.min(d).min(degree / n_w.min(n)));
            let t = Tiling { shape: s, degree, n_w, d_w, m_w: m.min(degree / (n_w * d_w)), pack: 0 };
            let mut x = seed;
            let mut next = move || { x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); x };
            let a: Vec<u64> = (0..n * d).map(|_| next()).collect();
            let b: Vec<u64> = (0..d * m).map(|_| next()).collect();
            let want = s.plain_product(&a, &b);
            let (ti_count, tj_count, tk_count) = t.tile_counts();
            let mut got = vec![0u64; n * m];
            for ti in 0..ti_count {
                for tk in 0..tk_count {
                    let mut acc = vec![0u64; degree];
                    for tj in 0..tj_count {
                        let prod = negacyclic_mod_2_64(&t.encode_a(&a, ti, tj), &t.encode_b(&b, tj, tk));
                        acc.iter_mut().zip(prod).for_each(|(x, y)| *x = x.wrapping_add(y));
                    }
                    for (pos, (i, k)) in t.output_positions(ti, tk) {
                        got[i * m + k] = acc[pos];
                    }
                }
            }
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Whatever the shape and network, the chooser finds a tiling the server accepts.
        #[test]
        fn the_chooser_always_finds_a_tiling_that_fills_the_ring(
            n in 1usize..300, d in 1usize..5000, m in 1usize..5000, log_bw in 3.0f64..12.0, max_pack in 0u32..7,
        ) {
            let cost = TilingCost {
                input_bytes: 168e3, output_bytes: 79e3, kept_bytes: 8.5, weight_stage_s: 1e-5,
                product_s: 5e-5, keyswitch_s: 1.2e-3, ciphertext_s: 2e-3, bandwidth: 10f64.powf(log_bw), max_pack,
            };
            let t = Tiling::choose(MatShape { n, d, m }, 8192, &cost);
            prop_assert!(t.fills_ring() && t.n_w * t.d_w * t.m_w <= 8192, "{:?}", t);
        }
    }

    /// Blocks where a transformed weight serves one row tile (its transform would cost more
    /// than its products), the whole transform where it serves many, and every blocking covers
    /// the input with room for the weight.
    #[test]
    fn blocks_pay_where_a_weight_serves_few_row_tiles() {
        let cost = TilingCost {
            input_bytes: 168e3,
            output_bytes: 79e3,
            kept_bytes: 8.5,
            weight_stage_s: 0.30e-9 * 3.0 * 8192.0,
            product_s: 1.1e-9 * 3.0 * 8192.0,
            keyswitch_s: 1.2e-3,
            ciphertext_s: 2e-3,
            bandwidth: 50e6,
            max_pack: 6,
        };
        let tiling =
            |n, n_w, d_w, m_w| Tiling { shape: MatShape { n, d: 768, m: 3072 }, degree: 8192, n_w, d_w, m_w, pack: 0 };
        let few = tiling(128, 128, 16, 4).blocking(&cost);
        assert!(few.size < 8192 && few.count > 1, "{few:?}");
        assert_eq!(tiling(4096, 1, 16, 512).blocking(&cost), Blocking::whole(8192), "4096 row tiles per weight");
        assert_eq!(tiling(1, 1, 64, 128).blocking(&cost), Blocking::whole(8192), "no block leaves room for s = 8192");
        for size in [128, 512, 2048, 4096] {
            for support in [1, 64, 100, 2000] {
                if let Some(b) = Blocking::blocks(8192, size, support) {
                    assert!(b.stride + support - 1 <= b.size && b.count * b.stride >= 8192, "{b:?}");
                    assert!((b.count - 1) * b.stride < 8192, "no empty block: {b:?}");
                }
            }
        }
    }

    #[test]
    fn the_chosen_tiling_fits_the_ring_and_covers_the_shape() {
        let cost = TilingCost {
            input_bytes: 168e3,
            output_bytes: 79e3,
            kept_bytes: 8.5,
            weight_stage_s: 1e-5,
            product_s: 5e-5,
            keyswitch_s: 1.2e-3,
            ciphertext_s: 2e-3,
            bandwidth: 125e6,
            max_pack: 6,
        };
        for s in [MatShape { n: 128, d: 768, m: 3072 }, MatShape { n: 1, d: 5, m: 3 }, MatShape { n: 300, d: 1, m: 1 }]
        {
            let t = Tiling::choose(s, 8192, &cost);
            assert!(t.n_w * t.d_w * t.m_w <= 8192 && t.n_w <= s.n && t.d_w <= s.d && t.m_w <= s.m, "{t:?}");
            assert!(t.pack == 0 || t.d_w == 1 << t.pack, "{t:?}");
            assert!(t.fills_ring(), "{t:?}");
            // every output lands exactly once, in a coefficient of its returned ciphertext
            let mut seen = vec![0u8; s.n * s.m];
            for g in 0..t.returned() {
                let pos = t.returned_positions(g);
                let mut coeffs: Vec<usize> = pos.iter().map(|p| p.0).collect();
                coeffs.sort_unstable();
                coeffs.dedup();
                assert_eq!(coeffs.len(), pos.len(), "{t:?}");
                assert!(coeffs.iter().all(|&c| c < 8192));
                pos.iter().for_each(|&(_, _, (i, k))| seen[i * s.m + k] += 1);
            }
            assert!(seen.iter().all(|&c| c == 1), "{t:?}");
        }
    }
}
