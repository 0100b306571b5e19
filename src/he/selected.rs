//! Selected products, the HE core of the SecMoE paper's Protocol 1: y = x·W_e for a row x the
//! client holds encrypted and an expert e that only an encrypted one-hot vector names, with the
//! client's bytes independent of the number of experts E.
//!
//! Per row, the server
//! 1. expands the row's compact ciphertext Σ_e b_e·X^bitrev(e) (the client's XOR share of the
//!    one-hot; 2^g rows travel in one ciphertext and the first g levels of the expansion
//!    separate them, [`ChoiceLayout`]) into E constant ciphertexts [\[b_e\]]
//!    ([`GaloisKeys::expand`], ℓ = g + ⌈log2 E⌉ levels, 2^ℓ − 1 key switches per ciphertext;
//!    each level doubles the message, and the client encrypted under 2^ℓ·t, so the bits come
//!    out under t: [`ChoiceLayout::compact_params`]; the bit reversal makes every subtree of
//!    the expansion a run of experts, so experts are streamed in chunks) and folds in its own
//!    share s_e: [\[t_e\]] = s_e + (1 − 2·s_e)·[\[b_e\]]. The selectors are kept for the row's
//!    next matrix ([`RowChoice`], within 4 GiB): the expansion is paid once per row, not
//!    once per matrix;
//! 2. selects every weight polynomial of the row's expert with no interaction,
//!    [\[Ŵ_(j,k)\]] = Σ_e Ŵ_(e,j,k)·[\[t_e\]] ([`SelectionSums`]: E·J·K ciphertext×plaintext
//!    products, one batched multiply-accumulate per expert chunk for all rows of a batch, so
//!    each weight polynomial is transformed and read once per batch of rows);
//! 3. multiplies it by the encrypted row in Cheetah's coefficient layout with one row per tile
//!    (n_w = 1), each output tile as one sum of J ciphertext products ([`ProductSum`]: every
//!    input tile lifted to the product basis once for its K outputs, one rounding and one
//!    relinearization per output tile): the products land on the usual output coefficients;
//! 4. switches each output tile down to one prime above the lowest level that still holds its
//!    noise and flooding with the same margin (modulus switching keeps the noise's ratio to q),
//!    relinearizes it there and switches it down the last prime
//!    ([`SelectedLayout::lowest_out_level`]: 3 of 5 primes at the SPU shape), packs the K output
//!    tiles into one ciphertext per 2^pack ([`Packing`]: each tile merged as soon as its
//!    partner is there, members in bit-reversed slots so that neighbouring tiles merge first and
//!    c members take c − 1 merges; a row holds a few partial merges, not its K tiles) and sends
//!    it through [`mask_and_seal`] with the scale 2^pack: the client's share is its
//!    decryption shifted down, the server's the mask.
//!
//! Steps 2 and 3 have a second order ([`SelectOrder::InputsFirst`]), the same sums taken the
//! other way round: Σ_j [\[Ŵ_(j,k)\]]·[\[x_j\]] = Σ_(e,j) Ŵ_(e,j,k)·[\[t_e·x_j\]]. The server
//! multiplies each selector by each input tile (E·J ciphertext products, each rounded and
//! relinearized at the products' level and switched down to one prime above the out level),
//! then multiplies the E·J products by the stacked experts' weight tiles there as one
//! ciphertext×plaintext product with E·J inputs (the same E·J·K products by plaintexts, through
//! the same [`SelectionSums`], on fewer limbs: 4 of 5 at the SPU shape) and switches the K
//! results down the last prime.
//! No selected weight is lifted to the product basis (J·K lifts, each five inverse and six
//! forward transforms per part at the SPU shape), and no output tile is rounded or
//! relinearized: where E is small against K it is the cheaper order (at the SPU shape E·J = 24
//! ciphertext products per row against J·K = 144: 34 → 21–22 s on one machine). The input's
//! noise then enters multiplied by the weights, so the client drops fewer bits of its inputs
//! (25 against 56 at the SPU shape: +8% bytes); the relinearization key's noise is multiplied
//! too and stays far below the product's. The client's layout chooser prices both orders.
//!
//! Only the client opens the results, and it holds s², so steps 3 and 4 have a second form
//! ([`ProductForm::Tensored`]): each output tile's sum of products leaves unrelinearized,
//! unpacked, as three parts re-randomized with the client's [`SquareKey`]. The
//! server saves K relinearizations and every packing key switch and needs neither a
//! relinearization key nor packing keys beyond the expansion's; the client receives K
//! three-part results per row instead of ⌈K/2^pack⌉ two-part ones (the layout chooser weighs
//! those bytes, so it picks smaller tiles).
//!
//! The products run at the lowest level of q — its first primes — whose modulus still holds
//! their noise and its flooding with the statistical margin ([`SelectedLayout::with_level`]):
//! the server picks it from its weights' bound and tells the client, which encrypts its input
//! tiles there (fewer limbs to send); the kept selectors are switched down to it, the weights
//! prepared at it, and every product, relinearization and packing key switch costs fewer limbs.
//! The level is a function of public sizes and of the bit length of the largest weight, which
//! the client learns to within a prime's width (58 bits of room per level).
//!
//! t = 2^(64+10) ([`product_params`]) keeps all 64 bits of x·W mod 2^64 above the packing's
//! 2^pack: the client's share x_c plus the server's x_s is x + 2^64·c as an integer, and
//! 2^pack·W·2^64·c vanishes from the client's window of 64 bits. Nothing the server computes
//! depends on e in the clear; what the client decrypts is masked by R uniform mod
//! 2^(log t − pack), re-randomized and flooded beyond the product's noise ([`noise_bits`]), so
//! it depends on the weights only through y.

use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;

use super::ShrunkShape;
use super::bfv::{Ciphertext, PublicKey};
use super::matmul::{MAX_GALOIS_LEVELS, ResponseKeys, mask_and_seal, max_pack, response_shape, transform_s};
use super::mult::{Lifted, ProductSum, RelinKey, SUM_TERM_BITS, SquareKey, Tensored};
use super::response::Outgoing;
use super::tiling::{MatShape, Tiling};
use super::{GaloisKeys, HeError, HeParams, HeResult, OperandBank, Packing, SelectionSums, Selectors};
use crate::backend::{Backend, par_map};
use crate::he::flood::tail_deviations;
use crate::he::{MAX_DROPPED_BITS, MAX_FLOOD_BITS, MIN_STAT_BITS, compressed_ciphertext_len_at};
use crate::net::CostModel;

/// How one row's product with E experts' d×m matrices is laid out: Cheetah's tiling with one
/// row per tile (d_w = 2^pack, so that results pack; the pack that costs least by a fixed
/// estimate of products, key switches and input bytes), and the expansion's levels ℓ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectedLayout {
    /// The per-row tiling (n = 1).
    pub tiling: Tiling,
    /// How the rows' one-hot vectors travel: E and the expansion's levels ℓ.
    pub choice: ChoiceLayout,
    /// How the products leave the server.
    pub form: ProductForm,
    /// In which order the server selects and multiplies.
    pub order: SelectOrder,
    /// Bits of the ring the results are shared in: 64, or fewer for a consumer that reads no
    /// more ([`SelectedLayout::with_result_bits`]).
    pub result_bits: u32,
    /// RNS limbs the products run at ([`SelectedLayout::with_level`]): the first `level`
    /// primes of q, all of them unless the server found the noise fits fewer.
    pub level: usize,
    /// RNS limbs the relinearized products are switched down to before they are packed and
    /// sealed ([`SelectedLayout::with_out_level`]); `level` unless the server lowered it.
    pub out_level: usize,
    /// Low bits of c0 the client's input tiles drop ([`SelectedLayout::with_dropped`]).
    pub dropped: u32,
}

/// How the server returns a row's ciphertext products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProductForm {
    /// Relinearized (the client's relinearization key) and packed 2^pack output tiles per
    /// two-part ciphertext.
    #[default]
    Relinearized,
    /// Not relinearized: each output tile one three-part result (d0, d1, d2) that the client
    /// opens with s and s², re-randomized with its [`SquareKey`].
    Tensored,
}

/// In which order the server combines a row's selectors [\[t_e\]], its input tiles [\[x_j\]]
/// and the experts' weights: the same plaintexts come out, for different work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelectOrder {
    /// Protocol 1 as written: the weights selected first, [\[Ŵ_(j,k)\]] = Σ_e Ŵ_(e,j,k)·[\[t_e\]]
    /// (E·J·K products by plaintexts), then multiplied by the row: J·K ciphertext products,
    /// each selected weight lifted to the product basis, one rounding and one relinearization
    /// per output tile.
    #[default]
    WeightsFirst,
    /// The row expanded first: [\[t_e·x_j\]] = [\[t_e\]]·[\[x_j\]] (E·J ciphertext products, each
    /// rounded and relinearized), then one product by the stacked experts' plaintexts,
    /// Σ_(e,j) Ŵ_(e,j,k)·[\[t_e·x_j\]] (the same E·J·K products by plaintexts): no selected
    /// weight is lifted, so it is the cheaper order where E is small against K. The input's
    /// noise is then multiplied by the weights (the client compresses its inputs less), and the
    /// relinearization key's noise too, which stays far below the product's. Relinearized
    /// form only.
    InputsFirst,
}

impl SelectOrder {
    /// Both orders.
    pub const ALL: [SelectOrder; 2] = [SelectOrder::WeightsFirst, SelectOrder::InputsFirst];

    /// The order's code in a request.
    pub fn code(self) -> u64 {
        match self {
            SelectOrder::WeightsFirst => 0,
            SelectOrder::InputsFirst => 1,
        }
    }

    /// The order of a request's code.
    pub fn from_code(code: u64) -> Option<SelectOrder> {
        SelectOrder::ALL.into_iter().find(|o| o.code() == code)
    }
}

impl ProductForm {
    /// Parts of each returned result.
    pub fn parts(self) -> usize {
        match self {
            ProductForm::Relinearized => 2,
            ProductForm::Tensored => 3,
        }
    }
}

