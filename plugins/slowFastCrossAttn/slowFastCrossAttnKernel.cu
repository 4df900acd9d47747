/*
 * Launcher of the slow-token cross-attention: validation, split planning, dispatch, split combine.
 * The attention kernels live in slowFastCrossAttnSimt.cu and slowFastCrossAttnMma.cu.
 */
#include "slowFastCrossAttnCommon.cuh"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <type_traits>

namespace slowfast
{
namespace kernels
{

namespace
{

using detail::ceilDiv;
using detail::KernelArgs;

constexpr int32_t kMIN_KEYS_PER_SPLIT = 128;
constexpr int32_t kBLOCKS_PER_SM_TARGET = 2;

size_t elementSize(CrossAttnDataType t)
{
    return t == CrossAttnDataType::kFLOAT ? 4 : 2;
}

bool isAligned(void const* p, size_t bytes)
{
    return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

//! Split partials of numSplits chunks: O [S, rows, H, D] then lse [S, rows, H], both float32.
size_t partialBytes(CrossAttnShape const& s, int32_t numSplits)
{
    if (numSplits <= 1)
    {
        return 0;
    }
    size_t const vectors = static_cast<size_t>(numSplits) * s.rows * s.numHeads;
    return vectors * (s.headDim + 1) * sizeof(float);
}

//! Automatic split count for one kernel variant: enough (tile, kv head, split) blocks for
//! kBLOCKS_PER_SM_TARGET blocks per SM, at least kMIN_KEYS_PER_SPLIT keys per split.
//! Tiles are estimated from host-known sizes: every sequence with rows has >= 1 tile of its own.
//! The count never grows with rows or batch, and never shrinks with slowTokens or numSms.
int32_t autoSplits(CrossAttnShape const& s, int32_t numSms, int32_t blockRows)
{
    int32_t const groupSize = s.numHeads / s.numKvHeads;
    int64_t const packedTiles = (static_cast<int64_t>(s.rows) * groupSize + blockRows - 1) / blockRows;
    int64_t const tiles = std::max<int64_t>({int64_t{1}, packedTiles, std::min(s.batch, s.rows)});
    int64_t const baseBlocks = tiles * s.numKvHeads;
    int64_t const target = static_cast<int64_t>(kBLOCKS_PER_SM_TARGET) * std::min(numSms, kMAX_POLICY_SMS);
    int64_t splits = (target + baseBlocks - 1) / baseBlocks;
    splits = std::min<int64_t>(splits, ceilDiv(std::max(s.slowTokens, 1), kMIN_KEYS_PER_SPLIT));
    return static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>(splits, kMAX_SPLITS)));
}

//! Drops splits that would own no key of a full-length sequence (chunks are whole key tiles).
int32_t trimSplits(int32_t splits, int32_t slowTokens, int32_t blockKeys)
{
    if (splits <= 1 || slowTokens <= 0)
    {
        return 1;
    }
    int32_t const chunk = ceilDiv(ceilDiv(slowTokens, splits), blockKeys) * blockKeys;
    return ceilDiv(slowTokens, chunk);
}

CrossAttnBackend resolveBackend(CrossAttnParams const& p)
{
    if (p.backend != CrossAttnBackend::kAUTO)
    {
        return p.backend;
    }
    return p.dataType == CrossAttnDataType::kFLOAT ? CrossAttnBackend::kSIMT : CrossAttnBackend::kMMA;
}

int32_t mmaBlockRows(CrossAttnShape const& s)
{
    int32_t const groupSize = s.numHeads / s.numKvHeads;
    int32_t const rowsPerSequence = ceilDiv(std::max(s.rows, 1), std::max(s.batch, 1));
    return rowsPerSequence * groupSize <= detail::kMMA_DECODE_BLOCK_ROWS ? detail::kMMA_DECODE_BLOCK_ROWS
                                                                         : detail::kMMA_PREFILL_BLOCK_ROWS;
}

//! Merges the split partials of one (row, head) per block: weights exp2(lse_s - max) / sum, then
//! output = gate epilogue of sum_s w_s * O_s. Every split writes every vector it owns (empty chunks write
//! ctx 0 and lse -inf), so all partials read here are defined. NaN in any chunk (lse or O) reaches the
//! output: the max propagates NaN and no product is skipped for a zero weight (0 * NaN = NaN, like the
//! reference). sum == 0 only when no chunk had a key (then every O_s is 0 and ctx is exactly 0). Rows of no
//! sequence are not in the partials: ctx = 0 is written for them without reading the workspace.
template <typename T>
__global__ void __launch_bounds__(128) combineKernel(KernelArgs const a, int32_t headDim)
{
    __shared__ float sWeight[kMAX_SPLITS];
    __shared__ float sInvSum;
    int64_t const vector = blockIdx.x; // row * H + head
    int32_t const row = static_cast<int32_t>(vector / a.numHeads);
    int32_t const coverBegin = detail::clampInt(a.offsets[0], 0, a.rows);
    if (row < coverBegin || row >= detail::clampInt(a.offsets[a.batch], coverBegin, a.rows))
    {
        for (int32_t d = threadIdx.x; d < headDim; d += blockDim.x)
        {
            detail::storeOutput<T>(a, vector * headDim + d, row, 0.F);
        }
        return;
    }
    int64_t const perSplit = static_cast<int64_t>(a.rows) * a.numHeads;
    if (threadIdx.x < 32)
    {
        float mMax = -INFINITY;
        for (int32_t s = threadIdx.x; s < a.numSplits; s += 32)
        {
            mMax = detail::nanMax(mMax, a.partialLse[s * perSplit + vector]);
        }
        for (int32_t o = 16; o > 0; o >>= 1)
        {
            mMax = detail::nanMax(mMax, __shfl_xor_sync(0xffffffffU, mMax, o));
        }
        float sum = 0.F;
        for (int32_t s = threadIdx.x; s < a.numSplits; s += 32)
        {
            float const lse = a.partialLse[s * perSplit + vector];
            float const w = lse == -INFINITY ? 0.F : exp2f(lse - mMax);
            sWeight[s] = w;
            sum += w;
        }
        for (int32_t o = 16; o > 0; o >>= 1)
        {
            sum += __shfl_xor_sync(0xffffffffU, sum, o);
        }
        if (threadIdx.x == 0)
        {
            sInvSum = sum == 0.F ? 0.F : 1.F / sum; // NaN stays NaN; 0: no key in any chunk
        }
    }
    __syncthreads();
    for (int32_t d = threadIdx.x; d < headDim; d += blockDim.x)
    {
        float acc = 0.F;
#pragma unroll 4
        for (int32_t s = 0; s < a.numSplits; ++s)
        {
            acc += sWeight[s] * a.partialOut[(s * perSplit + vector) * headDim + d];
        }
        detail::storeOutput<T>(a, vector * headDim + d, row, acc * sInvSum);
    }
}

//! grid.x of the attention kernels: an upper bound of sum_b ceil(G * rows_b / blockRows) over every split of
//! `rows` rows into at most `batch` sequences (findTile clamps device offsets so that they never overlap).
//! ceil is subadditive, so the worst case has k = min(batch, rows) non-empty sequences, and
//! sum_b ceil(x_b / BR) <= (sum_b x_b + k (BR - 1)) / BR; each row also adds at most ceil(G / BR) tiles.
//! Exact for one sequence (decode at batch 1: 1 slot for 1 row x 7 heads) and for batched decode.
int32_t tileSlots(CrossAttnShape const& s, int32_t blockRows)
{
    int32_t const groupSize = s.numHeads / s.numKvHeads;
    int64_t const k = std::min(s.batch, s.rows);
    int64_t const bySum = (static_cast<int64_t>(s.rows) * groupSize + k * (blockRows - 1)) / blockRows;
    int64_t const byRow = static_cast<int64_t>(s.rows) * ceilDiv(groupSize, blockRows);
    return static_cast<int32_t>(std::max<int64_t>(1, std::min(bySum, byRow)));
}

std::string checkShape(CrossAttnShape const& s)
{
    std::ostringstream err;
    if (s.rows < 0)
    {
        err << "rows must be >= 0, got " << s.rows;
    }
    else if (s.batch < 1)
    {
        err << "batch (slow_lengths size) must be >= 1, got " << s.batch;
    }
    else if (s.numHeads < 1 || s.numKvHeads < 1)
    {
        err << "num_heads and num_kv_heads must be >= 1, got " << s.numHeads << " and " << s.numKvHeads;
    }
    else if (s.numHeads % s.numKvHeads != 0)
    {
        err << "num_heads (" << s.numHeads << ") must be a multiple of num_kv_heads (" << s.numKvHeads << ")";
    }
    else if (s.headDim != 64 && s.headDim != 128)
    {
        err << "head_dim must be 64 or 128 (the compiled head dims), got " << s.headDim;
    }
    else if (s.slowTokens < 0)
    {
        err << "slow_tokens must be >= 0, got " << s.slowTokens;
    }
    else if (static_cast<int64_t>(s.rows) * s.numHeads > (int64_t{1} << 31) / s.headDim)
    {
        err << "rows * num_heads * head_dim must stay below 2^31, got rows = " << s.rows;
    }
    return err.str();
}

std::string checkPointers(CrossAttnParams const& p)
{
    std::ostringstream err;
    bool const needKv = p.shape.slowTokens > 0;
    bool const needRows = p.shape.rows > 0;
    struct Tensor
    {
        char const* name;
        void const* ptr;
        bool required;
        size_t alignment;
    };
    Tensor const tensors[] = {{"query", p.query, needRows, 16}, {"slow_key", p.slowKey, needKv && needRows, 16},
        {"slow_value", p.slowValue, needKv && needRows, 16}, {"slow_lengths", p.slowLengths, true, 4},
        {"row_offsets", p.rowOffsets, true, 4}, {"residual", p.residual, p.fuseGate && needRows, 16},
        {"gate", p.gate, p.fuseGate && needRows, elementSize(p.dataType)}, {"output", p.output, needRows, 16}};
    for (Tensor const& t : tensors)
    {
        if (t.required && t.ptr == nullptr)
        {
            err << t.name << " must not be null";
            return err.str();
        }
        if (t.ptr != nullptr && !isAligned(t.ptr, t.alignment))
        {
            err << t.name << " must be " << t.alignment << "-byte aligned (vectorised loads)";
            return err.str();
        }
    }
    if (!p.fuseGate && (p.residual != nullptr || p.gate != nullptr))
    {
        return "residual and gate are only accepted with fuse_gate = 1";
    }
    if (p.workspaceBytes > 0 && (p.workspace == nullptr || !isAligned(p.workspace, 16)))
    {
        return "workspace must be a 16-byte aligned pointer when workspace_bytes > 0";
    }
    return "";
}

} // namespace

char const* crossAttnBackendName(CrossAttnBackend backend)
{
    switch (backend)
    {
    case CrossAttnBackend::kAUTO: return "auto";
    case CrossAttnBackend::kSIMT: return "simt";
    case CrossAttnBackend::kMMA: return "mma";
    }
    return "unknown";
}

char const* crossAttnDataTypeName(CrossAttnDataType dataType)
{
    switch (dataType)
    {
    case CrossAttnDataType::kFLOAT: return "float32";
    case CrossAttnDataType::kHALF: return "float16";
    case CrossAttnDataType::kBF16: return "bfloat16";
    }
    return "unknown";
}

std::string crossAttnCheckParams(CrossAttnParams const& p)
{
    if (p.dataType != CrossAttnDataType::kFLOAT && p.dataType != CrossAttnDataType::kHALF
        && p.dataType != CrossAttnDataType::kBF16)
    {
        return "dtype must be float32, float16 or bfloat16";
    }
    std::string err = checkShape(p.shape);
    if (!err.empty())
    {
        return err;
    }
    if (!std::isfinite(p.scale))
    {
        return "scale must be finite";
    }
    if (p.backend == CrossAttnBackend::kMMA && p.dataType == CrossAttnDataType::kFLOAT)
    {
        return "backend 'mma' supports float16 and bfloat16 only (float32 runs on the 'simt' backend)";
    }
    if (p.backend != CrossAttnBackend::kAUTO && p.backend != CrossAttnBackend::kSIMT
        && p.backend != CrossAttnBackend::kMMA)
    {
        return "backend must be auto, simt or mma";
    }
    if (p.numSplits < 0 || p.numSplits > kMAX_SPLITS)
    {
        return "num_splits must be in [0, " + std::to_string(kMAX_SPLITS) + "] (0 = automatic), got "
            + std::to_string(p.numSplits);
    }
    if (p.numSms < 0 || p.smVersion < 0)
    {
        return "num_sms and sm_version must be >= 0 (0 = query the device)";
    }
    return checkPointers(p);
}

CrossAttnPlan crossAttnMakePlan(CrossAttnParams const& p, bool unlimitedWorkspace)
{
    CrossAttnPlan plan;
    plan.backend = resolveBackend(p);
    bool const mma = plan.backend == CrossAttnBackend::kMMA;
    plan.blockRows = mma ? mmaBlockRows(p.shape) : detail::kSIMT_BLOCK_ROWS;
    plan.blockKeys = mma ? detail::kMMA_BLOCK_KEYS : detail::kSIMT_BLOCK_KEYS;
    int32_t splits = p.numSplits > 0 ? p.numSplits : autoSplits(p.shape, std::max(p.numSms, 1), plan.blockRows);
    if (p.numSplits == 0)
    {
        splits = trimSplits(splits, p.shape.slowTokens, plan.blockKeys);
    }
    if (!unlimitedWorkspace)
    {
        while (splits > 1 && partialBytes(p.shape, splits) > p.workspaceBytes)
        {
            --splits;
        }
    }
    plan.numSplits = std::max(splits, 1);
    plan.tileSlots = tileSlots(p.shape, plan.blockRows);
    plan.workspaceBytes = partialBytes(p.shape, plan.numSplits);
    return plan;
}

size_t crossAttnWorkspaceSize(CrossAttnDataType dataType, CrossAttnShape const& maxShape, int32_t numSms)
{
    CrossAttnShape s = maxShape;
    if (!checkShape(s).empty() || numSms < 1)
    {
        return 0;
    }
    s.batch = 1; // fewest tiles -> most splits: a bound for every batch
    // Every variant the launcher may pick for this dtype (the MMA variant depends on rows / batch).
    int32_t const groupSize = s.numHeads / s.numKvHeads;
    int32_t const blockRows[3]
        = {detail::kSIMT_BLOCK_ROWS, detail::kMMA_DECODE_BLOCK_ROWS, detail::kMMA_PREFILL_BLOCK_ROWS};
    int32_t const numVariants = dataType == CrossAttnDataType::kFLOAT ? 1 : 3;
    int64_t const target = static_cast<int64_t>(kBLOCKS_PER_SM_TARGET) * std::min(numSms, kMAX_POLICY_SMS);
    size_t best = 0;
    for (int32_t rows = 1; rows <= maxShape.rows; ++rows)
    {
        s.rows = rows;
        bool anySplit = false;
        for (int32_t v = 0; v < numVariants; ++v)
        {
            // Untrimmed count: an upper bound that only grows with rows, slowTokens and numSms.
            best = std::max(best, partialBytes(s, autoSplits(s, numSms, blockRows[v])));
            int64_t const tiles = (static_cast<int64_t>(rows) * groupSize + blockRows[v] - 1) / blockRows[v];
            anySplit = anySplit || tiles * s.numKvHeads < target;
        }
        if (!anySplit)
        {
            break; // more rows -> more blocks -> one split for every variant
        }
    }
    return best;
}

namespace
{

cudaError_t queryDevice(CrossAttnParams& p)
{
    int32_t device = 0;
    int32_t major = 0;
    int32_t minor = 0;
    cudaError_t e = cudaGetDevice(&device);
    e = e == cudaSuccess ? cudaDeviceGetAttribute(&p.numSms, cudaDevAttrMultiProcessorCount, device) : e;
    e = e == cudaSuccess ? cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) : e;
    e = e == cudaSuccess ? cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) : e;
    p.smVersion = major * 10 + minor;
    return e;
}

