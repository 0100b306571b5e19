/*
 * Bulk OT hashing: the tweakable correlation-robust hash H(x, i) = π(π(x) ⊕ i) ⊕ π(x) over
 * fixed-key AES-128 (cryprot-core's key), one thread per 128-bit block, the S-box and the round
 * keys in shared memory. Per-element math: modarith.cuh.
 */
#include "modarith.cuh"

__constant__ sm_u8 AES_SBOX[256] = {SM_AES_SBOX_VALUES};

extern "C" __global__ void hash_blocks(sm_u64 *blocks, const sm_u64 *tweaks, sm_u64 base, sm_u64 count,
                                       int listed) {
    __shared__ sm_u8 sbox[256];
    __shared__ sm_u8 rk[176];
    for (sm_u32 k = threadIdx.x; k < 256; k += blockDim.x) sbox[k] = AES_SBOX[k];
    __syncthreads();
    if (threadIdx.x == 0) sm_fixed_key_schedule(rk, sbox);
    __syncthreads();
    sm_u64 idx = (sm_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < count) sm_hash_element(blocks, tweaks, base, listed, rk, sbox, idx);
}
