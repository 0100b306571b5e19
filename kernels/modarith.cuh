/*
 * The per-element arithmetic of every secmoe kernel, in one header of inline functions that
 * compile for the GPU (nvcc, NVRTC: __host__ __device__) and for the CPU (gcc through the `cc`
 * crate, where the qualifiers are defined away). The CPU tests build `host.c`, which runs the same
 * functions in the kernels' own loop order, and compare it bit for bit with the Rust CPU backend:
 * a kernel and the CPU path cannot drift apart without a test failing.
 *
 * Modular arithmetic: primes p < 2^62; Shoup products (w' = floor(w·2^64/p) precomputed) give
 * w·y mod p in [0, 2p) for any 64-bit y without a division; Harvey's lazy butterflies keep values
 * in [0, 4p) inside a transform and reduce once at the end. Every conditional subtraction is
 * written min(x, x - c) over unsigned values (wrapping): branch-free, as on the CPU.
 *
 * The transforms are those of src/backend/ntt.rs: forward Cooley–Tukey over natural-order input
 * with ψ^bitrev(k) twiddles (negacyclic twist folded in), output bit-reversed; inverse
 * Gentleman–Sande with ψ^-bitrev(k), the scaling by N^-1 folded into the last stage.
 *
 * The OT hash is the tweakable correlation-robust TMMO construction over fixed-key AES-128 that
 * cryprot-core uses: H(x, i) = π(π(x) ⊕ i) ⊕ π(x).
 */
#ifndef SECMOE_MODARITH_CUH
#define SECMOE_MODARITH_CUH

#if defined(__CUDACC_RTC__)
/* NVRTC has no system headers. */
typedef unsigned long long sm_u64;
typedef unsigned int sm_u32;
typedef unsigned char sm_u8;
#else
#include <stdint.h>
typedef uint64_t sm_u64;
typedef uint32_t sm_u32;
typedef uint8_t sm_u8;
#endif

#if defined(__CUDACC__)
#define SM_FN __host__ __device__ static inline
#else
#define SM_FN static inline
#endif

/* ---- 64-bit modular arithmetic ------------------------------------------------------------- */

/* The high 64 bits of a·b. */
SM_FN sm_u64 sm_mulhi(sm_u64 a, sm_u64 b) {
#if defined(__CUDA_ARCH__)
    return __umul64hi(a, b);
#else
    return (sm_u64)(((unsigned __int128)a * b) >> 64);
#endif
}

/* x - c if x >= c, else x (x < 2c). */
SM_FN sm_u64 sm_csub(sm_u64 x, sm_u64 c) {
    sm_u64 d = x - c;
    return d < x ? d : x;
}

/* w·y mod p in [0, 2p), for any y, w < p and ws = floor(w·2^64/p). */
SM_FN sm_u64 sm_mul_shoup_lazy(sm_u64 y, sm_u64 w, sm_u64 ws, sm_u64 p) {
    sm_u64 q = sm_mulhi(y, ws);
    return y * w - q * p;
}

/* w·y mod p in [0, p). */
SM_FN sm_u64 sm_mul_shoup(sm_u64 y, sm_u64 w, sm_u64 ws, sm_u64 p) {
    return sm_csub(sm_mul_shoup_lazy(y, w, ws, p), p);
}

/* acc + y·v mod p, lazily: acc in [0, 2p) stays in [0, 2p) (the multiply-accumulate of ct×pt
 * products, selection sums and base conversions). */
SM_FN sm_u64 sm_mac(sm_u64 acc, sm_u64 y, sm_u64 v, sm_u64 vs, sm_u64 p) {
    return sm_csub(acc + sm_mul_shoup_lazy(y, v, vs, p), 2 * p);
}

/* Key switching's digit lifting: value idx of `targets`·`digits`·N, laid out [l][i][N], is
 * coefficient j of digit i (c mod q_i, below q_i) reduced mod target prime l. */
SM_FN sm_u64 sm_lift_digit_element(const sm_u64 *c, const sm_u64 *targets, sm_u32 n, sm_u32 digits, sm_u64 idx) {
    sm_u64 per_limb = (sm_u64)digits * n;
    return c[idx % per_limb] % targets[idx / per_limb];
}

/* ---- negacyclic NTT ------------------------------------------------------------------------- */

/* Butterfly k (0 <= k < N/2) of the forward stage with m groups of half-size t (m·t = N/2):
 * values in [0, 4p) stay in [0, 4p). */