KernelArgs makeKernelArgs(CrossAttnParams const& p, CrossAttnPlan const& plan)
{
    CrossAttnShape const& s = p.shape;
    KernelArgs args{};
    args.query = p.query;
    args.key = p.slowKey;
    args.value = p.slowValue;
    args.lengths = p.slowLengths;
    args.offsets = p.rowOffsets;
    args.residual = p.residual;
    args.gate = p.gate;
    args.output = p.output;
    args.partialOut = plan.numSplits > 1 ? static_cast<float*>(p.workspace) : nullptr;
    args.partialLse = plan.numSplits > 1
        ? args.partialOut + static_cast<size_t>(plan.numSplits) * s.rows * s.numHeads * s.headDim
        : nullptr;
    args.rows = s.rows;
    args.batch = s.batch;
    args.numHeads = s.numHeads;
    args.numKvHeads = s.numKvHeads;
    args.groupSize = s.numHeads / s.numKvHeads;
    args.slowTokens = s.slowTokens;
    args.numSplits = plan.numSplits;
    args.fuseGate = p.fuseGate ? 1 : 0;
    args.scaleLog2 = p.scale * detail::kLOG2E;
    return args;
}

//! Attention kernel of the plan, then (numSplits > 1) the combine kernel, for element type T.
template <typename T>
cudaError_t launchTyped(KernelArgs const& args, CrossAttnPlan const& plan, int32_t headDim, cudaStream_t stream)
{
    dim3 const grid(static_cast<uint32_t>(plan.tileSlots), static_cast<uint32_t>(plan.numSplits),
        static_cast<uint32_t>(args.numKvHeads));
    cudaError_t e = cudaErrorInvalidValue;
    if (plan.backend == CrossAttnBackend::kMMA)
    {
        if constexpr (!std::is_same_v<T, float>)
        {
            e = detail::launchMma<T>(args, headDim, plan.blockRows, grid, stream);
        }
    }
    else
    {
        e = detail::launchSimt<T>(args, headDim, grid, stream);
    }
    if (e != cudaSuccess || plan.numSplits == 1)
    {
        return e;
    }
    return detail::launchCombine<T>(args, headDim, stream);
}

} // namespace

