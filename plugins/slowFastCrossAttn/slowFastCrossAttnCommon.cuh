/*
 * Internal device helpers shared by the SIMT, MMA and combine kernels of slowFastCrossAttn.
 *
 * Work decomposition (all kernels): the query vectors that read K/V head g of sequence b are the
 * (row, head) pairs with row in [rowOffsets[b], rowOffsets[b+1]) and head in [g*G, (g+1)*G), G = H / Hkv.
 * They are "packed" as p = localRow * G + (head - g*G), so one thread block handles blockRows packed
 * vectors of one (b, g) and reads each K/V byte of its key chunk once for all of them (GQA).
 * grid = (tile slots, splits, Hkv): tile slot t is mapped to (b, first packed vector) by walking
 * rowOffsets on the device (no host knowledge of per-sequence rows is needed); unused slots exit.
 * Split s handles keys [s*chunk, min((s+1)*chunk, n_b)), chunk = roundUp(ceil(n_b / S), blockKeys).
 * Rows outside [rowOffsets[0], rowOffsets[B]) get ctx = 0: written by the attention kernel when S == 1
 * (fillUncoveredRows, grid-stride over the tile slots), else by the combine kernel.
 *
 * NaN (as PyTorch's softmax): the running max propagates NaN (nanMax), and "no key" is decided from the
 * key range, never from the softmax sum, so a NaN score or value reaches the output; only n_b == 0 gives 0.
 */
#pragma once

