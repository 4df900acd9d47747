/*
 * CUDA-core (SIMT) slow-token cross-attention: every dtype, float32 math.
 *
 * Block = 4 warps, 8 packed query vectors (2 per warp), 32 keys per shared-memory tile:
 * - K/V tiles are widened to float in shared memory, keys past the chunk end are zero-filled;
 * - lane j scores key j against the warp's 2 query vectors (q broadcast from smem);
 * - online softmax in base 2 per vector (warp shuffles), then O += P V with lane j owning d = j + 32 i;
 * - NaN propagates (nanMax; "no key" comes from the key range, not from the sum), as the float reference.
 * Used for float32 (the only float32 path) and as a fallback/cross-check for float16/bfloat16.
 */
#include "slowFastCrossAttnCommon.cuh"

#include <cmath>

namespace slowfast
{
namespace kernels
{
namespace detail
{
namespace
{

constexpr int32_t kWARPS = kTHREADS / 32;
constexpr int32_t kROWS_PER_WARP = kSIMT_BLOCK_ROWS / kWARPS;
static_assert(kROWS_PER_WARP * kWARPS == kSIMT_BLOCK_ROWS, "rows must split evenly across warps");
static_assert(kSIMT_BLOCK_KEYS == 32, "one key per lane");

__device__ __forceinline__ float warpMax(float v)
{
#pragma unroll
    for (int32_t o = 16; o > 0; o >>= 1)
    {
        v = nanMax(v, __shfl_xor_sync(0xffffffffU, v, o));
    }
    return v;
}

__device__ __forceinline__ float warpSum(float v)
{
#pragma unroll
    for (int32_t o = 16; o > 0; o >>= 1)
    {
        v += __shfl_xor_sync(0xffffffffU, v, o);
    }
    return v;
}

//! Loads rows x kD elements (row r at src + rowOffset(r)) widened to float into dst[r][*] (row stride kStride).
//! Rows with !valid(r) are zero-filled.
template <typename T, int32_t kD, int32_t kStride, typename RowPtr>
__device__ __forceinline__ void loadRowsToSmem(float* dst, int32_t rows, RowPtr rowPtr)
{
    constexpr int32_t kCHUNKS = kD / 8;
    for (int32_t c = threadIdx.x; c < rows * kCHUNKS; c += kTHREADS)
    {
        int32_t const r = c / kCHUNKS;
        int32_t const col = (c % kCHUNKS) * 8;
        float v[8] = {0.F, 0.F, 0.F, 0.F, 0.F, 0.F, 0.F, 0.F};
        T const* src = rowPtr(r);
        if (src != nullptr)
        {
            load8(src + col, v);
        }
        float4* out = reinterpret_cast<float4*>(dst + r * kStride + col);
        out[0] = make_float4(v[0], v[1], v[2], v[3]);
        out[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
}

//! Per-warp online-softmax state: kROWS_PER_WARP query vectors, lane owns d = lane + 32 i of each.
template <int32_t kD>
struct SimtState
{
    float m[kROWS_PER_WARP];
    float l[kROWS_PER_WARP]; //!< per-lane partial sums, reduced in the epilogue
    float o[kROWS_PER_WARP][kD / 32];
};

//! One key tile (valid keys 0 .. valid-1 of sK/sV): lane = key for the scores, lane = d for P V.
template <int32_t kD>
__device__ __forceinline__ void simtTile(SimtState<kD>& st, float const* sQ, float const* sK, float const* sV,
    int32_t valid, float scaleLog2, int32_t warp, int32_t lane)
{
    constexpr int32_t kKSTRIDE = kD + 4;
    float s[kROWS_PER_WARP];
#pragma unroll
    for (int32_t r = 0; r < kROWS_PER_WARP; ++r)
    {
        s[r] = 0.F;
    }
#pragma unroll 8
    for (int32_t d = 0; d < kD; d += 4)
    {
        float4 const k4 = *reinterpret_cast<float4 const*>(&sK[lane * kKSTRIDE + d]);
#pragma unroll
        for (int32_t r = 0; r < kROWS_PER_WARP; ++r)
        {
            float4 const q4 = *reinterpret_cast<float4 const*>(&sQ[(warp * kROWS_PER_WARP + r) * kD + d]);
            s[r] += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
        }
    }
    float p[kROWS_PER_WARP];
#pragma unroll
    for (int32_t r = 0; r < kROWS_PER_WARP; ++r)
    {
        float const scaled = lane < valid ? s[r] * scaleLog2 : -INFINITY;
        float const mNew = nanMax(st.m[r], warpMax(scaled)); // finite for finite inputs: >= 1 valid key
        float const alpha = exp2f(st.m[r] - mNew);
        p[r] = exp2f(scaled - mNew);
        st.l[r] = st.l[r] * alpha + p[r];
        st.m[r] = mNew;
#pragma unroll
        for (int32_t i = 0; i < kD / 32; ++i)
        {
            st.o[r][i] *= alpha;
        }
    }
    for (int32_t n = 0; n < valid; ++n)
    {
#pragma unroll
        for (int32_t r = 0; r < kROWS_PER_WARP; ++r)
        {
            float const pn = __shfl_sync(0xffffffffU, p[r], n);
#pragma unroll
            for (int32_t i = 0; i < kD / 32; ++i)
            {
                st.o[r][i] += pn * sV[n * kD + lane + 32 * i];
            }
        }
    }
}

template <typename T, int32_t kD>
__device__ __forceinline__ void simtStore(SimtState<kD> const& st, KernelArgs const& a, TileInfo const& t,
    int32_t kvHead, int32_t split, int32_t warp, int32_t lane)
{
    bool const hasKey = t.keyEnd > t.keyBegin; // else ctx is exactly 0; a NaN sum stays NaN
#pragma unroll
    for (int32_t r = 0; r < kROWS_PER_WARP; ++r)
    {
        float const sum = warpSum(st.l[r]);
        int32_t const vec = warp * kROWS_PER_WARP + r;
        if (vec >= t.numVec)
        {
            continue;
        }
        int32_t const p = t.vecBegin + vec;
        int32_t const row = t.rowBase + p / a.groupSize;
        int64_t const base = vectorOffset(a, t, kvHead, p, kD);
        float const inv = hasKey ? 1.F / sum : 0.F;
        float const lse = hasKey ? st.m[r] + log2f(sum) : -INFINITY;
#pragma unroll
        for (int32_t i = 0; i < kD / 32; ++i)
        {
            int32_t const d = lane + 32 * i;
            storeResult<T>(a, split, base + d, row, d, kD, st.o[r][i] * inv, lse);
        }
    }
}

template <typename T, int32_t kD>
__global__ void __launch_bounds__(kTHREADS) simtKernel(KernelArgs const a)
{
    constexpr int32_t kBM = kSIMT_BLOCK_ROWS;
    constexpr int32_t kBN = kSIMT_BLOCK_KEYS;
    constexpr int32_t kKSTRIDE = kD + 4; // 16-byte rows, conflict-free float4 reads by lane = key
    __shared__ __align__(16) float sQ[kBM * kD];
    __shared__ __align__(16) float sK[kBN * kKSTRIDE];
    __shared__ __align__(16) float sV[kBN * kD];
    __shared__ TileInfo sTile;

    int32_t const kvHead = blockIdx.z;
    int32_t const split = blockIdx.y;
    if (threadIdx.x == 0)
    {
        sTile = findTile(a, blockIdx.x, split, kBM, kBN);
    }
    __syncthreads();
    TileInfo const t = sTile;
    if (a.numSplits == 1)
    {
        fillUncoveredRows<T>(a, t, kvHead, kD);
    }
    if (t.batchIndex < 0)
    {
        return;
    }
    T const* query = static_cast<T const*>(a.query);
    loadRowsToSmem<T, kD, kD>(sQ, kBM, [&](int32_t r) -> T const* {
        return r < t.numVec ? query + vectorOffset(a, t, kvHead, t.vecBegin + r, kD) : nullptr;
    });
    int64_t const kvBase = (static_cast<int64_t>(t.batchIndex) * a.numKvHeads + kvHead) * a.slowTokens * kD;
    T const* key = static_cast<T const*>(a.key) + kvBase;
    T const* value = static_cast<T const*>(a.value) + kvBase;
    int32_t const warp = threadIdx.x / 32;
    int32_t const lane = threadIdx.x % 32;

    SimtState<kD> st;
#pragma unroll
    for (int32_t r = 0; r < kROWS_PER_WARP; ++r)
    {
        st.m[r] = -INFINITY;
        st.l[r] = 0.F;
#pragma unroll
        for (int32_t i = 0; i < kD / 32; ++i)
        {
            st.o[r][i] = 0.F;
        }
    }
    for (int32_t tileStart = t.keyBegin; tileStart < t.keyEnd; tileStart += kBN)
    {
        __syncthreads(); // previous tile fully consumed
        int32_t const valid = min(kBN, t.keyEnd - tileStart);
        auto const keyRow = [&](T const* base, int32_t n) -> T const* {
            return n < valid ? base + static_cast<int64_t>(tileStart + n) * kD : nullptr; // zero-fill past the chunk
        };
        loadRowsToSmem<T, kD, kKSTRIDE>(sK, kBN, [&](int32_t n) { return keyRow(key, n); });
        loadRowsToSmem<T, kD, kD>(sV, kBN, [&](int32_t n) { return keyRow(value, n); });
        __syncthreads();
        simtTile<kD>(st, sQ, sK, sV, valid, a.scaleLog2, warp, lane);
    }
    simtStore<T, kD>(st, a, t, kvHead, split, warp, lane);
}

} // namespace

template <typename T>
cudaError_t launchSimt(KernelArgs const& args, int32_t headDim, dim3 grid, cudaStream_t stream)
{
    switch (headDim)
    {
    case 64: simtKernel<T, 64><<<grid, kTHREADS, 0, stream>>>(args); break;
    case 128: simtKernel<T, 128><<<grid, kTHREADS, 0, stream>>>(args); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

template cudaError_t launchSimt<float>(KernelArgs const&, int32_t, dim3, cudaStream_t);
template cudaError_t launchSimt<__half>(KernelArgs const&, int32_t, dim3, cudaStream_t);
template cudaError_t launchSimt<__nv_bfloat16>(KernelArgs const&, int32_t, dim3, cudaStream_t);

} // namespace detail
} // namespace kernels
} // namespace slowfast