cudaError_t crossAttnLaunch(CrossAttnParams const& params, cudaStream_t stream, std::string* errorMessage)
{
    std::string const err = crossAttnCheckParams(params);
    if (!err.empty())
    {
        if (errorMessage != nullptr)
        {
            *errorMessage = err;
        }
        return cudaErrorInvalidValue;
    }
    CrossAttnParams p = params;
    if (p.shape.rows == 0)
    {
        return cudaSuccess;
    }
    if (p.numSms == 0 || p.smVersion == 0)
    {
        cudaError_t const e = queryDevice(p);
        if (e != cudaSuccess)
        {
            return e;
        }
    }
    if (p.smVersion < 80)
    {
        if (errorMessage != nullptr)
        {
            *errorMessage = "slowFastCrossAttn needs an sm_80 or newer GPU, got sm_" + std::to_string(p.smVersion);
        }
        return cudaErrorNotSupported;
    }
    CrossAttnPlan const plan = crossAttnMakePlan(p, false);
    KernelArgs const args = makeKernelArgs(p, plan);
    switch (p.dataType)
    {
    case CrossAttnDataType::kFLOAT: return launchTyped<float>(args, plan, p.shape.headDim, stream);
    case CrossAttnDataType::kHALF: return launchTyped<__half>(args, plan, p.shape.headDim, stream);
    case CrossAttnDataType::kBF16: return launchTyped<__nv_bfloat16>(args, plan, p.shape.headDim, stream);
    }
    return cudaErrorInvalidValue;
}

namespace detail
{

template <typename T>
cudaError_t launchCombine(KernelArgs const& args, int32_t headDim, cudaStream_t stream)
{
    if (args.numSplits > kMAX_SPLITS)
    {
        return cudaErrorInvalidValue;
    }
    int64_t const vectors = static_cast<int64_t>(args.rows) * args.numHeads;
    combineKernel<T><<<static_cast<uint32_t>(vectors), static_cast<uint32_t>(headDim), 0, stream>>>(args, headDim);
    return cudaGetLastError();
}

template cudaError_t launchCombine<float>(KernelArgs const&, int32_t, cudaStream_t);
template cudaError_t launchCombine<__half>(KernelArgs const&, int32_t, cudaStream_t);
template cudaError_t launchCombine<__nv_bfloat16>(KernelArgs const&, int32_t, cudaStream_t);

} // namespace detail

} // namespace kernels
} // namespace slowfast