#include "slowFastCrossAttnKernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace slowfast
{
namespace kernels
{
namespace detail
{

constexpr int32_t kTHREADS = 128;
constexpr float kLOG2E = 1.4426950408889634F;

//! Everything a kernel needs; passed by value.
struct KernelArgs
{
    void const* query;
    void const* key;
    void const* value;
    int32_t const* lengths;
    int32_t const* offsets;
    void const* residual;
    void const* gate;
    void* output;
    float* partialOut; //!< [S, rows, H, D] float, only when numSplits > 1
    float* partialLse; //!< [S, rows, H] float (log2 domain), only when numSplits > 1
    int32_t rows;
    int32_t batch;
    int32_t numHeads;
    int32_t numKvHeads;
    int32_t groupSize;
    int32_t slowTokens;
    int32_t numSplits;
    int32_t fuseGate;
    float scaleLog2; //!< scale * log2(e): softmax runs in base 2
};

//! The piece of work of one thread block.
struct TileInfo
{
    int32_t batchIndex; //!< -1: unused tile slot
    int32_t rowBase;    //!< first query row of the sequence
    int32_t vecBegin;   //!< first packed vector of the tile
    int32_t numVec;     //!< valid packed vectors in the tile (<= blockRows)
    int32_t keyBegin;   //!< key chunk of this split
    int32_t keyEnd;
    int32_t coverBegin; //!< rows [coverBegin, coverEnd) belong to sequences (also set for unused slots)
    int32_t coverEnd;
};

template <typename T>
__device__ __forceinline__ float toFloat(T v);
template <>
__device__ __forceinline__ float toFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ float toFloat<__half>(__half v)
{
    return __half2float(v);
}
template <>
__device__ __forceinline__ float toFloat<__nv_bfloat16>(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

__host__ __device__ __forceinline__ int32_t ceilDiv(int32_t a, int32_t b)
{
    return (a + b - 1) / b;
}

__device__ __forceinline__ int32_t clampInt(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

//! max that returns NaN when either input is NaN (fmaxf returns the other one); -inf stays the identity.
__device__ __forceinline__ float nanMax(float x, float y)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(x), "f"(y));
    return r;
#else
    return (x > y || x != x) ? x : y;
#endif
}

//! Maps tile slot tileIdx to its sequence and rows; split selects the key chunk. Run by one thread.
//! Device-resident offsets and lengths are clamped: lengths to [0, slowTokens], offsets to a non-decreasing
//! sequence in [clamp(offsets[0], 0, rows), clamp(offsets[B], that, rows)], so sequences never overlap and
//! cover at most `rows` rows (the host's tile-slot bound relies on it).
__device__ inline TileInfo findTile(KernelArgs const& a, int32_t tileIdx, int32_t split, int32_t blockRows,
    int32_t blockKeys)
{
    TileInfo info{-1, 0, 0, 0, 0, 0, 0, 0};
    info.coverBegin = clampInt(a.offsets[0], 0, a.rows);
    info.coverEnd = clampInt(a.offsets[a.batch], info.coverBegin, a.rows);
    int32_t tilesBefore = 0;
    int32_t rowBegin = info.coverBegin;
    for (int32_t b = 0; b < a.batch; ++b)
    {
        int32_t const rowEnd = b + 1 == a.batch ? info.coverEnd : clampInt(a.offsets[b + 1], rowBegin, info.coverEnd);
        int32_t const vecs = (rowEnd - rowBegin) * a.groupSize;
        int32_t const tiles = ceilDiv(vecs, blockRows);
        if (tileIdx < tilesBefore + tiles)
        {
            int32_t const n = clampInt(a.lengths[b], 0, a.slowTokens);
            int32_t const chunk = ceilDiv(ceilDiv(n, a.numSplits), blockKeys) * blockKeys;
            info.batchIndex = b;
            info.rowBase = rowBegin;
            info.vecBegin = (tileIdx - tilesBefore) * blockRows;
            info.numVec = min(blockRows, vecs - info.vecBegin);
            info.keyBegin = min(split * chunk, n);
            info.keyEnd = min(info.keyBegin + chunk, n);
            return info;
        }
        tilesBefore += tiles;
        rowBegin = rowEnd;
    }
    return info;
}

//! Flat element offset of (packed vector p, d) in query/residual/output, i.e. ((row * H + head) * D + d).
__device__ __forceinline__ int64_t vectorOffset(
    KernelArgs const& a, TileInfo const& t, int32_t kvHead, int32_t p, int32_t headDim)
{
    int32_t const row = t.rowBase + p / a.groupSize;
    int32_t const head = kvHead * a.groupSize + p % a.groupSize;
    return (static_cast<int64_t>(row) * a.numHeads + head) * headDim;
}

//! Final value of one output element: ctx, or residual + gate * ctx.
template <typename T>
__device__ __forceinline__ void storeOutput(KernelArgs const& a, int64_t elem, int32_t row, float ctx)
{
    float v = ctx;
    if (a.fuseGate)
    {
        v = toFloat(static_cast<T const*>(a.residual)[elem]) + toFloat(static_cast<T const*>(a.gate)[row]) * ctx;
    }
    static_cast<T*>(a.output)[elem] = fromFloat<T>(v);
}

//! ctx = 0 for the rows of no sequence ([0, coverBegin) and [coverEnd, rows)), heads of kv head kvHead:
//! grid-stride over the tile slots, all threads of the block. No work (one compare) when every row is covered.
template <typename T>
__device__ __forceinline__ void fillUncoveredRows(
    KernelArgs const& a, TileInfo const& t, int32_t kvHead, int32_t headDim)
{
    int32_t const before = t.coverBegin;
    int64_t const perRow = static_cast<int64_t>(a.groupSize) * headDim; // contiguous heads of the group
    int64_t const total = (before + (a.rows - t.coverEnd)) * perRow;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    {
        int32_t const u = static_cast<int32_t>(i / perRow);
        int32_t const row = u < before ? u : t.coverEnd + (u - before);
        int64_t const elem = (static_cast<int64_t>(row) * a.numHeads + kvHead * a.groupSize) * headDim + i % perRow;
        storeOutput<T>(a, elem, row, 0.F);
    }
}

//! Writes one normalised context element: to the output (one split) or to the split partials.
//! elem = (row * H + head) * D + d; lse (log2 domain, -inf when no key) is written when d == 0.
template <typename T>
__device__ __forceinline__ void storeResult(
    KernelArgs const& a, int32_t split, int64_t elem, int32_t row, int32_t d, int32_t headDim, float ctx, float lse)
{
    if (a.numSplits == 1)
    {
        storeOutput<T>(a, elem, row, ctx);
        return;
    }
    int64_t const perSplit = static_cast<int64_t>(a.rows) * a.numHeads;
    a.partialOut[split * perSplit * headDim + elem] = ctx;
    if (d == 0)
    {
        a.partialLse[split * perSplit + elem / headDim] = lse;
    }
}

//! Loads 8 consecutive elements (16-byte aligned) and widens them to float.
__device__ __forceinline__ void load8(float const* src, float (&dst)[8])
{
    float4 const lo = *reinterpret_cast<float4 const*>(src);
    float4 const hi = *reinterpret_cast<float4 const*>(src + 4);
    dst[0] = lo.x, dst[1] = lo.y, dst[2] = lo.z, dst[3] = lo.w;
    dst[4] = hi.x, dst[5] = hi.y, dst[6] = hi.z, dst[7] = hi.w;
}
template <typename T>
__device__ __forceinline__ void load8(T const* src, float (&dst)[8])
{
    uint4 const raw = *reinterpret_cast<uint4 const*>(src);
    T const* v = reinterpret_cast<T const*>(&raw);
#pragma unroll
    for (int32_t i = 0; i < 8; ++i)
    {
        dst[i] = toFloat(v[i]);
    }
}

// Host-side launchers of the kernel families (defined in the .cu files of each family).
template <typename T>
cudaError_t launchSimt(KernelArgs const& args, int32_t headDim, dim3 grid, cudaStream_t stream);
template <typename T>
cudaError_t launchMma(KernelArgs const& args, int32_t headDim, int32_t blockRows, dim3 grid, cudaStream_t stream);
template <typename T>
cudaError_t launchCombine(KernelArgs const& args, int32_t headDim, cudaStream_t stream);

constexpr int32_t kSIMT_BLOCK_ROWS = 8;
constexpr int32_t kSIMT_BLOCK_KEYS = 32;
constexpr int32_t kMMA_DECODE_BLOCK_ROWS = 16;  //!< 1 x 4 warps: warps split the keys of each tile
constexpr int32_t kMMA_PREFILL_BLOCK_ROWS = 64; //!< 4 x 1 warps: warps split the query vectors
constexpr int32_t kMMA_BLOCK_KEYS = 64;

} // namespace detail
} // namespace kernels
} // namespace slowfast
