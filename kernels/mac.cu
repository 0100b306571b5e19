/*
 * Pointwise multiply-accumulate over every RNS limb in NTT form (the inner loop of ct×pt products
 * and of the selection sum Σ_i W_i·[[t_i]] over all experts, fused: one thread per output value,
 * its accumulator in a register across every input) and the RNS base conversion
 * out[j] = Σ_i x[i]·c_ij mod m_j, key switching's digit lifting, and the sums of ciphertext tensors
 * and the first step of the RNS conversions of ciphertext products, and weights given by their low
 * coefficients spread to whole polynomials. Per-element math: modarith.cuh.
 */
#include "modarith.cuh"

extern "C" __global__ void mul_acc(sm_u64 *out, const sm_u64 *x, const sm_u64 *w, const sm_u64 *consts,
                                   const sm_u64 *moduli, sm_u32 n, sm_u32 inputs, sm_u32 outputs, sm_u64 total,
                                   int prepared_w) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < total) out[idx] = sm_mul_acc_element(x, w, consts, moduli, n, inputs, outputs, prepared_w, idx);
}

/* mul_acc with each result added to what out holds (residues below their primes): running
 * sums kept on the device while banks of operands stream past. */
extern "C" __global__ void mul_acc_into(sm_u64 *out, const sm_u64 *x, const sm_u64 *w, const sm_u64 *consts,
                                        const sm_u64 *moduli, sm_u32 n, sm_u32 inputs, sm_u32 outputs, sm_u64 total,
                                        int prepared_w) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < total) {
        sm_u64 p = moduli[idx / ((sm_u64)outputs * n)];
        out[idx] = sm_csub(out[idx] + sm_mul_acc_element(x, w, consts, moduli, n, inputs, outputs, prepared_w, idx), p);
    }
}

extern "C" __global__ void base_convert(sm_u64 *out, const sm_u64 *x, const sm_u64 *consts, const sm_u64 *moduli,
                                        sm_u32 n, sm_u32 inputs, sm_u32 outputs) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < (sm_u64)outputs * n) out[idx] = sm_base_convert_element(x, consts, moduli, n, inputs, outputs, idx);
}

extern "C" __global__ void automorphism(sm_u64 *out, const sm_u64 *in, const sm_u64 *moduli, sm_u64 per_limb,
                                        sm_u32 n, sm_u64 g, sm_u64 total) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < total) sm_automorphism_element(in, out, moduli, per_limb, n, g, idx);
}

/* low: `polys` polynomials' residues, limb-major (run r modulo moduli[r / polys]), each divided
 * by the prime of top's run r % polys; consts: three values per modulus (sm_divide_element). */
extern "C" __global__ void divide_by_prime(sm_u64 *low, const sm_u64 *top, const sm_u64 *moduli, const sm_u64 *consts,
                                           sm_u64 p_top, sm_u64 polys, sm_u32 n, sm_u64 total) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < total) {
        sm_u64 run = idx / n, l = run / polys;
        low[idx] = sm_divide_element(low[idx], top[(run % polys) * n + idx % n], p_top, moduli[l], consts + 3 * l);
    }
}

/* A polynomial's `digits` residue rows (c mod q_i) each reduced mod every prime of `targets`:
 * out holds targets·digits·N values, [l][i][N]. */
extern "C" __global__ void lift_digits(sm_u64 *out, const sm_u64 *c, const sm_u64 *targets, sm_u32 n, sm_u32 digits,
                                       sm_u64 total) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < total) out[idx] = sm_lift_digit_element(c, targets, n, digits, idx);
}

/* Sums of ciphertext tensors, the core of ciphertext products (sm_tensor_sum_element): one thread
 * per output value of 3 parts × limbs × N, added to what out holds when `add`. */
extern "C" __global__ void tensor_sum(sm_u64 *out, const sm_u64 *a, const sm_u64 *b, const sm_u64 *moduli,
                                      const sm_u64 *mus, sm_u32 n, sm_u32 limbs, sm_u64 terms, int add, sm_u64 total) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < total) out[idx] = sm_tensor_sum_element(a, b, moduli, mus, n, limbs, terms, out[idx], add, idx);
}

/* The first step of a conversion out of a basis of `rows` primes (sm_hat_rows_element): one
 * thread per coefficient of the n, writing its z rows, overflow and (theta_rows > 0) fraction. */
extern "C" __global__ void hat_rows(sm_u64 *z, const sm_u64 *x, const sm_u64 *hat, const sm_u64 *inv,
                                    const sm_u64 *theta, const sm_u64 *moduli, sm_u32 rows, sm_u32 theta_rows,
                                    sm_u32 n) {
    sm_u64 c = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (c < n) sm_hat_rows_element(z, x, hat, inv, theta, moduli, rows, theta_rows, n, c);
}

/* Runs of n moved between limb-major batches and operand order (sm_transpose_runs_element): one
 * thread per value of `in` (rows × cols runs). */
extern "C" __global__ void transpose_runs(sm_u64 *out, const sm_u64 *in, sm_u64 cols, sm_u64 width, sm_u64 first,
                                          sm_u32 n, sm_u64 total) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < total) sm_transpose_runs_element(out, in, cols, width, first, n, idx);
}

/* Weights given by their `support` low coefficients spread to whole polynomials of n values
 * (sm_spread_element), before their forward transforms: one thread per output value. */
extern "C" __global__ void spread_heads(sm_u64 *out, const sm_u64 *heads, sm_u32 support, sm_u32 n, sm_u64 total) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < total) out[idx] = sm_spread_element(heads, support, n, idx);
}
