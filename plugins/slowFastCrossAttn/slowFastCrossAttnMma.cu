/*
 * Tensor-core slow-token cross-attention for float16/bfloat16 (sm_80+), FlashAttention-2 style.
 *
 * Block = 4 warps = kWarpsM x kWarpsN; each warp owns 16 packed query vectors x (64 / kWarpsN) keys of
 * every 64-key tile:  decode 1 x 4 (16 vectors, warps split the keys), prefill 4 x 1 (64 vectors).
 * - K/V tiles [64][D + 8] (padded rows: conflict-free ldmatrix) double-buffered with cp.async; keys past
 *   the chunk end are zero-filled (never read from global memory);
 * - S = Q K^T with mma.sync m16n8k16 (Q fragments in registers, K fragments by ldmatrix), float32 acc;
 * - online softmax in base 2 on the accumulator fragments (row max/sum across the 4-lane quad);
 * - O += P V: P re-packed from the S accumulators as the A operand, V fragments by ldmatrix.trans;
 * - keys past the chunk end are masked (-inf) in the last tile of the chunk only (the only partial one);
 * - epilogue: every warp dumps (m, l, O) of its 16 vectors to smem (rows padded to D + 8 floats: conflict-free
 *   float2 stores), then the block merges the kWarpsN key slices per vector and writes the output (one
 *   split) or the split partials. NaN propagates (nanMax; "no key" comes from the key range, not from l).
 * Fragment layouts: PTX ISA, "Matrix Fragments for mma.m16n8k16" (groupID = lane / 4, tig = lane % 4).
 */
#include "slowFastCrossAttnMmaPtx.cuh"

#include <atomic>
#include <cmath>