SM_FN void sm_ntt_forward_butterfly(sm_u64 *a, const sm_u64 *psi, const sm_u64 *psi_shoup, sm_u64 p, sm_u32 m,
                                    sm_u32 t, sm_u32 k) {
    sm_u32 g = k / t, r = k % t;
    sm_u32 i = 2 * g * t + r;
    sm_u64 u = sm_csub(a[i], 2 * p);
    sm_u64 v = sm_mul_shoup_lazy(a[i + t], psi[m + g], psi_shoup[m + g], p);
    a[i] = u + v;
    a[i + t] = u + 2 * p - v;
}

/* The forward transform's final reduction from [0, 4p) to [0, p). */
SM_FN sm_u64 sm_ntt_forward_finish(sm_u64 x, sm_u64 p) {
    return sm_csub(sm_csub(x, 2 * p), p);
}

/* Butterfly k of the inverse stage with m groups of half-size t (m > 1): values in [0, 2p) stay
 * in [0, 2p). */
SM_FN void sm_ntt_inverse_butterfly(sm_u64 *a, const sm_u64 *psi_inv, const sm_u64 *psi_inv_shoup, sm_u64 p,
                                    sm_u32 m, sm_u32 t, sm_u32 k) {
    sm_u32 g = k / t, r = k % t;
    sm_u32 i = 2 * g * t + r;
    sm_u64 u = a[i], v = a[i + t];
    a[i] = sm_csub(u + v, 2 * p);
    a[i + t] = sm_mul_shoup_lazy(u + 2 * p - v, psi_inv[m + g], psi_inv_shoup[m + g], p);
}

/* Butterfly k of the last inverse stage (one group of half-size N/2), with the scaling by N^-1
 * folded in: x' = (u + v)/N, y' = (u - v)·ψ^-1/N, both in [0, p). */
SM_FN void sm_ntt_inverse_last(sm_u64 *a, sm_u32 half, sm_u64 n_inv, sm_u64 n_inv_shoup, sm_u64 last,
                               sm_u64 last_shoup, sm_u64 p, sm_u32 k) {
    sm_u64 u = a[k], v = a[k + half];
    a[k] = sm_mul_shoup(u + v, n_inv, n_inv_shoup, p);
    a[k + half] = sm_mul_shoup(u + 2 * p - v, last, last_shoup, p);
}

/* A barrier among the workers of one transform: a GPU block's threads; nothing on the CPU, where
 * one worker runs every index in order. */
#if defined(__CUDA_ARCH__)
#define SM_BARRIER() __syncthreads()
#else
#define SM_BARRIER() ((void)0)
#endif

/* The forward transform of one polynomial in place, by `threads` cooperating workers of which this
 * is `tid`. Coefficients from `support` (a power of two) on are taken as zero: the first stages
 * then only copy, so they become one replication of the first `support` coefficients. Input in
 * [0, p), output in [0, p), bit-reversed. */
SM_FN void sm_ntt_forward_poly(sm_u64 *a, const sm_u64 *psi, const sm_u64 *psi_shoup, sm_u64 p, sm_u32 n,
                               sm_u32 support, sm_u32 tid, sm_u32 threads) {
    for (sm_u32 k = support + tid; k < n; k += threads) a[k] = a[k & (support - 1)];
    SM_BARRIER();
    sm_u32 t = support;
    for (sm_u32 m = n / support; m < n; m <<= 1) {
        t >>= 1;
        for (sm_u32 k = tid; k < n / 2; k += threads) sm_ntt_forward_butterfly(a, psi, psi_shoup, p, m, t, k);
        SM_BARRIER();
    }
    for (sm_u32 k = tid; k < n; k += threads) a[k] = sm_ntt_forward_finish(a[k], p);
}

/* The inverse transform of one polynomial in place (bit-reversed input in [0, p), natural-order
 * output in [0, p)), by `threads` cooperating workers of which this is `tid`. */
SM_FN void sm_ntt_inverse_poly(sm_u64 *a, const sm_u64 *psi_inv, const sm_u64 *psi_inv_shoup, sm_u64 p, sm_u32 n,
                               sm_u64 n_inv, sm_u64 n_inv_shoup, sm_u64 last, sm_u64 last_shoup, sm_u32 tid,
                               sm_u32 threads) {
    sm_u32 t = 1;
    for (sm_u32 m = n >> 1; m > 1; m >>= 1) {
        for (sm_u32 k = tid; k < n / 2; k += threads) sm_ntt_inverse_butterfly(a, psi_inv, psi_inv_shoup, p, m, t, k);
        SM_BARRIER();
        t <<= 1;
    }
    for (sm_u32 k = tid; k < n / 2; k += threads)
        sm_ntt_inverse_last(a, n / 2, n_inv, n_inv_shoup, last, last_shoup, p, k);
}