impl SelectedLayout {
    /// The layout with the least estimated time per row on `network`, for a server computing on
    /// `server_threads` threads: the input ciphertexts' bytes against the ciphertext products
    /// (their lifts, pointwise products and roundings), the relinearizations and the packing's
    /// key switches (relinearized) or the three-part results' bytes (tensored), and the weight
    /// tiles' preparation once per batch of rows, over every packing and both orders
    /// ([`SelectOrder`]). The E·J·K products by plaintexts are about the same for every layout,
    /// so they do not enter. Transforms are priced as the linear layers'
    /// tiling prices them ([`super::matmul::tiling_for`]), a merge at the level the results
    /// leave from, an input tile at the products' level, both levels as the server would pick
    /// them for weights of up to 2^`weight_bits` (the client's public assumption,
    /// [`SelectedLayout::at_lowest_levels`]), and the input compressed as far as that allows
    /// ([`dropped_bits`]), which the layout keeps. The client chooses and announces the layout
    /// (its levels are the server's to pick); the server checks it with
    /// [`SelectedLayout::with_pack`], [`SelectedLayout::with_order`] and
    /// [`SelectedLayout::with_dropped`]. `order`, if given, is the only order weighed.
    pub fn choose(
        p: &HeParams,
        (d, m): (usize, usize),
        choice: ChoiceLayout,
        (form, weight_bits): (ProductForm, u32),
        (network, server_threads): (&CostModel, usize),
        order: Option<SelectOrder>,
    ) -> HeResult<SelectedLayout> {
        let seconds = |bytes: usize| bytes as f64 * 8.0 / network.bandwidth_bps;
        let transform = transform_s(p, server_threads);
        let experts = choice.experts;
        let cost = |l: &SelectedLayout| -> HeResult<f64> {
            let (_, j, k) = l.tiling.tile_counts();
            let pack = l.tiling.pack;
            let inputs = j as f64 * seconds(compressed_ciphertext_len_at(p, l.level, l.dropped));
            // in transforms of one limb: a ciphertext lifted to the product basis (both halves),
            // a product's pointwise terms there, its rounding (three parts back from the basis)
            let basis = p.tensor_basis(l.level)?.len();
            let (lift, product, rounding) = (2 * basis, basis, 3 * basis);
            // a relinearization at `at` limbs: its digits' transforms and the two back
            let relin = |at: usize| at * (at + 2);
            // every weight tile prepared once per batch of rows (encoded, reduced, transformed
            // and given its Shoup constants: about three transforms a limb), a row's share
            let bank = (experts * j * k * 3 * l.select_level()) as f64 / l.row_batch(p, true) as f64;
            Ok(match form {
                ProductForm::Relinearized => {
                    let members = k.min(1 << pack);
                    let merges =
                        k.div_ceil(1 << pack) * (members + (pack - members.next_power_of_two().ilog2()) as usize);
                    // a merge as the linear layers price it
                    let merge = 13 * (l.out_level + 1);
                    let products = match l.order {
                        // J·K selected weights lifted and multiplied, K roundings and relinearizations
                        SelectOrder::WeightsFirst => j * k * (lift + product) + k * (rounding + relin(l.relin_level())),
                        // E selectors lifted, E·J products rounded, relinearized and transformed
                        // at the sums' level, K results to coefficients
                        SelectOrder::InputsFirst => {
                            experts * lift
                                + experts * j * (product + rounding + relin(l.level) + 2 * l.select_level())
                                + k * 2 * l.select_level()
                        }
                    };
                    inputs + ((merges * merge + products) as f64 + bank) * transform
                }
                ProductForm::Tensored => {
                    inputs
                        + bank * transform
                        + k as f64
                            * (seconds(response_shape(p, 3, l.tiling.m_w).encoded_len(p.degree()))
                                + rounding as f64 * transform)
                }
            })
        };
        let orders: &[SelectOrder] = match (form, order.as_ref()) {
            (_, Some(order)) => std::slice::from_ref(order),
            (ProductForm::Relinearized, None) => &SelectOrder::ALL,
            (ProductForm::Tensored, None) => &[SelectOrder::WeightsFirst],
        };
        let mut best: Option<(f64, SelectedLayout)> = None;
        for pack in (1..=SelectedLayout::most_pack(p, d, choice)?).rev() {
            for &order in orders {
                let layout = SelectedLayout::with_pack(p, d, m, choice, pack, form)?.with_order(order)?;
                let layout = layout.with_dropped(p, dropped_bits(p, &layout, weight_bits))?;
                let (lowest, _, kappa) = layout.at_lowest_levels(p, weight_bits)?;
                if order == SelectOrder::InputsFirst && kappa < MIN_STAT_BITS {
                    continue;
                }
                let c = cost(&lowest)?;
                if best.as_ref().is_none_or(|(b, _)| c < *b) {
                    best = Some((c, layout));
                }
            }
        }
        best.map(|(_, l)| l).ok_or_else(|| HeError::Shape(format!("no layout for a {d}×{m} selected product")))
    }

    /// The layout with d_w = 2^pack, if `p` allows it for these sizes.
    pub fn with_pack(
        p: &HeParams,
        d: usize,
        m: usize,
        choice: ChoiceLayout,
        pack: u32,
        form: ProductForm,
    ) -> HeResult<SelectedLayout> {
        let most = SelectedLayout::most_pack(p, d, choice)?;
        if m == 0 || !(1..=most).contains(&pack) {
            return Err(HeError::Shape(format!("a {d}×{m} selected product packed 2^{pack} (1..=2^{most})")));
        }
        let n = p.degree();
        let d_w = 1usize << pack;
        let tiling = Tiling { shape: MatShape { n: 1, d, m }, degree: n, n_w: 1, d_w, m_w: m.min(n / d_w), pack };
        Ok(SelectedLayout {
            tiling,
            choice,
            form,
            order: SelectOrder::WeightsFirst,
            result_bits: 64,
            level: p.moduli().len(),
            out_level: p.moduli().len(),
            dropped: 0,
        })
    }

    /// The largest packing level for rows of d values under `p` (the products' set) for
    /// `choice`: the Galois keys' levels, the room of t above 64 bits, and d itself.
    fn most_pack(p: &HeParams, d: usize, choice: ChoiceLayout) -> HeResult<u32> {
        if d == 0 {
            return Err(HeError::Shape("a selected product of empty rows".into()));
        }
        let levels = max_pack(p);
        if choice.levels() > levels {
            return Err(HeError::Unsupported {
                params: p.name(),
                what: format!(
                    "select among {} experts, {} rows per choice ciphertext (at most 2^{levels} selectors per expansion)",
                    choice.experts,
                    choice.rows_per_ciphertext(),
                ),
            });
        }
        Ok(d.next_power_of_two().trailing_zeros().clamp(1, levels.min(p.plain_bits().saturating_sub(64))))
    }

    /// The layout computing in `order`; [`SelectOrder::InputsFirst`] needs relinearized
    /// products.
    pub fn with_order(self, order: SelectOrder) -> HeResult<SelectedLayout> {
        if order == SelectOrder::InputsFirst && self.form != ProductForm::Relinearized {
            return Err(HeError::Shape(format!("{:?} selected products computed inputs first", self.form)));
        }
        Ok(SelectedLayout { order, ..self })
    }

    /// The layout with its products at the first `level` primes of q: the client's input tiles
    /// are encrypted there, the expanded selectors switched down to it, the weights prepared
    /// at it. The server picks the lowest level whose modulus holds the products' noise and
    /// its flooding ([`noise_bits`]); fewer limbs are fewer bytes up and less work. The
    /// results leave from the same level until [`SelectedLayout::with_out_level`] lowers it.
    pub fn with_level(self, p: &HeParams, level: usize) -> HeResult<SelectedLayout> {
        let full = p.moduli().len();
        if !(1..=full).contains(&level) {
            return Err(HeError::Shape(format!("selected products at {level} limbs (1..={full})")));
        }
        Ok(SelectedLayout { level, out_level: level, ..self })
    }

    /// The layout with its relinearized products switched down to the first `out_level`
    /// primes (at most the products' level) before they are packed and sealed: modulus
    /// switching keeps the noise's ratio to q until it reaches the rounding's floor, so the
    /// flooding margin survives it while every packing key switch, the masking and the
    /// re-randomization cost fewer limbs. The server picks it ([`SelectedLayout::lowest_out_level`]).
    pub fn with_out_level(self, out_level: usize) -> HeResult<SelectedLayout> {
        let lowest = match self.form {
            ProductForm::Relinearized => 1,
            ProductForm::Tensored => self.level,
        };
        if !(lowest..=self.level).contains(&out_level) {
            return Err(HeError::Shape(format!(
                "{:?} selected products at {} limbs sent from {out_level} limbs ({lowest}..={})",
                self.form, self.level, self.level
            )));
        }
        Ok(SelectedLayout { out_level, ..self })
    }

    /// The layout at the lowest level whose modulus holds the noise bound for weights below
    /// 2^`w_bits` ([`noise_bits`]) and its flooding with [`MIN_STAT_BITS`] to spare, its
    /// results leaving from the lowest level that keeps that margin
    /// ([`SelectedLayout::lowest_out_level`]); with the flooding room there and the margin κ it
    /// leaves (below [`MIN_STAT_BITS`] only where even the full modulus falls short).
    pub fn at_lowest_levels(self, p: &HeParams, w_bits: u32) -> HeResult<(SelectedLayout, u32, u32)> {
        let full = p.moduli().len();
        let kappa = |level: usize| -> HeResult<u32> {
            let bound = noise_bits(p, &self.with_level(p, level)?, w_bits).ceil() as u32;
            Ok(flood_room(p, level).saturating_sub(bound))
        };
        let mut level = full;
        for l in 1..full {
            if p.tensor_basis(l).is_ok() && kappa(l)? >= MIN_STAT_BITS {
                level = l;
                break;
            }
        }
        self.with_level(p, level)?.lowest_out_level(p, w_bits)
    }

    /// The level relinearized products are relinearized at: one prime above the out level
    /// (where the key's noise, about a prime times √N, is divided away by the last switch down),
    /// at most the products' own.
    fn relin_level(&self) -> usize {
        self.level.min(self.out_level + 1)
    }

    /// The level the selection sums run at: weights first, the products' own (the selected
    /// weights are multiplied there); inputs first, one prime above the out level, at most
    /// the products' own: the products by the selectors are relinearized at their level and
    /// switched down before the weights multiply them (the E·J·K products by plaintexts and
    /// the weights' preparation cost fewer limbs), and the prime left above the out level
    /// divides away the rounding of that switch before the weights could multiply it into
    /// the result.
    fn select_level(&self) -> usize {
        match self.order {
            SelectOrder::WeightsFirst => self.level,
            SelectOrder::InputsFirst => self.level.min(self.out_level + 1),
        }
    }

    /// The layout with the lowest out level ([`SelectedLayout::with_out_level`]) that leaves
    /// [`MIN_STAT_BITS`] between the noise bound for weights below 2^`w_bits` ([`noise_bits`])
    /// and the flooding room there ([`flood_room`]), with that room and the margin κ it leaves;
    /// the products' own level if none below it does.
    pub fn lowest_out_level(self, p: &HeParams, w_bits: u32) -> HeResult<(SelectedLayout, u32, u32)> {
        let kappa = |layout: &SelectedLayout| {
            flood_room(p, layout.out_level).saturating_sub(noise_bits(p, layout, w_bits).ceil() as u32)
        };
        let layout = (1..self.level)
            .filter_map(|out| self.with_out_level(out).ok())
            .find(|l| kappa(l) >= MIN_STAT_BITS)
            .unwrap_or(self.with_out_level(self.level)?);
        Ok((layout, flood_room(p, layout.out_level), kappa(&layout)))
    }

    /// The layout with the client's input tiles sent with c0's `dropped` lowest bits rounded
    /// away ([`crate::he::SeededCiphertext::to_compressed`]: up to [`MAX_DROPPED_BITS`], below
    /// the first prime's width), which [`noise_bits`] counts as input noise; the client picks
    /// it with [`dropped_bits`].
    pub fn with_dropped(self, p: &HeParams, dropped: u32) -> HeResult<SelectedLayout> {
        super::wire::check_dropped(p, dropped)?;
        Ok(SelectedLayout { dropped, ..self })
    }

    /// log2 of the factor the client's decrypted values carry: 2^pack when packed, none when
    /// tensored (the selectors carry none, [`ChoiceLayout::compact_params`]).
    pub fn scale(&self) -> u32 {
        match self.form {
            ProductForm::Relinearized => self.tiling.pack,
            ProductForm::Tensored => 0,
        }
    }

