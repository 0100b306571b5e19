/*
 * Pointwise multiply-accumulate over one RNS limb in NTT form (the inner loop of ct×pt products
 * and of the selection sum Σ_i W_i·[[t_i]] over all experts, fused: one thread per output value,
 * its accumulator in a register across every input) and the RNS base conversion
 * out[j] = Σ_i x[i]·c_ij mod m_j. Per-element math: modarith.cuh.
 */
#include "modarith.cuh"

extern "C" __global__ void mul_acc(sm_u64 *out, const sm_u64 *x, const sm_u64 *w, const sm_u64 *consts, sm_u64 p,
                                   sm_u32 n, sm_u32 inputs, sm_u64 total, int prepared_w) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < total) out[idx] = sm_mul_acc_element(x, w, consts, p, n, inputs, prepared_w, idx);
}

extern "C" __global__ void base_convert(sm_u64 *out, const sm_u64 *x, const sm_u64 *consts, const sm_u64 *moduli,
                                        sm_u32 n, sm_u32 inputs, sm_u32 outputs) {
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < (sm_u64)outputs * n) out[idx] = sm_base_convert_element(x, consts, moduli, n, inputs, outputs, idx);
}
