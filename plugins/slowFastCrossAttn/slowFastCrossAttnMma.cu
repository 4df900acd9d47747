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
 * - epilogue: every warp dumps (m, l, O) of its 16 vectors to smem, then the block merges the kWarpsN
 *   key slices per vector and writes the output (one split) or the split partials.
 * Fragment layouts: PTX ISA, "Matrix Fragments for mma.m16n8k16" (groupID = lane / 4, tig = lane % 4).
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

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define SLOWFAST_MMA_ENABLED 1
#else
#define SLOWFAST_MMA_ENABLED 0
#endif

__device__ __forceinline__ uint32_t smemAddress(void const* p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

//! 16-byte async global->shared copy; srcBytes == 0 writes zeros without reading src.
__device__ __forceinline__ void cpAsync16(void* dst, void const* src, uint32_t srcBytes)
{
#if SLOWFAST_MMA_ENABLED
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddress(dst)), "l"(src), "r"(srcBytes)
                 : "memory");
#else
    __trap();
#endif
}

__device__ __forceinline__ void cpAsyncCommit()
{
#if SLOWFAST_MMA_ENABLED
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int32_t kPending>
__device__ __forceinline__ void cpAsyncWait()
{
#if SLOWFAST_MMA_ENABLED
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

__device__ __forceinline__ void ldmatrixX4(uint32_t (&r)[4], void const* p)
{
#if SLOWFAST_MMA_ENABLED
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smemAddress(p))
                 : "memory");
#else
    __trap();
#endif
}

__device__ __forceinline__ void ldmatrixX4Trans(uint32_t (&r)[4], void const* p)
{
#if SLOWFAST_MMA_ENABLED
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smemAddress(p))
                 : "memory");
#else
    __trap();
#endif
}

//! c += a * b for one m16n8k16 tile, float32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
#if SLOWFAST_MMA_ENABLED
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(
    float (&c)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
#if SLOWFAST_MMA_ENABLED
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

//! Two floats -> packed pair, lo in the low 16 bits (lower column index of the fragment).
template <typename T>
__device__ __forceinline__ uint32_t packPair(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t packPair<__half>(float lo, float hi)
{
    __half2 const h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t const*>(&h);
}
template <>
__device__ __forceinline__ uint32_t packPair<__nv_bfloat16>(float lo, float hi)
{
    __nv_bfloat162 const h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t const*>(&h);
}

template <int32_t kD>
struct MmaSmem
{
    static constexpr int32_t kSTRIDE = kD + 8; //!< elements per smem K/V row (272 B for D = 128)
    static constexpr int32_t kTILE = kMMA_BLOCK_KEYS * kSTRIDE;
    static constexpr size_t kLOOP_BYTES = 4 * kTILE * 2;                  //!< K, V x 2 stages of 16-bit
    static constexpr size_t kEPILOGUE_BYTES = (4 * 16 * kD + 2 * 4 * 16) * 4; //!< O, m, l of 4 warps
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

//! Online softmax (base 2) of one tile: masks keys >= keyEnd, rescales l and o, leaves p in s.
//! Element c of s[nt]: row lane / 4 + 8 * (c / 2), key firstKey + nt * 8 + 2 * (lane % 4) + c % 2.
template <int32_t kNT, int32_t kDT>
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
                int32_t const keyIdx = firstKey + nt * 8 + 2 * (lane % 4) + c;
                float const v = keyIdx < keyEnd ? s[nt][2 * r + c] * scaleLog2 : -INFINITY;
                s[nt][2 * r + c] = v;
                mx = fmaxf(mx, v);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffU, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffU, mx, 2));
        float const mNew = fmaxf(m[r], mx);
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
template <typename T, int32_t kD, int32_t kWarpsM, int32_t kWarpsN>
__device__ __forceinline__ void mergeAndStore(unsigned char* smemRaw, float const (&m)[2], float const (&l)[2],
    float const (&o)[kD / 8][4], KernelArgs const& a, TileInfo const& t, int32_t kvHead, int32_t split)
{
    int32_t const warp = threadIdx.x / 32;
    int32_t const lane = threadIdx.x % 32;
    float* const sO = reinterpret_cast<float*>(smemRaw); // [warp][16][kD]
    float* const sM = sO + 4 * 16 * kD;                   // [warp][16]
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
            float* dst = sO + (warp * 16 + row16) * kD + i * 8 + 2 * (lane % 4);
            dst[0] = o[i][2 * r];
            dst[1] = o[i][2 * r + 1];
        }
    }
    __syncthreads();

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
            mMax = fmaxf(mMax, sM[(slot0 + w) * 16 + row16]);
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
            acc += weight * sO[(slot * 16 + row16) * kD + d];
        }
        int32_t const p = t.vecBegin + vec;
        int32_t const row = t.rowBase + p / a.groupSize;
        float const ctx = sum > 0.F ? acc / sum : 0.F;
        float const lse = sum > 0.F ? mMax + log2f(sum) : -INFINITY;
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
        onlineSoftmax<kNT, kD / 8>(s, m, l, o, tileStart + keyRow0, t.keyEnd, a.scaleLog2, lane);
        accumulatePV<T, kD, kNT>(o, s, sK + kBN * kSTRIDE, keyRow0, lane);
        __syncthreads(); // stage `it % 2` is refilled by iteration it + 1
    }
    cpAsyncWait<0>();
    __syncthreads();
    mergeAndStore<T, kD, kWarpsM, kWarpsN>(smemRaw, m, l, o, a, t, kvHead, split);
}

template <typename T, int32_t kD, int32_t kWarpsM, int32_t kWarpsN>
cudaError_t launchMmaVariant(KernelArgs const& args, dim3 grid, cudaStream_t stream)
{
    auto kernel = mmaKernel<T, kD, kWarpsM, kWarpsN>;
    size_t const smem = MmaSmem<kD>::kBYTES;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess)
    {
        return err;
    }
    kernel<<<grid, kTHREADS, smem, stream>>>(args);
    return cudaGetLastError();
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