    /// The layout with results shared mod 2^`bits` (1..=64): they leave the server without the
    /// plaintext's bits above 2^scale·y mod 2^(scale + bits).
    pub fn with_result_bits(self, bits: u32) -> HeResult<SelectedLayout> {
        if !(1..=64).contains(&bits) {
            return Err(HeError::Shape(format!("selected products shared mod 2^{bits} (1..=64 bits)")));
        }
        Ok(SelectedLayout { result_bits: bits, ..self })
    }

    /// Bits of the plaintext a returned result carries: the scale and the result's ring, at most
    /// log t.
    pub fn plain_bits(&self, p: &HeParams) -> u32 {
        (self.scale() + self.result_bits).min(p.plain_bits())
    }

    /// The shape of each returned result with `kept` outputs.
    pub fn response_shape(&self, p: &HeParams, kept: usize) -> ShrunkShape {
        response_shape(p, self.form.parts(), kept).narrowed(self.plain_bits(p))
    }

    /// Input tiles per row (J).
    pub fn inputs(&self) -> usize {
        self.tiling.tile_counts().1
    }

    /// Output tiles per row (K).
    pub fn outputs(&self) -> usize {
        self.tiling.tile_counts().2
    }

    /// Returned results per row: the K output tiles in groups of up to 2^pack, or each alone
    /// when tensored.
    pub fn returned(&self) -> usize {
        match self.form {
            ProductForm::Relinearized => self.outputs().div_ceil(1 << self.tiling.pack),
            ProductForm::Tensored => self.outputs(),
        }
    }

    /// Packing slot of member j of group g: the group's c members spread over the 2^pack slots
    /// at stride 2^pack/c' (c' = c rounded up to a power of two) in bit-reversed order, so that
    /// members 2i and 2i + 1 meet in the first merge, every run of 2^b members forms a subtree
    /// of the packing (c − 1 merges for c members, and a lone ciphertext only where c is not a
    /// power of two) and a lone one only goes through the last log2(2^pack/c') levels.
    fn slot(&self, g: usize, j: usize) -> usize {
        let size = 1usize << self.tiling.pack;
        let members = (self.outputs() - g * size).min(size).next_power_of_two();
        bit_reverse(j, members.trailing_zeros()) * (size / members)
    }

    /// The coefficients of returned result `g` that hold the row's outputs, with the column
    /// of each: output kk of member j (tile k = g·2^pack + j) sits at kk·d_w + slot(j); of a
    /// tensored result (tile g), where the product put it, kk·d_w + d_w − 1.
    pub fn returned_positions(&self, g: usize) -> Vec<(usize, usize)> {
        let t = &self.tiling;
        if self.form == ProductForm::Tensored {
            let cols = g * t.m_w..((g + 1) * t.m_w).min(t.shape.m);
            return cols.enumerate().map(|(kk, col)| (kk * t.d_w + t.d_w - 1, col)).collect();
        }
        let size = 1usize << t.pack;
        let mut out = Vec::new();
        for j in 0..size {
            let k = g * size + j;
            if k >= self.outputs() {
                break;
            }
            let cols = k * t.m_w..((k + 1) * t.m_w).min(t.shape.m);
            out.extend(cols.enumerate().map(|(kk, col)| (kk * t.d_w + self.slot(g, j), col)));
        }
        out
    }

    /// A decrypted output value → the client's share (y − R mod 2^64).
    pub fn decode(&self, value: u128) -> u64 {
        (value >> self.scale()) as u64 & crate::ring::mask(self.result_bits)
    }
}

/// How the rows' one-hot vectors reach the server: the client's XOR shares of 2^g rows share
/// one compact ciphertext, bit e of row r at X^(r + 2^g·bitrev(e)) ([`ChoiceLayout::encode`]);
/// the expansion's first g levels separate the rows ([`ChoiceLayout::separate`]), its next
/// ⌈log2 E⌉ the experts, the bit reversal making every subtree a run of experts. Each level
/// doubles the selectors' noise (their message's doubling is undone by the compact
/// ciphertexts' larger t, [`ChoiceLayout::compact_params`]), so rows share a ciphertext while
/// all ℓ = g + ⌈log2 E⌉ levels stay within the Galois keys' 2^[`MAX_GALOIS_LEVELS`] selectors —
/// the noise of E = 1024 alone: at the SPU shape (E = 8) 16 rows travel in one ciphertext
/// instead of sixteen (11.4 → 0.7 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChoiceLayout {
    /// E.
    pub experts: usize,
    /// g: the expansion levels that separate the rows sharing one compact ciphertext.
    pub row_levels: u32,
}

impl ChoiceLayout {
    /// The layout for `rows` rows among `experts`: as many rows per ciphertext as the levels allow.
    pub fn new(rows: usize, experts: usize) -> HeResult<ChoiceLayout> {
        ChoiceLayout::with_row_levels(experts, 0)?;
        let room = MAX_GALOIS_LEVELS - ChoiceLayout::expert_levels_of(experts);
        ChoiceLayout::with_row_levels(experts, rows.max(1).next_power_of_two().trailing_zeros().min(room))
    }

    /// The layout with 2^`row_levels` rows per compact ciphertext.
    pub fn with_row_levels(experts: usize, row_levels: u32) -> HeResult<ChoiceLayout> {
        let levels = ChoiceLayout::expert_levels_of(experts).checked_add(row_levels);
        if experts == 0 || levels.is_none_or(|l| l > MAX_GALOIS_LEVELS) {
            return Err(HeError::Shape(format!(
                "a choice among {experts} experts with 2^{row_levels} rows per ciphertext (at most 2^{MAX_GALOIS_LEVELS} selectors)"
            )));
        }
        Ok(ChoiceLayout { experts, row_levels })
    }

    fn expert_levels_of(experts: usize) -> u32 {
        experts.max(1).next_power_of_two().trailing_zeros()
    }

    /// ⌈log2 E⌉: the expansion levels that separate the experts.
    pub fn expert_levels(&self) -> u32 {
        ChoiceLayout::expert_levels_of(self.experts)
    }

    /// ℓ = g + ⌈log2 E⌉: all levels of the expansion (each doubles the selectors' noise).
    pub fn levels(&self) -> u32 {
        self.row_levels + self.expert_levels()
    }

    /// Rows per compact ciphertext (2^g).
    pub fn rows_per_ciphertext(&self) -> usize {
        1 << self.row_levels
    }

    /// Compact ciphertexts that carry `rows` rows.
    pub fn ciphertexts(&self, rows: usize) -> usize {
        rows.div_ceil(self.rows_per_ciphertext())
    }

    /// The plaintext of one compact ciphertext: `bits` holds the XOR shares of up to 2^g rows
    /// (E bits each, row-major), row r's bit e at X^(r + 2^g·bitrev(e)).
    pub fn encode(&self, bits: &[bool]) -> HeResult<Vec<u64>> {
        let (e_n, per) = (self.experts, self.rows_per_ciphertext());
        if !bits.len().is_multiple_of(e_n) || bits.len() > per * e_n {
            return Err(HeError::Shape(format!("{} one-hot bits are not up to {per} rows of {e_n}", bits.len())));
        }
        let mut poly = vec![0u64; 1 << self.levels()];
        for (i, &b) in bits.iter().enumerate() {
            let (r, e) = (i / e_n, i % e_n);
            poly[r + per * bit_reverse(e, self.expert_levels())] = u64::from(b);
        }
        Ok(poly)
    }

    /// The server's first g expansion levels on one compact ciphertext: its 2^g rows' own
    /// compact ciphertexts (row r's bit e at X^(2^g·bitrev(e)), doubled g times), full level,
    /// coefficient form; 2^g − 1 key switches.
    pub fn separate(
        &self,
        p: &HeParams,
        galois: &GaloisKeys,
        compact: &Ciphertext,
        be: &dyn Backend,
    ) -> HeResult<Vec<Ciphertext>> {
        galois.expand(p, compact, self.row_levels, be)
    }

    /// The parameter set the client encrypts the compact ciphertexts under: the products' set
    /// `p` ([`product_params`]) with t·2^ℓ. The expansion multiplies the message by 2^ℓ, so each
    /// selector comes out as an encryption of the bit itself under t (⌊q·b/(2^ℓ·t)⌉·2^ℓ is
    /// ⌊q·b/t⌉ within 2^ℓ, far below the expansion's noise): the products' t carries no factor
    /// of the selectors, and every bit of t spared is a bit less of product noise and a bit
    /// more of flooding room.
    pub fn compact_params(&self, p: &HeParams) -> HeResult<Arc<HeParams>> {
        p.with_plain_bits(p.plain_bits() + self.levels())
    }
}

/// The parameter set selected products run at: `p` with t = 2^(64 + 10), what 64-bit results
/// need above the deepest packing's factor (2^10 tiles, the Galois keys' levels), at most
/// `p`'s own t less the 2^10 selectors of one expansion ([`ChoiceLayout::compact_params`]).
pub fn product_params(p: &HeParams) -> HeResult<Arc<HeParams>> {
    let bits = 64 + MAX_GALOIS_LEVELS;
    if p.plain_bits() < bits + MAX_GALOIS_LEVELS {
        return Err(HeError::Unsupported {
            params: p.name(),
            what: format!("selected products (t = 2^{} below 2^{})", p.plain_bits(), bits + MAX_GALOIS_LEVELS),
        });
    }
    p.with_plain_bits(bits)
}

/// The server's keys for selected products: the client's public key (re-randomization),
/// Galois keys (expansion and packing), and the relinearization key
/// ([`ProductForm::Relinearized`]) or the square key ([`ProductForm::Tensored`]).
#[derive(Debug, Clone, Copy)]
pub struct SelectKeys<'a> {
    /// Re-randomizes every result.
    pub pk: &'a PublicKey,
    /// Expands the selectors and packs the results.
    pub galois: &'a GaloisKeys,
    /// Relinearizes the ciphertext products.
    pub relin: Option<&'a RelinKey>,
    /// Re-randomizes the part under s² of products that are not relinearized.
    pub square: Option<&'a SquareKey>,
}

impl SelectKeys<'_> {
    /// Whether these keys serve `form`; the error names the missing key.
    pub fn check(&self, form: ProductForm) -> HeResult<()> {
        match (form, self.relin, self.square) {
            (ProductForm::Relinearized, None, _) => {
                Err(HeError::Shape("relinearized selected products need the client's relinearization key".into()))
            }
            (ProductForm::Tensored, _, None) => {
                Err(HeError::Shape("tensored selected products need the client's square key".into()))
            }
            _ => Ok(()),
        }
    }
}

/// A returned ciphertext's bytes and the server's share (the mask) at each output column.
pub type SelectedResponse = (Vec<u8>, Vec<(u64, usize)>);

