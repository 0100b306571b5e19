/*
 * Batched negacyclic NTTs: one thread block per polynomial of one RNS limb (grid = the number of
 * polynomials of that limb, which start at `offset` in the limb-major buffer), the whole polynomial
 * in shared memory when it fits (N·8 bytes of dynamic shared memory), else transformed in place in
 * global memory. The butterflies and their order are
 * sm_ntt_forward_poly / sm_ntt_inverse_poly of modarith.cuh, which the CPU tests run too.
 */
#include "modarith.cuh"

extern __shared__ sm_u64 smem[];

/* This block's polynomial: its first `count` coefficients copied into shared memory, or the
 * global copy itself. */
__device__ static sm_u64 *block_poly(sm_u64 *g, int in_shared, sm_u32 count) {
    if (!in_shared) return g;
    for (sm_u32 k = threadIdx.x; k < count; k += blockDim.x) smem[k] = g[k];
    __syncthreads();
    return smem;
}

/* Writes a polynomial transformed in shared memory back. */
__device__ static void block_store(sm_u64 *g, int in_shared, sm_u32 n) {
    if (!in_shared) return;
    __syncthreads();
    for (sm_u32 k = threadIdx.x; k < n; k += blockDim.x) g[k] = smem[k];
}

extern "C" __global__ void ntt_forward(sm_u64 *polys, sm_u64 offset, const sm_u64 *psi,
                                       const sm_u64 *psi_shoup, sm_u64 p, sm_u32 n, sm_u32 support, int in_shared) {
    sm_u64 *g = polys + offset + (sm_u64)blockIdx.x * n;
    sm_u64 *a = block_poly(g, in_shared, support);
    sm_ntt_forward_poly(a, psi, psi_shoup, p, n, support, threadIdx.x, blockDim.x);
    block_store(g, in_shared, n);
}

extern "C" __global__ void ntt_inverse(sm_u64 *polys, sm_u64 offset, const sm_u64 *psi_inv,
                                       const sm_u64 *psi_inv_shoup, sm_u64 p, sm_u32 n, sm_u64 n_inv,
                                       sm_u64 n_inv_shoup, sm_u64 last, sm_u64 last_shoup, int in_shared) {
    sm_u64 *g = polys + offset + (sm_u64)blockIdx.x * n;
    sm_u64 *a = block_poly(g, in_shared, n);
    sm_ntt_inverse_poly(a, psi_inv, psi_inv_shoup, p, n, n_inv, n_inv_shoup, last, last_shoup, threadIdx.x,
                        blockDim.x);
    block_store(g, in_shared, n);
}