/* ---- multiply-accumulate and base conversion ------------------------------------------------ */

/* Element idx of out[l][j] = Σ_i x[l][i] ⊙ w[l][j][i] mod p_l over `inputs` polynomials of n
 * values per limb (ct×pt products, selection sums), every operand limb-major (limb l = idx /
 * (outputs·n), output row j, coefficient c): the side with Shoup constants is w when
 * `prepared_w`, else x. The accumulator stays in a register over every input (on the GPU: on chip
 * across all experts of a selection sum). */
SM_FN sm_u64 sm_mul_acc_element(const sm_u64 *x, const sm_u64 *w, const sm_u64 *consts, const sm_u64 *moduli,
                                 sm_u32 n, sm_u32 inputs, sm_u32 outputs, int prepared_w, sm_u64 idx) {
    sm_u64 per_limb = (sm_u64)outputs * n;
    sm_u64 l = idx / per_limb, r = idx % per_limb;
    sm_u64 j = r / n, c = r % n;
    sm_u64 p = moduli[l];
    sm_u64 xb = l * inputs * n, wb = (l * outputs + j) * inputs * n;
    sm_u64 acc = 0;
    for (sm_u32 i = 0; i < inputs; i++) {
        sm_u64 xo = xb + (sm_u64)i * n + c, wo = wb + (sm_u64)i * n + c;
        acc = prepared_w ? sm_mac(acc, x[xo], w[wo], consts[wo], p) : sm_mac(acc, w[wo], x[xo], consts[xo], p);
    }
    return sm_csub(acc, p);
}

/* The automorphism X ↦ X^g (g odd) of a run of n coefficients, for source element idx (run
 * idx / n, limb run / per_limb, coefficient i = idx % n): X^i goes to X^(i·g mod 2n), negated when
 * that is ≥ n (X^n = −1). Every destination is written by exactly one source. */
SM_FN void sm_automorphism_element(const sm_u64 *in, sm_u64 *out, const sm_u64 *moduli, sm_u64 per_limb, sm_u32 n,
                                   sm_u64 g, sm_u64 idx) {
    sm_u64 run = idx / n, i = idx % n;
    sm_u64 p = moduli[run / per_limb];
    sm_u64 j = (i * g) & (2 * (sm_u64)n - 1);
    sm_u64 v = in[idx];
    if (j < n)
        out[run * n + j] = v;
    else
        out[run * n + j - n] = v == 0 ? 0 : p - v;
}

/* One residue of modulus switching: (x − [v])·p_top^-1 mod p, with v the residue mod p_top
 * centred in (−p_top/2, p_top/2]; `c` holds (p_top mod p, p_top^-1 mod p, its Shoup constant). */
SM_FN sm_u64 sm_divide_element(sm_u64 x, sm_u64 v, sm_u64 p_top, sm_u64 p, const sm_u64 *c) {
    sm_u64 v_mod = v % p;
    if (v > p_top / 2) v_mod = v_mod >= c[0] ? v_mod - c[0] : v_mod + p - c[0];
    sm_u64 d = x >= v_mod ? x - v_mod : x + p - v_mod;
    return sm_mul_shoup(d, c[1], c[2], p);
}

/* Element idx (output row j = idx / n) of out[j] = Σ_i x[i]·c_ij mod m_j, the core of every RNS
 * base conversion: `x` holds `inputs` rows of n values (any u64), `consts` the pairs
 * (c_ij, Shoup constant) row-major over (i, j), `moduli` the `outputs` output moduli. */
SM_FN sm_u64 sm_base_convert_element(const sm_u64 *x, const sm_u64 *consts, const sm_u64 *moduli, sm_u32 n,
                                      sm_u32 inputs, sm_u32 outputs, sm_u64 idx) {
    sm_u64 j = idx / n, c = idx % n;
    sm_u64 p = moduli[j];
    sm_u64 acc = 0;
    for (sm_u32 i = 0; i < inputs; i++) {
        sm_u64 k = 2 * ((sm_u64)i * outputs + j);
        acc = sm_mac(acc, x[(sm_u64)i * n + c], consts[k], consts[k + 1], p);
    }
    return sm_csub(acc, p);
}