/// Bits of an upper bound on the noise of a selected product's result before flooding, at
/// the level it leaves from, for weights below 2^`w_bits` in magnitude (each factor bounded at
/// [`tail_deviations`] standard deviations, the 2^-[`crate::he::TAIL_BITS`] tail of the linear layers'
/// bound):
/// - an expanded selector: 2^ℓ times a fresh encryption's noise plus ℓ key switches (each
///   k·N·21·p_i/P, the special prime as large as the primes of q) — 2^(ℓ + log2(k·N) + 6);
/// - an input tile: a fresh encryption's noise (≤ 21) plus the compression's rounding of c0
///   (≤ 2^(dropped−1));
/// - a ciphertext product: t·(v_a·r_b + v_b·r_a) + m_a·v_b + m_b·v_a with r ≈ √N·‖s‖ (the
///   quotient of the lift), dominated by t·√N·(v_a + v_b);
/// - a product by weights: Σ over the d_w·m_w coefficients of each weight tile of at most
///   2^w_bits times the ciphertext's noise, and over the tiles summed;
/// - [`SelectOrder::WeightsFirst`]: the selection sum Σ_e Ŵ_e·v_e (E weight tiles) times the
///   row in one product, summed over the J input tiles; switched down to one prime above the
///   out level (the noise divided by the dropped primes, plus the rounding
///   (1 + ‖s‖₁ + ‖s²‖₁)/2), relinearized there (the key's Σ_i \[d2\]_(q_i)·e_i over that
///   level's digits) and switched down to the out level (rounding (1 + ‖s‖₁)/2);
/// - [`SelectOrder::InputsFirst`]: each selector times each input tile, relinearized at the
///   products' level, then the product by the E·J stacked weight tiles, switched down to the
///   out level;
/// - [`ProductForm::Tensored`]: the weights-first product as it is;
/// - the packing: 2^pack, and a key switch per level at the out level.
pub fn noise_bits(p: &HeParams, layout: &SelectedLayout, w_bits: u32) -> f64 {
    let t = &layout.tiling;
    let (n, k) = (p.degree() as f64, p.moduli().len() as f64);
    let tail = tail_deviations().log2();
    let keyswitch = (k * n * 21.0).log2();
    let selector = layout.choice.levels() as f64 + keyswitch + 1.0;
    // the noise of a product by E weight tiles of d_w·m_w coefficients, `tiles` times over
    let by_weights = |bits: f64, tiles: usize| {
        bits + w_bits as f64 + 0.5 * ((layout.choice.experts * tiles * t.d_w * t.m_w) as f64).log2() + tail
    };
    let rounding = if layout.dropped == 0 { 0.0 } else { 2f64.powi(layout.dropped as i32 - 1) };
    let input = 21.0 + rounding;
    let product = |v_a: f64, terms: usize| {
        p.plain_bits() as f64 + 0.5 * n.log2() + tail + (2f64.powf(v_a) + input).log2() + 1.0 + (terms as f64).log2()
    };
    let log_q = |limbs: usize| -> f64 { p.moduli()[..limbs].iter().map(|m| (m.value() as f64).log2()).sum() };
    // switched from `from` to `to` limbs: divided by the dropped primes, plus the rounding
    let switched = |bits: f64, (from, to): (usize, usize), rounding: f64| match from > to {
        true => log_sum(&[bits - (log_q(from) - log_q(to)), rounding]),
        false => bits,
    };
    // the relinearization key's noise at `at` limbs
    let relin = |at: usize| {
        let widest = p.moduli()[..at].iter().map(|m| m.bits()).max().unwrap_or(0) as f64;
        (at as f64).log2() + 0.5 * n.log2() + tail + 21f64.log2() + widest
    };
    // (1 + ‖s‖₁ + ‖s²‖₁)/2 for three parts, (1 + ‖s‖₁)/2 for two, ternary s
    let (three, two) = ((1.0 + n + n * n.sqrt()).log2() - 1.0, (1.0 + n).log2() - 1.0);
    let out = match (layout.form, layout.order) {
        (ProductForm::Tensored, _) => {
            return product(by_weights(selector, 1), layout.inputs()) + t.pack as f64 + 1.0;
        }
        (ProductForm::Relinearized, SelectOrder::WeightsFirst) => {
            let at = layout.relin_level();
            let product = product(by_weights(selector, 1), layout.inputs());
            let relinearized = log_sum(&[switched(product, (layout.level, at), three), relin(at)]);
            switched(relinearized, (at, layout.out_level), two)
        }
        (ProductForm::Relinearized, SelectOrder::InputsFirst) => {
            let at = layout.select_level();
            let expanded = log_sum(&[product(selector, 1), three, relin(layout.level)]);
            let selected = by_weights(switched(expanded, (layout.level, at), two), layout.inputs());
            switched(selected, (at, layout.out_level), two)
        }
    };
    log_sum(&[out, (layout.out_level as f64 * n * 21.0).log2()]) + t.pack as f64 + 1.0
}

/// log2(Σ 2^b).
fn log_sum(bits: &[f64]) -> f64 {
    let top = bits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    top + bits.iter().map(|b| 2f64.powf(b - top)).sum::<f64>().log2()
}

/// Bits of flooding noise a result at the first `limbs` primes of q holds: log q less the
/// plaintext's bits and 4 (the shrunk result must still decrypt), at most [`MAX_FLOOD_BITS`].
pub fn flood_room(p: &HeParams, limbs: usize) -> u32 {
    let log_q: f64 = p.moduli()[..limbs.min(p.moduli().len())].iter().map(|m| (m.value() as f64).log2()).sum();
    (log_q.floor() as u32).saturating_sub(p.plain_bits() + 4).min(MAX_FLOOD_BITS)
}

/// Bits of c0 the client's input tiles drop for `layout` ([`SelectedLayout::with_dropped`]):
/// the most that raise the noise bound by at most one bit for weights of up to
/// 2^`weight_bits` (public: the client's assumption, never the server's actual bound, which
/// its flooding covers whatever the client dropped). The rounding adds to the input's noise,
/// which enters the product as the selected weights' does: while it stays below theirs it is
/// nearly free. At the SPU shape (d = 768, d_ff = 3072, E = 8, five primes) the client drops
/// 56 bits of 290 per coefficient: 19% fewer input bytes for 4–5 bits of the server's κ.
pub fn dropped_bits(p: &HeParams, layout: &SelectedLayout, weight_bits: u32) -> u32 {
    let limit = MAX_DROPPED_BITS.min(p.moduli()[0].bits() - 1);
    let bound = |k: u32| noise_bits(p, &SelectedLayout { dropped: k, ..*layout }, weight_bits);
    (0..=limit).rev().find(|&k| bound(k) <= bound(0) + 1.0).unwrap_or(0)
}

/// What bounds the server's memory for any E, per batch of rows: the rows' selected weights
/// when they are selected all at once (`sums`), one expert chunk's prepared weights and
/// selectors (`chunk`); and when the output tiles stream in groups, the rows' own state —
/// lifted inputs and finished output tiles — (`rows`) and one group's selected and prepared
/// weights (`group`).
#[derive(Debug, Clone, Copy)]
struct Budget {
    sums: usize,
    chunk: usize,
    rows: usize,
    group: usize,
}

const BUDGET: Budget = Budget { sums: 512 << 20, chunk: 512 << 20, rows: 352 << 20, group: 128 << 20 };

/// i reversed in its low `bits` bits.
fn bit_reverse(i: usize, bits: u32) -> usize {
    if bits == 0 { 0 } else { i.reverse_bits() >> (usize::BITS - bits) }
}

/// Bytes of expanded selectors the server keeps between the products of one choice (every
/// matrix of the chosen experts), so that each row is expanded once, not once per matrix.
const KEEP_BYTES: usize = 4 << 30;

/// Selected weights lifted together for one tensor sum of an output tile (each 2·|Q∪P|·N words:
/// 2.9 MB at the SPU shape's five primes).
const LIFTED_AT_ONCE: usize = 8;

/// One row's encrypted one-hot on the server: its compact ciphertext separated from the
/// client's ([`ChoiceLayout::separate`]: the client's XOR share, bit e at X^(2^g·bitrev(e))),
/// the server's own share (E bits), and the selectors expanded from them
/// (own share folded in, NTT form), kept for the row's next products when the row is among
/// those the budget allows ([`RowChoice::kept_rows`]).
#[derive(Debug)]
pub struct RowChoice {
    compact: Ciphertext,
    own: Vec<bool>,
    keep: bool,
    expanded: std::sync::Mutex<Vec<Option<Arc<Ciphertext>>>>,
}

impl RowChoice {
    /// A row's choice; `keep`: whether to keep its selectors once expanded.
    pub fn new(compact: Ciphertext, own: Vec<bool>, keep: bool) -> RowChoice {
        let expanded = std::sync::Mutex::new(vec![None; if keep { own.len() } else { 0 }]);
        RowChoice { compact, own, keep, expanded }
    }

    /// How many rows of a choice among `experts` keep their expanded selectors within
    /// 4 GiB (`KEEP_BYTES`).
    pub fn kept_rows(p: &HeParams, experts: usize) -> usize {
        KEEP_BYTES / (experts.max(1) * ciphertext_bytes(p, p.moduli().len()))
    }

    /// The kept selectors of `range`, if all are there at `level` limbs or more.
    fn kept(&self, p: &HeParams, range: std::ops::Range<usize>, level: usize) -> Option<Vec<Arc<Ciphertext>>> {
        let expanded = self.expanded.lock().unwrap_or_else(|e| e.into_inner());
        expanded.get(range)?.iter().map(|ct| ct.as_ref().filter(|ct| ct.limbs(p) >= level).cloned()).collect()
    }

    /// Whether every selector is kept at `level` limbs or more (nothing left to expand).
    fn all_kept(&self, p: &HeParams, level: usize) -> bool {
        self.keep && self.kept(p, 0..self.own.len(), level).is_some()
    }

    /// Keeps the selectors of the experts from `first` on, if this row keeps its selectors.
    fn keep(&self, first: usize, cts: &[Arc<Ciphertext>]) {
        if self.keep {
            let mut expanded = self.expanded.lock().unwrap_or_else(|e| e.into_inner());
            for (slot, ct) in expanded[first..].iter_mut().zip(cts) {
                *slot = Some(Arc::clone(ct));
            }
        }
    }
}

/// One row of a selected product on the server: its J encrypted input tiles with the server's
/// share added, and the row's choice of expert.
#[derive(Debug, Clone, Copy)]
pub struct SelectedRow<'a> {
    /// The input tiles.
    pub x: &'a [Ciphertext],
    /// The row's encrypted one-hot.
    pub choice: &'a RowChoice,
}

impl SelectedLayout {
    /// Rows the server takes at once: as many as their lifted inputs and held output tiles
    /// ([`SelectedLayout::held_tiles`]) fit 352 MiB and, the larger of two ways to bound the rest, either their selectors stream
    /// their output tiles in groups ([`SelectedLayout::grouped`]: rows that keep them,
    /// [`RowChoice`]) or all J·K selected weights of the batch fit 512 MiB. Each batch prepares
    /// every expert's weights once, so fewer batches are less work: grouping wins where a row's
    /// selected weights are many (J·K = 144 at the SPU shape: 7 rows against 2), selecting all
    /// at once where the experts are (E = 128 at d = 256: 16 rows against 1, whose selectors
    /// and bank of every expert fill a chunk).
    fn row_batch(&self, p: &HeParams, kept: bool) -> usize {
        let (j, k) = (self.inputs(), self.outputs());
        let lifted = match self.order {
            SelectOrder::WeightsFirst => j * lifted_bytes(p, self.level),
            SelectOrder::InputsFirst => 0,
        };
        let per_row = lifted + self.held_tiles() * self.tile_bytes(p);
        let most = BUDGET.rows / per_row;
        let grouped = (1..=most).rev().find(|&rows| self.grouped(p, rows, kept, BUDGET)).unwrap_or(0);
        // all K tiles' sums, and, inputs first, the selectors' products beside them
        let held = self.sums_per_tile() * k
            + match self.order {
                SelectOrder::WeightsFirst => 0,
                SelectOrder::InputsFirst => self.choice.experts * j,
            };
        let whole = (BUDGET.sums / (held * ciphertext_bytes(p, self.select_level()))).min(most);
        grouped.max(whole).max(1)
    }