namespace slowfast
{
namespace kernels
{
namespace detail
{
namespace
{

template <int32_t kD>
struct MmaSmem
{
    static constexpr int32_t kSTRIDE = kD + 8; //!< elements per smem K/V row (272 B for D = 128)
    static constexpr int32_t kTILE = kMMA_BLOCK_KEYS * kSTRIDE;
    static constexpr size_t kLOOP_BYTES = 4 * kTILE * 2;                  //!< K, V x 2 stages of 16-bit
    static constexpr int32_t kO_STRIDE = kD + 8; //!< floats per epilogue O row: 8 mod 32 -> no bank conflict
    static constexpr size_t kEPILOGUE_BYTES = (4 * 16 * kO_STRIDE + 2 * 4 * 16) * 4; //!< O, m, l of 4 warps
    static constexpr size_t kBYTES = kLOOP_BYTES > kEPILOGUE_BYTES ? kLOOP_BYTES : kEPILOGUE_BYTES;
};

//! Issues the cp.async copies of keys [tileStart, tileStart + 64) of K and V into one stage.
template <typename T, int32_t kD>
__device__ __forceinline__ void loadTileAsync(
    T* sK, T* sV, T const* key, T const* value, int32_t tileStart, int32_t keyEnd)
{
    constexpr int32_t kCHUNKS = kD / 8; // 16-byte chunks per row
    constexpr int32_t kSTRIDE = MmaSmem<kD>::kSTRIDE;
    for (int32_t c = threadIdx.x; c < kMMA_BLOCK_KEYS * kCHUNKS; c += kTHREADS)
    {
        int32_t const n = c / kCHUNKS;
        int32_t const col = (c % kCHUNKS) * 8;
        bool const valid = tileStart + n < keyEnd;
        int64_t const src = valid ? static_cast<int64_t>(tileStart + n) * kD + col : 0;
        uint32_t const bytes = valid ? 16U : 0U;
        cpAsync16(sK + n * kSTRIDE + col, key + src, bytes);
        cpAsync16(sV + n * kSTRIDE + col, value + src, bytes);
    }
}

//! Q fragments (A operand, row-major 16 x 16 per k-step) of packed vectors firstVec .. firstVec + 15,
//! straight from global memory; vectors past the tile are zero.
template <typename T, int32_t kD>
__device__ __forceinline__ void loadQueryFragments(uint32_t (&qa)[kD / 16][4], KernelArgs const& a,
    TileInfo const& t, int32_t kvHead, int32_t firstVec, int32_t lane)
{
    T const* query = static_cast<T const*>(a.query);
    int32_t const v0 = firstVec + lane / 4;
    int32_t const v1 = v0 + 8;
    T const* q0 = v0 < t.numVec ? query + vectorOffset(a, t, kvHead, t.vecBegin + v0, kD) : nullptr;
    T const* q1 = v1 < t.numVec ? query + vectorOffset(a, t, kvHead, t.vecBegin + v1, kD) : nullptr;
#pragma unroll
    for (int32_t ks = 0; ks < kD / 16; ++ks)
    {
        int32_t const c = ks * 16 + 2 * (lane % 4);
        qa[ks][0] = q0 ? *reinterpret_cast<uint32_t const*>(q0 + c) : 0U;
        qa[ks][1] = q1 ? *reinterpret_cast<uint32_t const*>(q1 + c) : 0U;
        qa[ks][2] = q0 ? *reinterpret_cast<uint32_t const*>(q0 + c + 8) : 0U;
        qa[ks][3] = q1 ? *reinterpret_cast<uint32_t const*>(q1 + c + 8) : 0U;
    }
}

//! s = Q K^T for the kNT * 8 keys starting at smem row keyRow0 of the K tile.
template <typename T, int32_t kD, int32_t kNT>
__device__ __forceinline__ void scoreTile(
    float (&s)[kNT][4], uint32_t const (&qa)[kD / 16][4], T const* sK, int32_t keyRow0, int32_t lane)
{
    constexpr int32_t kSTRIDE = MmaSmem<kD>::kSTRIDE;
    int32_t const ldRow = lane % 8;
    int32_t const ldMat = lane / 8; // which 8x8 matrix this lane addresses
#pragma unroll
    for (int32_t nt = 0; nt < kNT; ++nt)
    {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.F;
    }
#pragma unroll
    for (int32_t ks = 0; ks < kD / 16; ++ks)
    {
#pragma unroll
        for (int32_t nt = 0; nt < kNT; nt += 2)
        {
            // matrices: (keys nt*8.., d ks*16), (keys nt*8.., d +8), (keys nt*8+8.., d ks*16), (.., d +8)
            int32_t const keyRow = keyRow0 + nt * 8 + (ldMat / 2) * 8 + ldRow;
            int32_t const col = ks * 16 + (ldMat % 2) * 8;
            uint32_t b[4];
            ldmatrixX4(b, sK + keyRow * kSTRIDE + col);
            mma16816<T>(s[nt], qa[ks], b[0], b[1]);
            mma16816<T>(s[nt + 1], qa[ks], b[2], b[3]);
        }
    }
}

//! Online softmax (base 2) of one tile: masks keys >= keyEnd (kMASK: the chunk's last, partial tile only),
//! rescales l and o, leaves p in s. The max propagates NaN, so a NaN score makes m, l and o of its row NaN.
//! Element c of s[nt]: row lane / 4 + 8 * (c / 2), key firstKey + nt * 8 + 2 * (lane % 4) + c % 2.
template <bool kMASK, int32_t kNT, int32_t kDT>
__device__ __forceinline__ void onlineSoftmax(float (&s)[kNT][4], float (&m)[2], float (&l)[2], float (&o)[kDT][4],
    int32_t firstKey, int32_t keyEnd, float scaleLog2, int32_t lane)
{
#pragma unroll
    for (int32_t r = 0; r < 2; ++r)
    {
        float mx = -INFINITY;
#pragma unroll
        for (int32_t nt = 0; nt < kNT; ++nt)
        {
#pragma unroll
            for (int32_t c = 0; c < 2; ++c)
            {
                float v = s[nt][2 * r + c] * scaleLog2;
                if constexpr (kMASK)
                {
                    v = firstKey + nt * 8 + 2 * (lane % 4) + c < keyEnd ? v : -INFINITY;
                }
                s[nt][2 * r + c] = v;
                mx = nanMax(mx, v);
            }
        }
        mx = nanMax(mx, __shfl_xor_sync(0xffffffffU, mx, 1));
        mx = nanMax(mx, __shfl_xor_sync(0xffffffffU, mx, 2));
        float const mNew = nanMax(m[r], mx);
        float const mRef = mNew == -INFINITY ? 0.F : mNew; // all keys of this warp masked so far
        float const alpha = exp2f(m[r] - mRef);
        float sum = 0.F;
#pragma unroll
        for (int32_t nt = 0; nt < kNT; ++nt)
        {
#pragma unroll
            for (int32_t c = 0; c < 2; ++c)
            {
                float const pv = exp2f(s[nt][2 * r + c] - mRef);
                s[nt][2 * r + c] = pv;
                sum += pv;
            }
        }
        l[r] = l[r] * alpha + sum; // per-lane partial, reduced across the quad in the epilogue
        m[r] = mNew;
#pragma unroll
        for (int32_t i = 0; i < kDT; ++i)
        {
            o[i][2 * r] *= alpha;
            o[i][2 * r + 1] *= alpha;
        }
    }
}

//! o += P V, 16 keys per step: the accumulators of two 8-key n-tiles form the A fragment of P.
template <typename T, int32_t kD, int32_t kNT>
__device__ __forceinline__ void accumulatePV(
    float (&o)[kD / 8][4], float const (&p)[kNT][4], T const* sV, int32_t keyRow0, int32_t lane)
{
    constexpr int32_t kSTRIDE = MmaSmem<kD>::kSTRIDE;
    int32_t const ldRow = lane % 8;
    int32_t const ldMat = lane / 8;
#pragma unroll
    for (int32_t kk = 0; kk < kNT / 2; ++kk)
    {
        uint32_t const pa[4] = {packPair<T>(p[2 * kk][0], p[2 * kk][1]), packPair<T>(p[2 * kk][2], p[2 * kk][3]),
            packPair<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]), packPair<T>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
        // matrices: (keys +0.., d dt*8), (keys +8.., d dt*8), (keys +0.., d dt*8+8), (keys +8.., d dt*8+8)
        int32_t const keyRow = keyRow0 + kk * 16 + (ldMat % 2) * 8 + ldRow;
#pragma unroll
        for (int32_t dt = 0; dt < kD / 8; dt += 2)
        {
            uint32_t b[4];
            ldmatrixX4Trans(b, sV + keyRow * kSTRIDE + dt * 8 + (ldMat / 2) * 8);
            mma16816<T>(o[dt], pa, b[0], b[1]);
            mma16816<T>(o[dt + 1], pa, b[2], b[3]);
        }
    }
}

//! Epilogue: every warp dumps (m, l, O) of its 16 vectors to shared memory (reusing the K/V tiles),
//! then the block merges the kWarpsN key slices of each vector and stores the result.
//! hasKey (block-uniform): the chunk has >= 1 key. Without one ctx is exactly 0 and lse -inf; with one,
//! ctx = acc / sum even when sum is NaN (NaN input) or 0 (all scores -inf): both give NaN, as the reference.
template <typename T, int32_t kD, int32_t kWarpsM, int32_t kWarpsN>
__device__ __forceinline__ void mergeAndStore(unsigned char* smemRaw, float const (&m)[2], float const (&l)[2],
    float const (&o)[kD / 8][4], KernelArgs const& a, TileInfo const& t, int32_t kvHead, int32_t split)
{
    constexpr int32_t kOS = MmaSmem<kD>::kO_STRIDE;
    int32_t const warp = threadIdx.x / 32;
    int32_t const lane = threadIdx.x % 32;
    float* const sO = reinterpret_cast<float*>(smemRaw); // [warp][16][kOS]
    float* const sM = sO + 4 * 16 * kOS;                  // [warp][16]
    float* const sL = sM + 4 * 16;                        // [warp][16]
#pragma unroll
    for (int32_t r = 0; r < 2; ++r)
    {
        float lr = l[r];
        lr += __shfl_xor_sync(0xffffffffU, lr, 1);
        lr += __shfl_xor_sync(0xffffffffU, lr, 2);
        int32_t const row16 = lane / 4 + 8 * r;
        if (lane % 4 == 0)
        {
            sM[warp * 16 + row16] = m[r];
            sL[warp * 16 + row16] = lr;
        }
#pragma unroll
        for (int32_t i = 0; i < kD / 8; ++i)
        {
            // 8-byte stores: per half-warp, 4 rows x 4 lanes hit 32 distinct banks (row stride 8 mod 32)
            *reinterpret_cast<float2*>(sO + (warp * 16 + row16) * kOS + i * 8 + 2 * (lane % 4))
                = make_float2(o[i][2 * r], o[i][2 * r + 1]);
        }
    }
    __syncthreads();

    bool const hasKey = t.keyEnd > t.keyBegin;
    for (int32_t idx = threadIdx.x; idx < 16 * kWarpsM * kD; idx += kTHREADS)
    {
        int32_t const vec = idx / kD;
        int32_t const d = idx % kD;
        if (vec >= t.numVec)
        {
            break; // idx only grows
        }
        int32_t const slot0 = (vec / 16) * kWarpsN; // warp = wm * kWarpsN + wn
        int32_t const row16 = vec % 16;
        float mMax = -INFINITY;
#pragma unroll
        for (int32_t w = 0; w < kWarpsN; ++w)
        {
            mMax = nanMax(mMax, sM[(slot0 + w) * 16 + row16]);
        }
        float sum = 0.F;
        float acc = 0.F;
#pragma unroll
        for (int32_t w = 0; w < kWarpsN; ++w)
        {
            int32_t const slot = slot0 + w;
            float const mw = sM[slot * 16 + row16];
            float const weight = mw == -INFINITY ? 0.F : exp2f(mw - mMax);
            sum += weight * sL[slot * 16 + row16];
            acc += weight * sO[(slot * 16 + row16) * kOS + d];
        }
        int32_t const p = t.vecBegin + vec;
        int32_t const row = t.rowBase + p / a.groupSize;
        float const ctx = hasKey ? acc / sum : 0.F;
        float const lse = hasKey ? mMax + log2f(sum) : -INFINITY;
        storeResult<T>(a, split, vectorOffset(a, t, kvHead, p, kD) + d, row, d, kD, ctx, lse);
    }
}

template <typename T, int32_t kD, int32_t kWarpsM, int32_t kWarpsN>
__global__ void __launch_bounds__(kTHREADS) mmaKernel(KernelArgs const a)
{
    static_assert(kWarpsM * kWarpsN * 32 == kTHREADS, "4 warps");
    constexpr int32_t kBN = kMMA_BLOCK_KEYS;
    constexpr int32_t kKPW = kBN / kWarpsN; // keys per warp per tile
    constexpr int32_t kNT = kKPW / 8;       // 8-key n-tiles per warp
    constexpr int32_t kSTRIDE = MmaSmem<kD>::kSTRIDE;
    static_assert(kKPW % 16 == 0, "P V needs 16-key steps per warp");

    extern __shared__ __align__(16) unsigned char smemRaw[];
    T* const sKV = reinterpret_cast<T*>(smemRaw); // [stage][K | V][kBN][kSTRIDE]
    __shared__ TileInfo sTile;
    int32_t const kvHead = blockIdx.z;
    int32_t const split = blockIdx.y;
    if (threadIdx.x == 0)
    {
        sTile = findTile(a, blockIdx.x, split, 16 * kWarpsM, kBN);
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
    int32_t const lane = threadIdx.x % 32;
    int32_t const wm = (threadIdx.x / 32) / kWarpsN;
    int32_t const keyRow0 = ((threadIdx.x / 32) % kWarpsN) * kKPW; // this warp's keys within a tile

    uint32_t qa[kD / 16][4];
    loadQueryFragments<T, kD>(qa, a, t, kvHead, wm * 16, lane);
    int64_t const kvBase = (static_cast<int64_t>(t.batchIndex) * a.numKvHeads + kvHead) * a.slowTokens * kD;
    T const* key = static_cast<T const*>(a.key) + kvBase;
    T const* value = static_cast<T const*>(a.value) + kvBase;

    float o[kD / 8][4];
#pragma unroll
    for (int32_t i = 0; i < kD / 8; ++i)
    {
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.F;
    }
    float m[2] = {-INFINITY, -INFINITY}; // rows lane / 4 and lane / 4 + 8
    float l[2] = {0.F, 0.F};

    int32_t const numTiles = ceilDiv(t.keyEnd - t.keyBegin, kBN);
    if (numTiles > 0)
    {
        loadTileAsync<T, kD>(sKV, sKV + kBN * kSTRIDE, key, value, t.keyBegin, t.keyEnd);
    }
    cpAsyncCommit();
    for (int32_t it = 0; it < numTiles; ++it)
    {
        int32_t const tileStart = t.keyBegin + it * kBN;
        if (it + 1 < numTiles)
        {
            T* next = sKV + ((it + 1) % 2) * 2 * kBN * kSTRIDE;
            loadTileAsync<T, kD>(next, next + kBN * kSTRIDE, key, value, tileStart + kBN, t.keyEnd);
        }
        cpAsyncCommit();
        cpAsyncWait<1>(); // tile `it` has landed (the newest group may still be in flight)
        __syncthreads();
        T const* sK = sKV + (it % 2) * 2 * kBN * kSTRIDE;
        float s[kNT][4];
        scoreTile<T, kD, kNT>(s, qa, sK, keyRow0, lane);
        if (tileStart + kBN > t.keyEnd) // block-uniform: only the chunk's last tile can be partial
        {
            onlineSoftmax<true, kNT, kD / 8>(s, m, l, o, tileStart + keyRow0, t.keyEnd, a.scaleLog2, lane);
        }
        else
        {
            onlineSoftmax<false, kNT, kD / 8>(s, m, l, o, tileStart + keyRow0, t.keyEnd, a.scaleLog2, lane);
        }
        accumulatePV<T, kD, kNT>(o, s, sK + kBN * kSTRIDE, keyRow0, lane);
        __syncthreads(); // stage `it % 2` is refilled by iteration it + 1
    }
    cpAsyncWait<0>();
    __syncthreads();
    mergeAndStore<T, kD, kWarpsM, kWarpsN>(smemRaw, m, l, o, a, t, kvHead, split);
}

constexpr int32_t kMAX_DEVICES = 64;
constexpr size_t kDEFAULT_MAX_DYNAMIC_SMEM = 48 * 1024;

//! Raises the dynamic shared-memory limit of one kernel instantiation once per device (done[device]). The
//! attribute stays set on the function for the device's context, so later launches only read a flag and call
//! cudaGetDevice, which is legal during stream capture. Racing first calls may both set it (same value, the
//! runtime is thread-safe). Devices past kMAX_DEVICES set it on every launch.
template <typename Kernel>
cudaError_t ensureDynamicSmem(Kernel kernel, int32_t bytes, std::atomic<bool> (&done)[kMAX_DEVICES], int32_t& device)
{
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess)
    {
        device = -1;
        return err;
    }
    bool const known = device >= 0 && device < kMAX_DEVICES;
    if (known && done[device].load(std::memory_order_acquire))
    {
        return cudaSuccess;
    }
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err == cudaSuccess && known)
    {
        done[device].store(true, std::memory_order_release);
    }
    return err;
}

template <typename T, int32_t kD, int32_t kWarpsM, int32_t kWarpsN>
cudaError_t launchMmaVariant(KernelArgs const& args, dim3 grid, cudaStream_t stream)
{
    auto kernel = mmaKernel<T, kD, kWarpsM, kWarpsN>;
    constexpr size_t kSMEM = MmaSmem<kD>::kBYTES;
    static std::atomic<bool> sSmemSet[kMAX_DEVICES]{}; // per instantiation and device
    int32_t device = -1;
    if constexpr (kSMEM > kDEFAULT_MAX_DYNAMIC_SMEM) // D = 128: opt in above the default limit
    {
        cudaError_t const err = ensureDynamicSmem(kernel, static_cast<int32_t>(kSMEM), sSmemSet, device);
        if (err != cudaSuccess)
        {
            return err;
        }
    }
    kernel<<<grid, kTHREADS, kSMEM, stream>>>(args);
    cudaError_t const err = cudaGetLastError();
    if (err != cudaSuccess && device >= 0 && device < kMAX_DEVICES)
    {
        sSmemSet[device].store(false, std::memory_order_release); // set again next time (e.g. after a device reset)
    }
    return err;
}

template <typename T, int32_t kD>
cudaError_t launchMmaHeadDim(KernelArgs const& args, int32_t blockRows, dim3 grid, cudaStream_t stream)
{
    if (blockRows == kMMA_DECODE_BLOCK_ROWS)
    {
        return launchMmaVariant<T, kD, 1, 4>(args, grid, stream);
    }
    if (blockRows == kMMA_PREFILL_BLOCK_ROWS)
    {
        return launchMmaVariant<T, kD, 4, 1>(args, grid, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace

template <typename T>
cudaError_t launchMma(KernelArgs const& args, int32_t headDim, int32_t blockRows, dim3 grid, cudaStream_t stream)
{
    switch (headDim)
    {
    case 64: return launchMmaHeadDim<T, 64>(args, blockRows, grid, stream);
    case 128: return launchMmaHeadDim<T, 128>(args, blockRows, grid, stream);
    default: return cudaErrorInvalidValue;
    }
}

template cudaError_t launchMma<__half>(KernelArgs const&, int32_t, int32_t, dim3, cudaStream_t);
template cudaError_t launchMma<__nv_bfloat16>(KernelArgs const&, int32_t, int32_t, dim3, cudaStream_t);

} // namespace detail
} // namespace kernels
} // namespace slowfast