/* ---- the conversions of ciphertext products -------------------------------------------------- */

/* A double from its IEEE-754 bits (the f64 constants travel as words). */
SM_FN double sm_f64(sm_u64 bits) {
    union {
        sm_u64 u;
        double d;
    } v;
    v.u = bits;
    return v.d;
}

/* a·b and a + b in double, each rounded to nearest once: never fused into one FMA, so the GPU
 * computes what the CPU does (host.c is compiled with -ffp-contract=off). */
SM_FN double sm_dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

SM_FN double sm_dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

/* round(v) for 0 <= v < 2^52, halves away from zero (Rust's f64::round). */
SM_FN sm_u64 sm_round_nonneg(double v) {
    sm_u64 u = (sm_u64)v;
    return v - (double)u >= 0.5 ? u + 1 : u;
}

/* Coefficient c of the first step of a conversion out of a basis of `rows` primes (moduli), for
 * x given by its residues (rows of n, coefficient form): z_r = [x_r·(B/r)^-1]_r (hat: the pairs
 * (constant, Shoup constant)), then the overflow row v = round(Σ_r z_r·(1/r)) summed in r's
 * order in double (inv: the bits of 1/r), and, when theta_rows > 0, the rounded fraction
 * floor(Σ_l z_l·θ_l + 1/2) over the first theta_rows rows, θ_l·2^128 given as (high, low) words
 * and the sum kept in 128 bits. Writes rows + 1 (+ 1) rows of n into z. */
SM_FN void sm_hat_rows_element(sm_u64 *z, const sm_u64 *x, const sm_u64 *hat, const sm_u64 *inv,
                               const sm_u64 *theta, const sm_u64 *moduli, sm_u32 rows, sm_u32 theta_rows, sm_u32 n,
                               sm_u64 c) {
    double v = 0.0;
    for (sm_u32 r = 0; r < rows; r++) {
        sm_u64 zr = sm_mul_shoup(x[(sm_u64)r * n + c], hat[2 * r], hat[2 * r + 1], moduli[r]);
        z[(sm_u64)r * n + c] = zr;
        v = sm_dadd(v, sm_dmul((double)zr, sm_f64(inv[r])));
    }
    z[(sm_u64)rows * n + c] = sm_round_nonneg(v);
    if (theta_rows == 0) return;
    sm_u64 hi = 0, lo = 0;
    for (sm_u32 l = 0; l < theta_rows; l++) {
        sm_u64 zl = z[(sm_u64)l * n + c];
        /* zl·θ_hi (two words) + floor(zl·θ_lo / 2^64), then added to (hi, lo) */
        sm_u64 t_lo = zl * theta[2 * l], t_hi = sm_mulhi(zl, theta[2 * l]);
        sm_u64 s = t_lo + sm_mulhi(zl, theta[2 * l + 1]);
        t_hi += s < t_lo;
        lo += s;
        hi += t_hi + (lo < s);
    }
    sm_u64 half = lo + (1ULL << 63);
    z[(sm_u64)(rows + 1) * n + c] = hi + (half < lo);
}

/* Element idx of a transpose of runs of n: `in` holds rows × cols runs ([row][col][N]); run
 * (row, col) goes to run first + row of column col's block of `width` runs ([col][width][N]).
 * Limb-major batches ([limb][poly][N], what the transforms take) to operands ([poly][limb][N],
 * what the products read) and back. */
SM_FN void sm_transpose_runs_element(sm_u64 *out, const sm_u64 *in, sm_u64 cols, sm_u64 width, sm_u64 first,
                                     sm_u32 n, sm_u64 idx) {
    sm_u64 run = idx / n, c = idx % n;
    sm_u64 row = run / cols, col = run % cols;
    out[(col * width + first + row) * n + c] = in[idx];
}

/* Element idx of weights given by their `support` low coefficients (`heads`: one run of
 * `support` values per polynomial) spread to whole polynomials of n values, zero above: what a
 * forward transform of the heads reads. */
SM_FN sm_u64 sm_spread_element(const sm_u64 *heads, sm_u32 support, sm_u32 n, sm_u64 idx) {
    sm_u64 c = idx % n;
    return c < support ? heads[(idx / n) * support + c] : 0;
}

