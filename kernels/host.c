/*
 * The kernels' per-element functions run on the CPU, in the kernels' own order (one worker:
 * tid 0 of 1), for the Rust tests that compare them with the CPU backend bit for bit. Built by
 * build.rs with the cc crate on every build; nothing but the tests calls it.
 */
#include "modarith.cuh"

static const sm_u8 AES_SBOX[256] = {SM_AES_SBOX_VALUES};

void secmoe_host_ntt_forward(sm_u64 *a, const sm_u64 *psi, const sm_u64 *psi_shoup, sm_u64 p, sm_u32 n,
                             sm_u32 support) {
    sm_ntt_forward_poly(a, psi, psi_shoup, p, n, support, 0, 1);
}

void secmoe_host_ntt_inverse(sm_u64 *a, const sm_u64 *psi_inv, const sm_u64 *psi_inv_shoup, sm_u64 p, sm_u32 n,
                             sm_u64 n_inv, sm_u64 n_inv_shoup, sm_u64 last, sm_u64 last_shoup) {
    sm_ntt_inverse_poly(a, psi_inv, psi_inv_shoup, p, n, n_inv, n_inv_shoup, last, last_shoup, 0, 1);
}

void secmoe_host_mul_acc(sm_u64 *out, const sm_u64 *x, const sm_u64 *w, const sm_u64 *consts, const sm_u64 *moduli,
                         sm_u32 n, sm_u32 inputs, sm_u32 outputs, sm_u64 total, int prepared_w) {
    for (sm_u64 idx = 0; idx < total; idx++)
        out[idx] = sm_mul_acc_element(x, w, consts, moduli, n, inputs, outputs, prepared_w, idx);
}

void secmoe_host_automorphism(sm_u64 *out, const sm_u64 *in, const sm_u64 *moduli, sm_u64 per_limb, sm_u32 n,
                              sm_u64 g, sm_u64 total) {
    for (sm_u64 idx = 0; idx < total; idx++) sm_automorphism_element(in, out, moduli, per_limb, n, g, idx);
}

void secmoe_host_divide_by_prime(sm_u64 *low, const sm_u64 *top, const sm_u64 *moduli, const sm_u64 *consts,
                                 sm_u64 p_top, sm_u64 polys, sm_u32 n, sm_u64 total) {
    for (sm_u64 idx = 0; idx < total; idx++) {
        sm_u64 run = idx / n, l = run / polys;
        low[idx] = sm_divide_element(low[idx], top[(run % polys) * n + idx % n], p_top, moduli[l], consts + 3 * l);
    }
}

void secmoe_host_base_convert(sm_u64 *out, const sm_u64 *x, const sm_u64 *consts, const sm_u64 *moduli, sm_u32 n,
                              sm_u32 inputs, sm_u32 outputs) {
    for (sm_u64 idx = 0; idx < (sm_u64)outputs * n; idx++)
        out[idx] = sm_base_convert_element(x, consts, moduli, n, inputs, outputs, idx);
}

void secmoe_host_lift_digits(sm_u64 *out, const sm_u64 *c, const sm_u64 *targets, sm_u32 n, sm_u32 digits,
                             sm_u64 total) {
    for (sm_u64 idx = 0; idx < total; idx++) out[idx] = sm_lift_digit_element(c, targets, n, digits, idx);
}

void secmoe_host_tensor_sum(sm_u64 *out, const sm_u64 *a, const sm_u64 *b, const sm_u64 *moduli, const sm_u64 *mus,
                            sm_u32 n, sm_u32 limbs, sm_u64 terms, int add, sm_u64 total) {
    for (sm_u64 idx = 0; idx < total; idx++)
        out[idx] = sm_tensor_sum_element(a, b, moduli, mus, n, limbs, terms, out[idx], add, idx);
}

void secmoe_host_hat_rows(sm_u64 *z, const sm_u64 *x, const sm_u64 *hat, const sm_u64 *inv, const sm_u64 *theta,
                          const sm_u64 *moduli, sm_u32 rows, sm_u32 theta_rows, sm_u32 n) {
    for (sm_u64 c = 0; c < n; c++) sm_hat_rows_element(z, x, hat, inv, theta, moduli, rows, theta_rows, n, c);
}

void secmoe_host_transpose_runs(sm_u64 *out, const sm_u64 *in, sm_u64 cols, sm_u64 width, sm_u64 first, sm_u32 n,
                                sm_u64 total) {
    for (sm_u64 idx = 0; idx < total; idx++) sm_transpose_runs_element(out, in, cols, width, first, n, idx);
}

void secmoe_host_spread_heads(sm_u64 *out, const sm_u64 *heads, sm_u32 support, sm_u32 n, sm_u64 total) {
    for (sm_u64 idx = 0; idx < total; idx++) out[idx] = sm_spread_element(heads, support, n, idx);
}

void secmoe_host_hash_blocks(sm_u64 *blocks, const sm_u64 *tweaks, sm_u64 base, sm_u64 count, int listed) {
    sm_u8 rk[176];
    sm_fixed_key_schedule(rk, AES_SBOX);
    for (sm_u64 idx = 0; idx < count; idx++) sm_hash_element(blocks, tweaks, base, listed, rk, AES_SBOX, idx);
}
