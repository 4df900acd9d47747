/*
 * Slow-token cross-attention: plain CUDA launcher (no TensorRT, no Python).
 *
 * Contract: export/cross_attention_op.json. For query row r of sequence b
 * (rowOffsets[b] <= r < rowOffsets[b+1]) and head h, with g = h / (numHeads / numKvHeads)
 * and n = slowLengths[b]:
 *     ctx[r, h] = softmax(scale * q[r, h] . K[b, g, :n]^T) V[b, g, :n]      (n == 0 -> 0)
 *     output[r, h*D:(h+1)*D] = ctx[r, h]            or  residual + gate[r] * ctx  (fuseGate)
 * Rows outside [rowOffsets[0], rowOffsets[batch]) have ctx = 0. NaN in q[r, h] or in a key/value that the
 * row attends gives NaN, as the float reference does; only n == 0 gives an exact 0.
 *
 * Layouts (all row-major, contiguous):
 *     query      [rows, numHeads, headDim]            T
 *     slowKey    [batch, numKvHeads, slowTokens, headDim]  T
 *     slowValue  [batch, numKvHeads, slowTokens, headDim]  T
 *     slowLengths[batch]                               int32
 *     rowOffsets [batch + 1]                           int32 (0 = r0 <= r1 <= ... <= rB = rows)
 *     residual   [rows, numHeads * headDim]            T (fuseGate only)
 *     gate       [rows, 1]                             T (fuseGate only)
 *     output     [rows, numHeads * headDim]            T
 * T is float32, float16 or bfloat16; softmax and both products accumulate in float32.
 *
 * Everything here is host code; this header can be included by plain C++ translation units.
 */
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace slowfast
{
namespace kernels
{

enum class CrossAttnDataType : int32_t
{
    kFLOAT = 0,
    kHALF = 1,
    kBF16 = 2,
};

//! Which kernel family runs the attention.
enum class CrossAttnBackend : int32_t
{
    kAUTO = 0, //!< kMMA for float16/bfloat16, kSIMT for float32
    kSIMT = 1, //!< CUDA-core kernel, all dtypes (float32 math on smem tiles)
    kMMA = 2,  //!< tensor-core mma.sync m16n8k16 kernel, float16/bfloat16 only, sm_80+
};

//! Head dims compiled into the kernels.
constexpr int32_t kSUPPORTED_HEAD_DIMS[] = {64, 128};
//! The launcher never splits the slow tokens into more chunks than this.
constexpr int32_t kMAX_SPLITS = 64;
//! Split count policy uses min(numSms, this); sizing the workspace with this value gives a bound valid on any GPU.
constexpr int32_t kMAX_POLICY_SMS = 256;

struct CrossAttnShape
{
    int32_t rows{0};       //!< query rows (all sequences)
    int32_t batch{0};      //!< sequences
    int32_t numHeads{0};   //!< H
    int32_t numKvHeads{0}; //!< Hkv, H % Hkv == 0
    int32_t headDim{0};    //!< D, 64 or 128
    int32_t slowTokens{0}; //!< Ns, capacity of the slow K/V cache
};

struct CrossAttnParams
{
    CrossAttnDataType dataType{CrossAttnDataType::kHALF};
    CrossAttnShape shape{};
    float scale{1.0F};
    bool fuseGate{false};

    void const* query{nullptr};
    void const* slowKey{nullptr};
    void const* slowValue{nullptr};
    int32_t const* slowLengths{nullptr};
    int32_t const* rowOffsets{nullptr};
    void const* residual{nullptr}; //!< fuseGate only
    void const* gate{nullptr};     //!< fuseGate only
    void* output{nullptr};

    void* workspace{nullptr};   //!< split partials; may be null when workspaceBytes == 0
    size_t workspaceBytes{0};   //!< capacity; the split count is reduced until the partials fit

    int32_t numSms{0};    //!< SM count of the device; 0 = query the current device
    int32_t smVersion{0}; //!< major * 10 + minor; 0 = query the current device
    CrossAttnBackend backend{CrossAttnBackend::kAUTO};
    int32_t numSplits{0}; //!< 0 = automatic; > 0 forces a split count (tests), still bounded by the workspace
};

//! What the launcher will run for given parameters (pure host computation, no CUDA call).
struct CrossAttnPlan
{
    CrossAttnBackend backend{CrossAttnBackend::kSIMT};
    int32_t blockRows{0};   //!< packed (row, head-in-group) query vectors per thread block
    int32_t blockKeys{0};   //!< keys per shared-memory tile
    int32_t numSplits{1};   //!< slow-token chunks per sequence (1 = no combine kernel)
    int32_t tileSlots{0};   //!< grid.x: bound on the tiles of any row split into <= batch sequences
    size_t workspaceBytes{0};
};

//! Returns "" when the parameters are valid, else a message naming the argument and what is expected.
//! Checks sizes, pointers (null, 16-byte alignment), dtype/backend and attribute combinations.
//! It cannot check device-resident values (rowOffsets, slowLengths); the kernels clamp them.
std::string crossAttnCheckParams(CrossAttnParams const& params);

//! Plan for the parameters (uses params.numSms, which must be > 0, and params.workspaceBytes as capacity
//! unless unlimitedWorkspace). Parameters must be valid.
CrossAttnPlan crossAttnMakePlan(CrossAttnParams const& params, bool unlimitedWorkspace);

//! Workspace bytes that suffice for every launch with shape <= maxShape (rows and slowTokens) and automatic
//! splits, on a device with at most numSms SMs (pass kMAX_POLICY_SMS for a device-independent bound).
size_t crossAttnWorkspaceSize(CrossAttnDataType dataType, CrossAttnShape const& maxShape, int32_t numSms);

//! Enqueue on stream. Returns cudaErrorInvalidValue for invalid parameters (message in *errorMessage when
//! given), cudaErrorNotSupported on devices older than sm_80, or the launch error.
cudaError_t crossAttnLaunch(CrossAttnParams const& params, cudaStream_t stream, std::string* errorMessage = nullptr);

char const* crossAttnBackendName(CrossAttnBackend backend);
char const* crossAttnDataTypeName(CrossAttnDataType dataType);

} // namespace kernels
} // namespace slowfast