/* a·b mod p for residues a, b < p < 2^62, by Barrett's reduction of the 128-bit product with
 * mu = floor(2^128 / p) = mu_hi·2^64 + mu_lo: the quotient estimate floor(x·mu / 2^128), summed
 * word by word with its carries, is at most 2 below floor(x / p), so x − q·p < 3p fits one word. */
SM_FN sm_u64 sm_mul_barrett(sm_u64 a, sm_u64 b, sm_u64 p, sm_u64 mu_hi, sm_u64 mu_lo) {
    sm_u64 hi = sm_mulhi(a, b), lo = a * b;
    /* the middle words: hi·mu_lo + lo·mu_hi + floor(lo·mu_lo / 2^64), high word with carries */
    sm_u64 t0 = hi * mu_lo, t1 = lo * mu_hi, t2 = sm_mulhi(lo, mu_lo);
    sm_u64 low = t0 + t1;
    sm_u64 carry = low < t0;
    sm_u64 low2 = low + t2;
    carry += low2 < low;
    sm_u64 q = hi * mu_hi + sm_mulhi(hi, mu_lo) + sm_mulhi(lo, mu_hi) + carry;
    return sm_csub(sm_csub(lo - q * p, p), p);
}

/* Element idx of the sums of ciphertext tensors (out: 3 parts × `limbs` limbs × N, part e
 * = Σ_t a0·b0, Σ_t (a0·b1 + a1·b0), Σ_t a1·b1): `a` and `b` hold `terms` two-part operands,
 * each [part][limb][N]; `mus` two words of floor(2^128 / p) per limb (high, low). Added to
 * `old` (a residue) when `add`. */
SM_FN sm_u64 sm_tensor_sum_element(const sm_u64 *a, const sm_u64 *b, const sm_u64 *moduli, const sm_u64 *mus,
                                   sm_u32 n, sm_u32 limbs, sm_u64 terms, sm_u64 old, int add, sm_u64 idx) {
    sm_u64 per_part = (sm_u64)limbs * n;
    sm_u64 e = idx / per_part, at = idx % per_part, l = at / n;
    sm_u64 p = moduli[l], mh = mus[2 * l], ml = mus[2 * l + 1];
    sm_u64 acc = add ? old : 0;
    for (sm_u64 t = 0; t < terms; t++) {
        const sm_u64 *x = a + 2 * t * per_part + at, *y = b + 2 * t * per_part + at;
        if (e == 0) {
            acc = sm_csub(acc + sm_mul_barrett(x[0], y[0], p, mh, ml), p);
        } else if (e == 2) {
            acc = sm_csub(acc + sm_mul_barrett(x[per_part], y[per_part], p, mh, ml), p);
        } else {
            acc = sm_csub(acc + sm_mul_barrett(x[0], y[per_part], p, mh, ml), p);
            acc = sm_csub(acc + sm_mul_barrett(x[per_part], y[0], p, mh, ml), p);
        }
    }
    return acc;
}

/* ---- fixed-key AES-128 and the TMMO hash ---------------------------------------------------- */

#define SM_AES_SBOX_VALUES                                                                          \
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76, \
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0, \
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15, \
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75, \
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84, \
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf, \
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8, \
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2, \
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73, \
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb, \
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79, \
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08, \
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a, \
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e, \
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf, \
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16

/* Multiplication by x in GF(2^8) mod x^8 + x^4 + x^3 + x + 1. */
SM_FN sm_u8 sm_xtime(sm_u8 b) {
    return (sm_u8)((b << 1) ^ ((b >> 7) * 0x1b));
}

/* The AES-128 key schedule: 11 round keys of 16 bytes from a 16-byte key. */
SM_FN void sm_aes128_expand(const sm_u8 key[16], sm_u8 rk[176], const sm_u8 *sbox) {
    sm_u8 rcon = 1;
    for (int i = 0; i < 16; i++) rk[i] = key[i];
    for (int w = 4; w < 44; w++) {
        sm_u8 t[4] = {rk[4 * w - 4], rk[4 * w - 3], rk[4 * w - 2], rk[4 * w - 1]};
        if (w % 4 == 0) {
            sm_u8 first = t[0];
            t[0] = (sm_u8)(sbox[t[1]] ^ rcon);
            t[1] = sbox[t[2]];
            t[2] = sbox[t[3]];
            t[3] = sbox[first];
            rcon = sm_xtime(rcon);
        }
        for (int j = 0; j < 4; j++) rk[4 * w + j] = (sm_u8)(rk[4 * w - 16 + j] ^ t[j]);
    }
}