    /// Ciphertexts per row and expert that a selection sum reads: the selector, or, inputs
    /// first, its products with the J input tiles (held beside the selection sums for every
    /// group of output tiles; the selectors of weights first are counted where they are kept).
    fn selectors_per_expert(&self) -> usize {
        match self.order {
            SelectOrder::WeightsFirst => 1,
            SelectOrder::InputsFirst => self.inputs(),
        }
    }

    /// Selection sums per row and output tile: its J selected weights, or the tile itself.
    fn sums_per_tile(&self) -> usize {
        match self.order {
            SelectOrder::WeightsFirst => self.inputs(),
            SelectOrder::InputsFirst => 1,
        }
    }

    /// The server's batches of rows for `choices` (in order): runs of rows that keep their
    /// selectors, or do not, each cut into the fewest batches the server's memory budget
    /// allows, of even sizes (rows that keep them stream their output tiles in groups,
    /// [`selected_batch`]).
    pub fn row_batches(&self, p: &HeParams, choices: &[RowChoice]) -> Vec<std::ops::Range<usize>> {
        let mut batches = Vec::new();
        let mut first = 0;
        while first < choices.len() {
            let kept = choices[first].keep;
            let run = choices[first..].iter().take_while(|c| c.keep == kept).count();
            let size = run.div_ceil(run.div_ceil(self.row_batch(p, kept)));
            batches.extend((first..first + run).step_by(size).map(|b| b..(b + size).min(first + run)));
            first += run;
        }
        batches
    }

    /// Finished output tiles a row holds at once: relinearized, its packings' partial merges
    /// (at most one per level and packing, [`Packing`]); tensored, all K.
    fn held_tiles(&self) -> usize {
        match self.form {
            ProductForm::Relinearized => self.outputs().min(self.returned() * (self.tiling.pack as usize + 1)),
            ProductForm::Tensored => self.outputs(),
        }
    }

    /// Bytes of one finished output tile, held at the out level: a relinearized ciphertext, or
    /// three parts.
    fn tile_bytes(&self, p: &HeParams) -> usize {
        ciphertext_bytes(p, self.out_level) * self.form.parts() / 2
    }

    /// Whether a batch of `rows` rows streams its output tiles in groups: when the rows keep
    /// their selectors and those, in the backend's layout, fit one chunk beside one output
    /// tile's weights of every expert — built once, they then serve every group, and each
    /// weight polynomial is prepared once per batch. Otherwise a group after the first would
    /// expand or lay out the selectors again.
    fn grouped(&self, p: &HeParams, rows: usize, kept: bool, budget: Budget) -> bool {
        let selectors =
            rows * self.choice.experts * self.selectors_per_expert() * ciphertext_bytes(p, self.select_level());
        kept && selectors + self.choice.experts * self.bank_bytes(p, 1) <= budget.chunk
    }

    /// Bytes of one expert's prepared weights for `tiles` output tiles (J input tiles each).
    fn bank_bytes(&self, p: &HeParams, tiles: usize) -> usize {
        self.inputs() * tiles * self.select_level() * p.degree() * 16
    }

    /// Output tiles per group for a batch of `rows` rows: all K, or, grouped, as many as both
    /// the rows' selected weights (J ciphertexts per row and tile) and every expert's prepared
    /// weights fit the group's budget (how many does not change the work, only the calls) and
    /// the prepared weights still fit one chunk beside the selectors.
    fn tile_group(&self, p: &HeParams, rows: usize, kept: bool, budget: Budget) -> usize {
        let k = self.outputs();
        if !self.grouped(p, rows, kept, budget) {
            return k;
        }
        let bank = self.choice.experts * self.bank_bytes(p, 1);
        let per_tile = (rows * self.sums_per_tile() * ciphertext_bytes(p, self.select_level())).max(bank);
        let selectors =
            rows * self.choice.experts * self.selectors_per_expert() * ciphertext_bytes(p, self.select_level());
        let beside = (budget.chunk - selectors) / bank;
        (budget.group / per_tile).min(beside).clamp(1, k)
    }

    /// Experts per chunk for a batch of `rows` rows and groups of `tiles` output tiles: a power
    /// of two whose prepared weights and selectors fit `budget` bytes.
    fn chunk(&self, p: &HeParams, rows: usize, tiles: usize, budget: usize) -> usize {
        let per_expert =
            self.bank_bytes(p, tiles) + rows * self.selectors_per_expert() * ciphertext_bytes(p, self.select_level());
        let fit = (budget / per_expert).max(1);
        let all = 1usize << self.choice.expert_levels();
        if fit >= self.choice.experts { all } else { 1 << fit.ilog2() }
    }
}

/// Bytes of a ciphertext at `level` limbs in memory.
fn ciphertext_bytes(p: &HeParams, level: usize) -> usize {
    2 * level * p.degree() * 8
}

/// Bytes of a ciphertext at `level` limbs lifted to its product basis.
fn lifted_bytes(p: &HeParams, level: usize) -> usize {
    2 * p.tensor_basis(level).map_or(2 * level + 1, |b| b.len()) * p.degree() * 8
}

/// The server's side of a batch of rows ([`SelectedLayout::row_batches`]): `experts` the E
/// matrices (d×m, row-major, ring values read as signed), one seed per row for its masks.
/// Returns each row's responses, flooded with `flood` bits.
///
/// The output tiles stream in groups (when the rows keep their selectors); per group, the experts
/// are taken in chunks (contiguous, thanks to the bit-reversed placement of the selectors: the
/// first log2(E/chunk) levels of the expansion separate the chunks), so that each weight
/// polynomial is transformed once per batch, not once per row, and the group's selected weights
/// are multiplied by the rows' inputs (lifted once per batch) before the next group's are
/// summed in the same buffers.
#[allow(clippy::too_many_arguments)]
pub fn selected_batch(
    p: &HeParams,
    keys: SelectKeys<'_>,
    layout: &SelectedLayout,
    rows: &[SelectedRow<'_>],
    experts: &[&[u64]],
    flood: u32,
    seeds: &[[u8; 32]],
    be: &dyn Backend,
) -> HeResult<Vec<Vec<SelectedResponse>>> {
    selected_batch_within(p, keys, layout, rows, experts, (flood, seeds), be, BUDGET)
}

#[allow(clippy::too_many_arguments)]
fn selected_batch_within(
    p: &HeParams,
    keys: SelectKeys<'_>,
    layout: &SelectedLayout,
    rows: &[SelectedRow<'_>],
    experts: &[&[u64]],
    (flood, seeds): (u32, &[[u8; 32]]),
    be: &dyn Backend,
    budget: Budget,
) -> HeResult<Vec<Vec<SelectedResponse>>> {
    if seeds.len() != rows.len() {
        return Err(HeError::Shape(format!("{} seeds for {} rows", seeds.len(), rows.len())));
    }
    let results = batch_results(p, keys, layout, rows, experts, be, budget)?;
    par_map(rows.len(), |r| match &results[r] {
        RowResults::Packed(cts) => seal_row(p, keys, layout, cts, flood, seeds[r], be),
        RowResults::Tensored(sums) => seal_row(p, keys, layout, sums, flood, seeds[r], be),
    })
    .into_iter()
    .collect()
}

/// Whether `experts` are E matrices of d×m for `layout`; the error names the first that is not.
pub fn check_experts(layout: &SelectedLayout, experts: &[&[u64]]) -> HeResult<()> {
    let (e, d, m) = (layout.choice.experts, layout.tiling.shape.d, layout.tiling.shape.m);
    if experts.len() != e {
        return Err(HeError::Shape(format!("a selection among {e} experts given {} matrices", experts.len())));
    }
    match experts.iter().position(|w| w.len() != d * m) {
        Some(bad) => {
            Err(HeError::Shape(format!("expert {bad}'s matrix has {} values, {d}×{m} expected", experts[bad].len())))
        }
        None => Ok(()),
    }
}

/// A row's results before sealing: packed two-part ciphertexts, or its output tiles' three-part
/// sums.
#[derive(Debug)]
enum RowResults {
    Packed(Vec<Ciphertext>),
    Tensored(Vec<Tensored>),
}

/// Every row's products x·Ŵ in the layout's form. Relinearized, each output tile joins its
/// row's packing as soon as it is finished ([`Packing`]): a row holds a few partial packings
/// instead of its K tiles, so more rows fit a batch.
fn batch_results(
    p: &HeParams,
    keys: SelectKeys<'_>,
    layout: &SelectedLayout,
    rows: &[SelectedRow<'_>],
    experts: &[&[u64]],
    be: &dyn Backend,
    budget: Budget,
) -> HeResult<Vec<RowResults>> {
    keys.check(layout.form)?;
    match keys.relin.filter(|_| layout.form == ProductForm::Relinearized) {
        Some(relin) => {
            let t = &layout.tiling;
            let (size, returned) = (1usize << t.pack, layout.returned());
            // member j of a packing is moved to its slot's coefficients by X^(2N − (d_w − 1))
            let shift = 2 * p.degree() - (t.d_w - 1);
            let packings: Vec<Packing<'_>> =
                (0..rows.len() * returned).map(|_| Packing::new(keys.galois, t.pack)).collect::<HeResult<_>>()?;
            batch_tiles(p, keys, layout, rows, experts, be, budget, |r, k, tile| {
                let mut ct = match tile {
                    OutputTile::Tensored(mut t) => {
                        t.switch_down(p, layout.relin_level(), be)?;
                        t.relinearize(p, relin, be)?
                    }
                    OutputTile::Linear(ct) => ct,
                };
                while ct.limbs(p) > layout.out_level {
                    ct.drop_last_modulus(p, be)?;
                }
                ct.c0.to_coeff(p, be)?;
                ct.c1.to_coeff(p, be)?;
                let member = Ciphertext { c0: ct.c0.monomial_mul(p, shift), c1: ct.c1.monomial_mul(p, shift) };
                let (g, j) = (k / size, k % size);
                packings[r * returned + g].add(p, layout.slot(g, j), member, be)
            })?;
            let mut packed = par_map(packings.len(), |i| packings[i].take(p, be)).into_iter();
            (0..rows.len())
                .map(|_| packed.by_ref().take(returned).collect::<HeResult<_>>().map(RowResults::Packed))
                .collect()
        }
        None => {
            let k_n = layout.outputs();
            let cells: Vec<std::sync::Mutex<Option<Tensored>>> =
                (0..rows.len() * k_n).map(|_| std::sync::Mutex::new(None)).collect();
            batch_tiles(p, keys, layout, rows, experts, be, budget, |r, k, tile| match tile {
                OutputTile::Tensored(t) => {
                    *cells[r * k_n + k].lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                    Ok(())
                }
                OutputTile::Linear(_) => {
                    Err(HeError::Shape("a tensored selected product computed inputs first".into()))
                }
            })?;
            let mut tiles = cells.into_iter().enumerate().map(|(i, cell)| {
                let tile = cell.into_inner().unwrap_or_else(|e| e.into_inner());
                tile.ok_or_else(|| HeError::Shape(format!("no output tile {} of row {}", i % k_n, i / k_n)))
            });
            (0..rows.len())
                .map(|_| tiles.by_ref().take(k_n).collect::<HeResult<_>>().map(RowResults::Tensored))
                .collect()
        }
    }
}

/// One output tile as a batch computes it: weights first, the sum of its J ciphertext products
/// (three parts, coefficient form); inputs first, a two-part ciphertext (NTT form).
enum OutputTile {
    Tensored(Tensored),
    Linear(Ciphertext),
}

/// Every row's K output tiles, each Σ_j [\[Ŵ_(j,k)\]]·x_j (weights first) or
/// Σ_(e,j) Ŵ_(e,j,k)·[\[t_e·x_j\]] (inputs first), passed to `absorb(row, k, tile)` in the task
/// that computed it.
#[allow(clippy::too_many_arguments)]
fn batch_tiles(
    p: &HeParams,
    keys: SelectKeys<'_>,
    layout: &SelectedLayout,
    rows: &[SelectedRow<'_>],
    experts: &[&[u64]],
    be: &dyn Backend,
    budget: Budget,
    absorb: impl Fn(usize, usize, OutputTile) -> HeResult<()> + Sync + Send,
) -> HeResult<()> {
    let (j_n, k_n, e) = (layout.inputs(), layout.outputs(), layout.choice.experts);
    check_experts(layout, experts)?;
    if let Some(bad) = rows.iter().position(|r| r.x.len() != j_n || r.choice.own.len() != e) {
        return Err(HeError::Shape(format!("row {bad} needs {j_n} input tiles and {e} selector bits")));
    }
    let level = layout.level;
    if let Some(bad) = rows.iter().position(|r| r.x.iter().any(|x| x.limbs(p) != level)) {
        return Err(HeError::Shape(format!("row {bad}'s input tiles are not at the layout's {level} limbs")));
    }
    if rows.is_empty() {
        return Ok(());
    }
    let kept = rows.iter().all(|r| r.choice.keep);
    let group = layout.tile_group(p, rows.len(), kept, budget);
    let chunk = layout.chunk(p, rows.len(), group, budget.chunk);
    tracing::debug!(rows = rows.len(), group, chunk, "selected batch");
    // weights first, every group multiplies the rows' inputs: lifted once for all; inputs
    // first, each row's are lifted where its selectors multiply them
    let xs: Vec<Lifted> = match layout.order {
        SelectOrder::WeightsFirst => rows.iter().map(|r| Lifted::of(r.x, p, be)).collect::<HeResult<_>>()?,
        SelectOrder::InputsFirst => Vec::new(),
    };
    let selection = RowSelection::new(p, keys, layout, rows, chunk, be)?;
    let per_tile = layout.sums_per_tile();
    let mut sums = SelectionSums::new(p, rows.len(), per_tile * group, layout.select_level(), be)?;
    let mut spare = None;
    for k0 in (0..k_n).step_by(group) {
        let ks = k0..(k0 + group).min(k_n);
        if sums.outputs() != per_tile * ks.len() {
            sums = SelectionSums::new(p, rows.len(), per_tile * ks.len(), layout.select_level(), be)?;
        }
        selection.select(p, layout, experts, ks.clone(), &mut sums, &mut spare, be)?;
        // per row, weights first: the group's selected weights [[Ŵ_(j,k)]] at (k − k0)·J + j;
        // inputs first: the group's output tiles at k − k0
        let sums_out = sums.take(p, be)?;
        let done = match layout.order {
            SelectOrder::WeightsFirst => par_map(rows.len() * ks.len(), |i| {
                let (r, kk) = (i / ks.len(), i % ks.len());
                let weights = &sums_out[r][kk * j_n..][..j_n];
                absorb(r, ks.start + kk, OutputTile::Tensored(tile_product(p, level, &xs[r], weights, be)?))
            }),
            SelectOrder::InputsFirst => {
                let cells: Vec<std::sync::Mutex<Option<Ciphertext>>> =
                    sums_out.into_iter().flatten().map(|ct| std::sync::Mutex::new(Some(ct))).collect();
                par_map(cells.len(), |i| {
                    let ct = cells[i].lock().unwrap_or_else(|e| e.into_inner()).take();
                    let ct = ct.ok_or_else(|| HeError::Shape(format!("no output tile {i}")))?;
                    absorb(i / ks.len(), ks.start + i % ks.len(), OutputTile::Linear(ct))
                })
            }
        };
        done.into_iter().collect::<HeResult<()>>()?;
    }
    Ok(())
}

/// A batch's selectors: the first levels of every row's expansion (unless the row kept all
/// its selectors), and, when one chunk covers every expert, all rows' selectors in the
/// backend's layout, built once for every group of output tiles.
struct RowSelection<'r, 'a> {
    rows: &'r [SelectedRow<'a>],
    keys: SelectKeys<'r>,
    chunk: usize,
    outer: u32,
    inner: u32,
    /// Per row, node c holds the chunk bitrev(c).
    nodes: Vec<Vec<Ciphertext>>,
    whole: Option<Selectors>,
}

impl<'r, 'a> RowSelection<'r, 'a> {
    fn new(
        p: &HeParams,
        keys: SelectKeys<'r>,
        layout: &SelectedLayout,
        rows: &'r [SelectedRow<'a>],
        chunk: usize,
        be: &dyn Backend,
    ) -> HeResult<Self> {
        // a row's compact ciphertext went through the choice's first g levels (its rows
        // separated); the experts' levels follow: `outer` of them per row, `inner` per chunk
        let (first, experts) = (layout.choice.row_levels, layout.choice.expert_levels());
        let outer = experts - chunk.trailing_zeros();
        let inner = experts - outer;
        let nodes = par_map(rows.len(), |r| match rows[r].choice.all_kept(p, layout.level) {
            true => Ok(Vec::new()),
            false => keys.galois.expand_from(p, &rows[r].choice.compact, first, outer, be),
        })
        .into_iter()
        .collect::<HeResult<_>>()?;
        let mut selection = RowSelection { rows, keys, chunk, outer, inner, nodes, whole: None };
        if outer == 0 {
            selection.whole = Some(selection.chunk_selectors(p, layout, 0, be)?);
        }
        Ok(selection)
    }

    /// The experts of chunk `c`.
    fn range(&self, c: usize, experts: usize) -> std::ops::Range<usize> {
        c * self.chunk..((c + 1) * self.chunk).min(experts)
    }

    /// Every row's selectors for chunk `c` in the backend's layout: kept, or the rest of its
    /// expansion with its own share folded in (NTT form); inputs first, each times each of the
    /// row's input tiles, relinearized (expert-major: expert i's tile j at i·J + j).
    fn chunk_selectors(
        &self,
        p: &HeParams,
        layout: &SelectedLayout,
        c: usize,
        be: &dyn Backend,
    ) -> HeResult<Selectors> {
        let range = self.range(c, layout.choice.experts);
        let first = layout.choice.row_levels + self.outer;
        let chosen = par_map(self.rows.len(), |r| -> HeResult<Vec<Arc<Ciphertext>>> {
            let choice = self.rows[r].choice;
            // kept selectors serve every matrix of the choice: at its level, or switched down to it
            if let Some(kept) = choice.kept(p, range.clone(), layout.level) {
                return kept
                    .into_iter()
                    .map(|ct| match ct.limbs(p) == layout.level {
                        true => Ok(ct),
                        false => switched_to(p, &ct, layout.level, be).map(Arc::new),
                    })
                    .collect();
            }
            let node = &self.nodes[r][bit_reverse(c, self.outer)];
            let mut leaves: Vec<Option<Ciphertext>> =
                self.keys.galois.expand_from(p, node, first, self.inner, be)?.into_iter().map(Some).collect();
            // leaf i holds the chunk's expert bitrev(i); switched down to the product's level
            // before its transform (the modulus switch reads coefficients)
            let cts = (0..range.len())
                .map(|offset| {
                    let taken = leaves.get_mut(bit_reverse(offset, self.inner)).and_then(Option::take);
                    let mut ct = taken.ok_or_else(|| HeError::Shape(format!("no leaf for expert {offset}")))?;
                    if choice.own[range.start + offset] {
                        ct.c0.neg_assign(p);
                        ct.c1.neg_assign(p);
                        ct.add_wide_plain_assign(p, &[1], be)?;
                    }
                    while ct.limbs(p) > layout.level {
                        ct.drop_last_modulus(p, be)?;
                    }
                    ct.c0.to_ntt(p, be)?;
                    ct.c1.to_ntt(p, be)?;
                    Ok(Arc::new(ct))
                })
                .collect::<HeResult<Vec<_>>>()?;
            choice.keep(range.start, &cts);
            Ok(cts)
        });
        let chosen = chosen.into_iter().collect::<HeResult<Vec<_>>>()?;
        match layout.order {
            SelectOrder::WeightsFirst => Selectors::new(p, &chosen, be),
            SelectOrder::InputsFirst => {
                let shape = (chosen.len(), range.len() * layout.inputs(), layout.select_level());
                Selectors::from_rows(p, shape, be, |r| self.times_inputs(p, layout, r, &chosen[r], be))
            }
        }
    }

    /// [\[t_e·x_j\]] for row r's selectors `chosen` and input tile j, relinearized at the
    /// products' level and switched down to the selection sums' level
    /// ([`SelectedLayout::select_level`]), NTT form, expert-major.
    fn times_inputs(
        &self,
        p: &HeParams,
        layout: &SelectedLayout,
        r: usize,
        chosen: &[Arc<Ciphertext>],
        be: &dyn Backend,
    ) -> HeResult<Vec<Ciphertext>> {
        let relin = self.keys.relin.ok_or_else(|| {
            HeError::Shape("selected products computed inputs first need the client's relinearization key".into())
        })?;
        let j_n = layout.inputs();
        let x = Lifted::of(self.rows[r].x, p, be)?;
        let lifted = par_map(chosen.len(), |e| Lifted::of(&chosen[e..][..1], p, be))
            .into_iter()
            .collect::<HeResult<Vec<_>>>()?;
        par_map(chosen.len() * j_n, |i| {
            let (e, j) = (i / j_n, i % j_n);
            let mut sum = ProductSum::new(p, layout.level)?;
            sum.add_from(p, &lifted[e], (&x, j), be)?;
            // rounded and relinearized in coefficient form, switched down to the sums' level
            // and transformed for them
            let mut ct = sum.finish_coeff(p, be)?.relinearize(p, relin, be)?;
            while ct.limbs(p) > layout.select_level() {
                ct.drop_last_modulus(p, be)?;
            }
            ct.c0.to_ntt(p, be)?;
            ct.c1.to_ntt(p, be)?;
            Ok(ct)
        })
        .into_iter()
        .collect()
    }

    /// Adds every row's selected weights of output tiles `ks` (at (k − k0)·J + j) to `sums`,
    /// chunk by chunk of experts, each chunk's weights prepared in the memory of the `spare`
    /// bank (the last one is left there).
    #[allow(clippy::too_many_arguments)]
    fn select(
        &self,
        p: &HeParams,
        layout: &SelectedLayout,
        experts: &[&[u64]],
        ks: std::ops::Range<usize>,
        sums: &mut SelectionSums,
        spare: &mut Option<OperandBank>,
        be: &dyn Backend,
    ) -> HeResult<()> {
        let (t, j_n) = (&layout.tiling, layout.inputs());
        for c in 0..1usize << self.outer {
            let range = self.range(c, layout.choice.experts);
            if range.is_empty() {
                continue;
            }
            // one bank for the chunk: weights first, output (k − k0)·J + j sums the chunk's
            // encoded tiles (j, k); inputs first, output k − k0 sums its tiles (j, k) expert-major
            let tiles: Vec<Vec<Vec<u64>>> = match layout.order {
                SelectOrder::WeightsFirst => par_map(j_n * ks.len(), |tile| {
                    let (j, k) = (tile % j_n, ks.start + tile / j_n);
                    experts[range.clone()].iter().map(|w| t.encode_b(w, j, k)).collect()
                }),
                SelectOrder::InputsFirst => par_map(ks.len(), |kk| {
                    let k = ks.start + kk;
                    experts[range.clone()].iter().flat_map(|w| (0..j_n).map(move |j| t.encode_b(w, j, k))).collect()
                }),
            };
            let tiles: Vec<Vec<&[u64]>> = tiles.iter().map(|tile| tile.iter().map(Vec::as_slice).collect()).collect();
            let bank = match spare.take() {
                Some(bank) => bank.refill(p, layout.select_level(), &tiles, be)?,
                None => OperandBank::at_level(p, layout.select_level(), &tiles, be)?,
            };
            let built;
            let selectors = match &self.whole {
                Some(whole) => whole,
                None => {
                    built = self.chunk_selectors(p, layout, c, be)?;
                    &built
                }
            };
            sums.add(p, selectors, 0, &bank, be)?;
            *spare = Some(bank);
        }
        Ok(())
    }
}

/// `ct` switched down to the first `level` primes (modulus switching: the noise shrinks with
/// the modulus, plus a rounding term of about ‖s‖₁/2), NTT form.
fn switched_to(p: &HeParams, ct: &Ciphertext, level: usize, be: &dyn Backend) -> HeResult<Ciphertext> {
    let mut ct = ct.clone();
    while ct.limbs(p) > level {
        ct.drop_last_modulus(p, be)?;
    }
    ct.c0.to_ntt(p, be)?;
    ct.c1.to_ntt(p, be)?;
    Ok(ct)
}

/// Masks and seals each of a row's results ([`mask_and_seal`], scale [`SelectedLayout::scale`]).
#[allow(clippy::too_many_arguments)]
fn seal_row<T: Outgoing + Clone + Send + Sync>(
    p: &HeParams,
    keys: SelectKeys<'_>,
    layout: &SelectedLayout,
    results: &[T],
    flood: u32,
    seed: [u8; 32],
    be: &dyn Backend,
) -> HeResult<Vec<SelectedResponse>> {
    let mut rng = ChaCha20Rng::from_seed(seed);
    let seeds: Vec<[u8; 32]> = results.iter().map(|_| rand::RngExt::random(&mut rng)).collect();
    let response = ResponseKeys { pk: keys.pk, galois: None, square: keys.square };
    par_map(results.len(), |g| {
        let positions = layout.returned_positions(g);
        let keep: Vec<usize> = positions.iter().map(|&(c, _)| c).collect();
        let mut rng = ChaCha20Rng::from_seed(seeds[g]);
        let (bytes, mask) = mask_and_seal(
            p,
            response,
            results[g].clone(),
            &keep,
            (layout.scale(), layout.plain_bits(p)),
            flood,
            be,
            &mut rng,
        )?;
        Ok((bytes, mask.into_iter().zip(positions).map(|(r, (_, col))| (r, col)).collect()))
    })
    .into_iter()
    .collect()
}

/// One output tile, Σ_j [\[Ŵ_(j,k)\]]·x_j over the row's lifted input tiles, rounded once per
/// 2^SUM_TERM_BITS products (what the extension basis holds) and left in coefficient form; the
/// selected weights lifted [`LIFTED_AT_ONCE`] at a time, each batch one tensor sum.
fn tile_product(
    p: &HeParams,
    level: usize,
    xs: &Lifted,
    weights: &[Ciphertext],
    be: &dyn Backend,
) -> HeResult<Tensored> {
    let mut total: Option<Tensored> = None;
    for first in (0..weights.len()).step_by(1 << SUM_TERM_BITS) {
        let mut sum = ProductSum::new(p, level)?;
        let end = (first + (1 << SUM_TERM_BITS)).min(weights.len());
        for from in (first..end).step_by(LIFTED_AT_ONCE) {
            let lifted = Lifted::of(&weights[from..(from + LIFTED_AT_ONCE).min(end)], p, be)?;
            sum.add_from(p, &lifted, (xs, from), be)?;
        }
        let part = sum.finish_coeff(p, be)?;
        match total.as_mut() {
            Some(total) => total.add_assign(p, &part)?,
            None => total = Some(part),
        }
    }
    total.ok_or_else(|| HeError::Shape("a selected product with no input tile".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::he::{Plaintext, SecretKey, SeededCiphertext, ShrunkCiphertext, compressed_ciphertext_len_at};
    use rand::{RngExt, rngs::StdRng};

    #[test]
    fn expansion_turns_one_ciphertext_into_constants_times_two_to_the_levels() {
        let p = HeParams::select().unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(7);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let galois = sk.galois_keys(3, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let values: Vec<u64> = (0..8).map(|_| rng.random::<u64>() >> 1).collect();
        let ct = sk
            .encrypt(&Plaintext::new(&p, values.clone()).unwrap_or_else(|e| panic!("{e}")), &be, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let out = galois.expand(&p, &ct, 3, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.len(), 8);
        for (i, c) in out.iter().enumerate() {
            let wide = sk.decrypt_wide(c, &be).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(wide[0], (values[i] as u128) << 3, "selector {i}");
            assert!(wide[1..].iter().all(|&v| v == 0), "selector {i} is not a constant");
        }
    }

    #[test]
    fn products_run_at_t_2_74_and_compact_ciphertexts_at_t_times_their_selectors() {
        let select = HeParams::select().unwrap_or_else(|e| panic!("{e}"));
        let p = product_params(&select).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.plain_bits(), 74);
        let bits = |rows: usize, e: usize| {
            ChoiceLayout::new(rows, e)
                .and_then(|c| c.compact_params(&p))
                .map(|c| c.plain_bits())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!((bits(1, 1), bits(1, 8), bits(16, 8), bits(1, 1024), bits(16, 1024)), (74, 77, 81, 84, 84));
        // the sibling sets share the ring and primes: the session's secret serves them
        let be = CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(3);
        let sk = SecretKey::generate(&select, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let sk74 = sk.for_params(&p).unwrap_or_else(|e| panic!("{e}"));
        let pt = Plaintext::new(&p, vec![5u64; 4]).unwrap_or_else(|e| panic!("{e}"));
        let ct = sk74.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sk74.decrypt_wide(&ct, &be).unwrap_or_else(|e| panic!("{e}"))[..4], [5u128; 4]);
        let other = HeParams::linear().unwrap_or_else(|e| panic!("{e}"));
        assert!(sk.for_params(&other).is_err(), "another ring is not a sibling");
        assert!(product_params(&other).is_err(), "t = 2^70 holds no selected product");
    }

    #[test]
    fn rows_share_a_choice_ciphertext_while_their_selectors_fit_the_keys_levels() {
        let layout = |rows: usize, e: usize| ChoiceLayout::new(rows, e).unwrap_or_else(|e| panic!("{e}"));
        // (rows per ciphertext, ciphertexts, ℓ)
        let of = |c: ChoiceLayout, rows: usize| (c.rows_per_ciphertext(), c.ciphertexts(rows), c.levels());
        assert_eq!(of(layout(16, 8), 16), (16, 1, 7));
        assert_eq!(of(layout(13, 8), 13), (16, 1, 7));
        assert_eq!(of(layout(300, 8), 300), (128, 3, 10));
        assert_eq!(of(layout(16, 128), 16), (8, 2, 10));
        assert_eq!(of(layout(16, 1024), 16), (1, 16, 10));
        assert_eq!(of(layout(1, 5), 1), (1, 1, 3));
        assert!(ChoiceLayout::new(4, 1025).is_err() && ChoiceLayout::new(4, 0).is_err());
        assert!(ChoiceLayout::with_row_levels(8, 8).is_err(), "2^11 selectors");
        assert!(layout(2, 3).encode(&[true; 9]).is_err(), "three rows in a ciphertext of two");
        assert!(layout(2, 3).encode(&[true; 4]).is_err(), "not whole rows");
    }

    #[test]
    fn separated_rows_expand_to_their_own_bits_under_the_products_modulus() {
        let p = HeParams::select().and_then(|p| product_params(&p)).unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(17);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let galois = sk.galois_keys(5, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        // three rows of five experts in a ciphertext of four rows: ℓ = 2 + 3
        let choice = ChoiceLayout::with_row_levels(5, 2).unwrap_or_else(|e| panic!("{e}"));
        let compact_params = choice.compact_params(&p).unwrap_or_else(|e| panic!("{e}"));
        let bits: Vec<bool> = (0..15).map(|_| rng.random()).collect();
        let pt = Plaintext::new(&compact_params, choice.encode(&bits).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let compact = sk
            .for_params(&compact_params)
            .and_then(|sk| sk.encrypt(&pt, &be, &mut rng))
            .unwrap_or_else(|e| panic!("{e}"));
        let rows = choice.separate(&p, &galois, &compact, &be).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), 4);
        for (r, row) in rows.iter().enumerate() {
            let leaves = galois.expand_from(&p, row, 2, 3, &be).unwrap_or_else(|e| panic!("{e}"));
            for e in 0..8 {
                let wide = sk.decrypt_wide(&leaves[bit_reverse(e, 3)], &be).unwrap_or_else(|e| panic!("{e}"));
                let bit = r < 3 && e < 5 && bits[r * 5 + e];
                assert_eq!(wide[0], u128::from(bit), "row {r}, expert {e}");
                assert!(wide[1..].iter().all(|&v| v == 0), "row {r}, expert {e}: not a constant");
            }
        }
    }

    /// At the SPU comparison's shape (8 experts, d = 768, d_ff = 3072, 16 rows) the chooser
    /// takes the inputs first (24 ciphertext products a row against 144); told to take the
    /// weights first (Protocol 1 as written), it weighs that order only; a tensored product has
    /// no other order.
    #[test]
    fn the_layout_chooser_weighs_both_orders_unless_one_is_fixed() {
        let p = HeParams::select().and_then(|p| product_params(&p)).unwrap_or_else(|e| panic!("{e}"));
        let choice = ChoiceLayout::new(16, 8).unwrap_or_else(|e| panic!("{e}"));
        let choose = |form, order| {
            SelectedLayout::choose(&p, (768, 3072), choice, (form, 24), (&CostModel::WAN, 2), order)
                .map(|l| l.order)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (weights, inputs) = (Some(SelectOrder::WeightsFirst), Some(SelectOrder::InputsFirst));
        assert_eq!(choose(ProductForm::Relinearized, None), SelectOrder::InputsFirst);
        assert_eq!(choose(ProductForm::Relinearized, weights), SelectOrder::WeightsFirst);
        assert_eq!(choose(ProductForm::Tensored, None), SelectOrder::WeightsFirst);
        let tensored_inputs_first =
            SelectedLayout::choose(&p, (768, 3072), choice, (ProductForm::Tensored, 24), (&CostModel::WAN, 2), inputs);
        assert!(tensored_inputs_first.is_err());
    }

    #[test]
    fn a_selected_row_is_x_times_the_chosen_experts_matrix_in_shares() {
        let p = HeParams::select().and_then(|p| product_params(&p)).unwrap_or_else(|e| panic!("{e}"));
        let be = CpuBackend::new(2).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(11);
        let sk = SecretKey::generate(&p, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let galois = sk.galois_keys(max_pack(&p), &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let relin = sk.relin_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let pk = sk.public_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let square = sk.square_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let keys = SelectKeys { pk: &pk, galois: &galois, relin: Some(&relin), square: Some(&square) };
        let (d, m, e, chosen, w_bits) = (40, 300, 5, 3, 20);
        // both forms and both orders, with results over Z_2^64, and narrowed to Z_2^44 (fewer
        // bytes, the same shares mod 2^44); at the full modulus and one prime below it; inputs
        // exact, or compressed as far as the client's public weight bound allows
        let full = p.moduli().len();
        let (weights, inputs) = (SelectOrder::WeightsFirst, SelectOrder::InputsFirst);
        // the row alone in its choice ciphertext, or separated from one of 2^g rows
        for (form, order, bits, level, compressed, g) in [
            (ProductForm::Relinearized, weights, 64, full, false, 0),
            (ProductForm::Tensored, weights, 64, full, false, 1),
            (ProductForm::Relinearized, inputs, 44, full, true, 2),
            (ProductForm::Relinearized, weights, 64, full - 1, true, 1),
            (ProductForm::Relinearized, inputs, 64, full - 1, false, 0),
            (ProductForm::Tensored, weights, 44, full - 1, true, 0),
        ] {
            let choice_layout = ChoiceLayout::with_row_levels(e, g).unwrap_or_else(|e| panic!("{e}"));
            let layout =
                SelectedLayout::choose(&p, (d, m), choice_layout, (form, w_bits + 6), (&CostModel::WAN, 2), None)
                    .and_then(|l| l.with_order(order))
                    .and_then(|l| l.with_result_bits(bits))
                    .and_then(|l| l.with_level(&p, level))
                    .and_then(|l| l.with_dropped(&p, if compressed { dropped_bits(&p, &l, w_bits + 6) } else { 0 }))
                    .and_then(|l| l.lowest_out_level(&p, w_bits))
                    .unwrap_or_else(|e| panic!("{e}"))
                    .0;
            assert_eq!(layout.dropped > 0, compressed);
            // relinearized results leave from a lower level, with the same margin
            assert_eq!(layout.out_level < level, form == ProductForm::Relinearized, "{layout:?}");
            let experts: Vec<Vec<u64>> = (0..e)
                .map(|_| (0..d * m).map(|_| rng.random_range(-(1i64 << w_bits)..1 << w_bits) as u64).collect())
                .collect();
            let x: Vec<u64> = (0..d).map(|_| rng.random_range(-(1i64 << 30)..1 << 30) as u64).collect();
            let x_c: Vec<u64> = (0..d).map(|_| rng.random()).collect();
            let x_s: Vec<u64> = x.iter().zip(&x_c).map(|(x, c)| x.wrapping_sub(*c)).collect();
            let own: Vec<bool> = (0..e).map(|_| rng.random()).collect();
            let theirs: Vec<bool> = own.iter().enumerate().map(|(i, &s)| s ^ (i == chosen)).collect();
            // the client's ciphertexts, the server's share added to the inputs
            let t = &layout.tiling;
            let inputs: Vec<Ciphertext> = (0..layout.inputs())
                .map(|j| {
                    let pt = Plaintext::new(&p, t.encode_a(&x_c, 0, j)).unwrap_or_else(|e| panic!("{e}"));
                    let seeded = sk.encrypt_seeded_at(&pt, level, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
                    let bytes = seeded.to_compressed(&p, layout.dropped, &be).unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(bytes.len(), compressed_ciphertext_len_at(&p, level, layout.dropped));
                    let (seeded, _) =
                        SeededCiphertext::from_compressed_at(&p, &bytes, level, &be).unwrap_or_else(|e| panic!("{e}"));
                    let mut ct = seeded.expand(&p);
                    let own = Plaintext::new(&p, t.encode_a(&x_s, 0, j)).unwrap_or_else(|e| panic!("{e}"));
                    ct.add_plain_assign(&p, &own, &be).unwrap_or_else(|e| panic!("{e}"));
                    ct
                })
                .collect();
            // a row's compact ciphertext: the first of the 2^g rows the client encrypted together
            let compact_of = |bits: &[bool], rng: &mut StdRng| {
                let mut group = bits.to_vec();
                group.extend((bits.len()..e << g).map(|_| rng.random::<bool>()));
                let compact_params = choice_layout.compact_params(&p).unwrap_or_else(|e| panic!("{e}"));
                let pt =
                    Plaintext::new(&compact_params, choice_layout.encode(&group).unwrap_or_else(|e| panic!("{e}")))
                        .unwrap_or_else(|e| panic!("{e}"));
                let ct = sk
                    .for_params(&compact_params)
                    .and_then(|sk| sk.encrypt(&pt, &be, rng))
                    .unwrap_or_else(|e| panic!("{e}"));
                choice_layout.separate(&p, &galois, &ct, &be).unwrap_or_else(|e| panic!("{e}")).remove(0)
            };
            let compact = compact_of(&theirs, &mut rng);
            let bound = noise_bits(&p, &layout, w_bits);
            let flood = (bound.ceil() as u32 + 40).min(crate::he::MAX_FLOOD_BITS);
            let refs: Vec<&[u64]> = experts.iter().map(Vec::as_slice).collect();
            let choice = RowChoice::new(compact.clone(), own.clone(), true);
            // the selectors kept by a product at another level serve this one: switched down
            // from the level above, expanded afresh where they were kept below it
            let (above, below) = ((level + 1..=full).next(), level.checked_sub(1).filter(|&l| l > 0));
            let other = if compressed { above.or(below) } else { below.or(above) };
            if let Some(other) = other {
                let at = layout.with_level(&p, other).unwrap_or_else(|e| panic!("{e}"));
                let pre: Vec<Ciphertext> = (0..at.inputs())
                    .map(|j| {
                        let pt = Plaintext::new(&p, t.encode_a(&x, 0, j)).unwrap_or_else(|e| panic!("{e}"));
                        sk.encrypt_seeded_at(&pt, other, &be, &mut rng).unwrap_or_else(|e| panic!("{e}")).expand(&p)
                    })
                    .collect();
                let row = SelectedRow { x: &pre, choice: &choice };
                selected_batch(&p, keys, &at, &[row], &refs, flood, &[[5; 32]], &be).unwrap_or_else(|e| panic!("{e}"));
                assert!(choice.kept(&p, 0..e, other).is_some());
            }
            let row = SelectedRow { x: &inputs, choice: &choice };
            let whole = selected_batch(&p, keys, &layout, &[row], &refs, flood, &[[3; 32]], &be)
                .unwrap_or_else(|e| panic!("{e}"))
                .remove(0);
            // the row kept its expanded selectors: the next product starts from them, to the same bytes
            assert!(choice.kept(&p, 0..e, level).is_some());
            let again = selected_batch(&p, keys, &layout, &[row], &refs, flood, &[[3; 32]], &be)
                .unwrap_or_else(|e| panic!("{e}"))
                .remove(0);
            assert!(again == whole, "a product from kept selectors differs");
            // output tiles one at a time, from kept selectors, beside a second row that chose
            // another expert; then experts one chunk at a time, expanded afresh: the same masks,
            // the same decrypted shares
            let (tiny, one_tile) = (
                Budget { sums: 1, chunk: 1, rows: 1, group: 1 },
                Budget { sums: 1, chunk: 1 << 30, rows: 1, group: 1 },
            );
            assert!(layout.tile_group(&p, 2, true, one_tile) == 1 && layout.outputs() > 1, "nothing to group");
            let other = (chosen + 1) % e;
            let second = RowChoice::new(
                compact_of(&(0..e).map(|i| i == other).collect::<Vec<_>>(), &mut rng),
                vec![false; e],
                true,
            );
            let pair = [row, SelectedRow { x: &inputs, choice: &second }];
            let mut grouped =
                selected_batch_within(&p, keys, &layout, &pair, &refs, (flood, &[[3; 32], [4; 32]]), &be, one_tile)
                    .unwrap_or_else(|e| panic!("{e}"));
            let fresh = RowChoice::new(compact, own, false);
            let row = SelectedRow { x: &inputs, choice: &fresh };
            let chunked = selected_batch_within(&p, keys, &layout, &[row], &refs, (flood, &[[3; 32]]), &be, tiny)
                .unwrap_or_else(|e| panic!("{e}"))
                .remove(0);
            assert!(fresh.kept(&p, 0..e, 1).is_none());
            // the noise before flooding stays below its bound
            if form == ProductForm::Relinearized {
                let results =
                    batch_results(&p, keys, &layout, &[row], &refs, &be, tiny).unwrap_or_else(|e| panic!("{e}"));
                let Some(RowResults::Packed(packed)) = results.first() else { panic!("no packed results") };
                let log_q: f64 = p.moduli()[..layout.out_level].iter().map(|m| (m.value() as f64).log2()).sum();
                let log_delta = log_q - p.plain_bits() as f64;
                for ct in packed {
                    let noise = log_delta - 1.0 - sk.noise_budget(ct, &be).unwrap_or_else(|e| panic!("{e}"));
                    assert!(noise <= bound, "noise 2^{noise:.1} above the bound 2^{bound:.1}");
                    eprintln!("selected product noise 2^{noise:.1}, bound 2^{bound:.1} ({} limbs)", layout.out_level);
                }
            }
            let wide = layout.with_result_bits(64).map(|l| l.response_shape(&p, 1).encoded_len(p.degree()));
            assert!(bits == 64 || wide.is_ok_and(|wide| layout.response_shape(&p, 1).encoded_len(p.degree()) < wide));
            let second_row = grouped.pop().unwrap_or_default();
            for (responses, expert) in
                [(whole, chosen), (grouped.remove(0), chosen), (chunked, chosen), (second_row, other)]
            {
                let expected = MatShape { n: 1, d, m }.plain_product(&x, &experts[expert]);
                let mut seen = vec![false; m];
                for (g, (bytes, mask)) in responses.iter().enumerate() {
                    let pos = layout.returned_positions(g);
                    let keep: Vec<usize> = pos.iter().map(|&(c, _)| c).collect();
                    let ct = ShrunkCiphertext::from_bytes(&p, bytes, layout.response_shape(&p, keep.len()))
                        .unwrap_or_else(|e| panic!("{e}"));
                    let values = sk.decrypt_shrunk(&ct, &keep, &be).unwrap_or_else(|e| panic!("{e}"));
                    for ((v, &(_, col)), &(r, mcol)) in values.into_iter().zip(&pos).zip(mask) {
                        assert_eq!(col, mcol);
                        let ring = crate::ring::mask(bits);
                        assert_eq!(
                            layout.decode(v).wrapping_add(r) & ring,
                            expected[col] & ring,
                            "column {col}, expert {expert}"
                        );
                        seen[col] = true;
                    }
                }
                assert!(seen.iter().all(|&s| s));
            }
        }
    }
}