/* AES-128 encryption of one 16-byte block in place (FIPS 197 byte order: column-major state). */
SM_FN void sm_aes128_encrypt(sm_u8 s[16], const sm_u8 *rk, const sm_u8 *sbox) {
    for (int i = 0; i < 16; i++) s[i] ^= rk[i];
    for (int round = 1; round <= 10; round++) {
        sm_u8 t[16];
        /* SubBytes and ShiftRows: row r of column c comes from column c + r. */
        for (int c = 0; c < 4; c++)
            for (int r = 0; r < 4; r++) t[4 * c + r] = sbox[s[4 * ((c + r) % 4) + r]];
        if (round < 10) {
            /* MixColumns */
            for (int c = 0; c < 4; c++) {
                sm_u8 a0 = t[4 * c], a1 = t[4 * c + 1], a2 = t[4 * c + 2], a3 = t[4 * c + 3];
                sm_u8 all = (sm_u8)(a0 ^ a1 ^ a2 ^ a3);
                t[4 * c] = (sm_u8)(a0 ^ all ^ sm_xtime((sm_u8)(a0 ^ a1)));
                t[4 * c + 1] = (sm_u8)(a1 ^ all ^ sm_xtime((sm_u8)(a1 ^ a2)));
                t[4 * c + 2] = (sm_u8)(a2 ^ all ^ sm_xtime((sm_u8)(a2 ^ a3)));
                t[4 * c + 3] = (sm_u8)(a3 ^ all ^ sm_xtime((sm_u8)(a3 ^ a0)));
            }
        }
        for (int i = 0; i < 16; i++) s[i] = (sm_u8)(t[i] ^ rk[16 * round + i]);
    }
}

/* The tweakable hash of one block given as two little-endian 64-bit words (lo, hi), tweak as the
 * low word of the second key block: out = π(π(x) ⊕ tweak) ⊕ π(x). */
SM_FN void sm_tmmo_hash(sm_u64 *lo, sm_u64 *hi, sm_u64 tweak, const sm_u8 *rk, const sm_u8 *sbox) {
    sm_u8 y[16], z[16];
    for (int i = 0; i < 8; i++) {
        y[i] = (sm_u8)(*lo >> (8 * i));
        y[8 + i] = (sm_u8)(*hi >> (8 * i));
    }
    sm_aes128_encrypt(y, rk, sbox);
    for (int i = 0; i < 16; i++) z[i] = y[i];
    for (int i = 0; i < 8; i++) z[i] ^= (sm_u8)(tweak >> (8 * i));
    sm_aes128_encrypt(z, rk, sbox);
    sm_u64 out_lo = 0, out_hi = 0;
    for (int i = 0; i < 8; i++) {
        out_lo |= (sm_u64)(z[i] ^ y[i]) << (8 * i);
        out_hi |= (sm_u64)(z[8 + i] ^ y[8 + i]) << (8 * i);
    }
    *lo = out_lo;
    *hi = out_hi;
}

/* The fixed key, cryprot-core's FIXED_KEY_HASH: the u128 193502124791825095790518994062991136444
 * in little-endian bytes. */
#define SM_FIXED_KEY_HI 0x91932755351e4915ULL
#define SM_FIXED_KEY_LO 0xd2fc754d9a1796bcULL

/* The fixed key's round keys (a GPU block computes them once into shared memory). */
SM_FN void sm_fixed_key_schedule(sm_u8 rk[176], const sm_u8 *sbox) {
    sm_u8 key[16];
    for (int i = 0; i < 8; i++) {
        key[i] = (sm_u8)(SM_FIXED_KEY_LO >> (8 * i));
        key[8 + i] = (sm_u8)(SM_FIXED_KEY_HI >> (8 * i));
    }
    sm_aes128_expand(key, rk, sbox);
}

/* Block idx of a hash batch in place: `blocks` holds (lo, hi) word pairs; the tweak is
 * tweaks[idx] when `listed`, else base + idx (wrapping). */
SM_FN void sm_hash_element(sm_u64 *blocks, const sm_u64 *tweaks, sm_u64 base, int listed, const sm_u8 *rk,
                           const sm_u8 *sbox, sm_u64 idx) {
    sm_u64 tweak = listed ? tweaks[idx] : base + idx;
    sm_tmmo_hash(&blocks[2 * idx], &blocks[2 * idx + 1], tweak, rk, sbox);
}

#endif
