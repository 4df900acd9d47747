/*
 * slowfast_trt._kernels: the slowFastCrossAttn launcher for Python tests and eager use.
 *
 * Raw interface: integer device pointers, sizes, a dtype string and an integer cudaStream_t. The torch
 * wrapper (slowfast_trt/kernels.py) checks tensors, allocates output/workspace and passes the pointers.
 * Importing this module makes no CUDA call (cudart is linked statically); only launch() and
 * device_count() touch the driver.
 */
#include "slowFastCrossAttnKernel.h"
#include "slowFastCrossAttnSchema.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace py = pybind11;
using namespace slowfast::kernels;

namespace
{

CrossAttnDataType parseDataType(std::string const& name)
{
    if (name == "float32" || name == "float" || name == "fp32")
    {
        return CrossAttnDataType::kFLOAT;
    }
    if (name == "float16" || name == "half" || name == "fp16")
    {
        return CrossAttnDataType::kHALF;
    }
    if (name == "bfloat16" || name == "bf16")
    {
        return CrossAttnDataType::kBF16;
    }
    throw py::value_error("dtype must be 'float32', 'float16' or 'bfloat16', got '" + name + "'");
}

CrossAttnBackend parseBackend(std::string const& name)
{
    if (name == "auto")
    {
        return CrossAttnBackend::kAUTO;
    }
    if (name == "simt")
    {
        return CrossAttnBackend::kSIMT;
    }
    if (name == "mma")
    {
        return CrossAttnBackend::kMMA;
    }
    throw py::value_error("backend must be 'auto', 'simt' or 'mma', got '" + name + "'");
}

int32_t toInt32(int64_t v, char const* name)
{
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
    {
        throw py::value_error(std::string(name) + " does not fit in int32: " + std::to_string(v));
    }
    return static_cast<int32_t>(v);
}

CrossAttnShape makeShape(
    int64_t rows, int64_t batch, int64_t numHeads, int64_t numKvHeads, int64_t headDim, int64_t slowTokens)
{
    CrossAttnShape s;
    s.rows = toInt32(rows, "rows");
    s.batch = toInt32(batch, "batch");
    s.numHeads = toInt32(numHeads, "num_heads");
    s.numKvHeads = toInt32(numKvHeads, "num_kv_heads");
    s.headDim = toInt32(headDim, "head_dim");
    s.slowTokens = toInt32(slowTokens, "slow_tokens");
    return s;
}

template <typename T>
T const* asPointer(uintptr_t address)
{
    return reinterpret_cast<T const*>(address);
}

py::dict planToDict(CrossAttnPlan const& plan)
{
    py::dict d;
    d["backend"] = crossAttnBackendName(plan.backend);
    d["block_rows"] = plan.blockRows;
    d["block_keys"] = plan.blockKeys;
    d["num_splits"] = plan.numSplits;
    d["tile_slots"] = plan.tileSlots;
    d["workspace_bytes"] = plan.workspaceBytes;
    return d;
}

py::dict plan(std::string const& dtype, int64_t rows, int64_t batch, int64_t numHeads, int64_t numKvHeads,
    int64_t headDim, int64_t slowTokens, int32_t numSms, std::string const& backend, int32_t numSplits)
{
    CrossAttnParams p;
    p.dataType = parseDataType(dtype);
    p.shape = makeShape(rows, batch, numHeads, numKvHeads, headDim, slowTokens);
    p.backend = parseBackend(backend);
    p.numSplits = numSplits;
    p.numSms = numSms;
    // Pointer checks are irrelevant for a plan: use aligned dummies.
    alignas(16) static char dummy[16];
    p.query = p.slowKey = p.slowValue = p.output = dummy;
    p.slowLengths = p.rowOffsets = reinterpret_cast<int32_t const*>(dummy);
    std::string const err = crossAttnCheckParams(p);
    if (!err.empty())
    {
        throw py::value_error(err);
    }
    if (numSms < 1)
    {
        throw py::value_error("num_sms must be >= 1 for a plan");
    }
    return planToDict(crossAttnMakePlan(p, true));
}

size_t workspaceSize(std::string const& dtype, int64_t maxRows, int64_t batch, int64_t numHeads, int64_t numKvHeads,
    int64_t headDim, int64_t maxSlowTokens, int32_t numSms)
{
    CrossAttnShape const s = makeShape(maxRows, batch, numHeads, numKvHeads, headDim, maxSlowTokens);
    return crossAttnWorkspaceSize(parseDataType(dtype), s, numSms);
}

void launch(std::string const& dtype, int64_t rows, int64_t batch, int64_t numHeads, int64_t numKvHeads,
    int64_t headDim, int64_t slowTokens, double scale, uintptr_t query, uintptr_t slowKey, uintptr_t slowValue,
    uintptr_t slowLengths, uintptr_t rowOffsets, uintptr_t residual, uintptr_t gate, uintptr_t output,
    uintptr_t workspace, size_t workspaceBytes, uintptr_t stream, int32_t numSms, int32_t smVersion,
    std::string const& backend, int32_t numSplits)
{
    CrossAttnParams p;
    p.dataType = parseDataType(dtype);
    p.shape = makeShape(rows, batch, numHeads, numKvHeads, headDim, slowTokens);
    p.scale = static_cast<float>(scale);
    p.fuseGate = residual != 0 || gate != 0;
    p.query = asPointer<void>(query);
    p.slowKey = asPointer<void>(slowKey);
    p.slowValue = asPointer<void>(slowValue);
    p.slowLengths = asPointer<int32_t>(slowLengths);
    p.rowOffsets = asPointer<int32_t>(rowOffsets);
    p.residual = asPointer<void>(residual);
    p.gate = asPointer<void>(gate);
    p.output = reinterpret_cast<void*>(output);
    p.workspace = reinterpret_cast<void*>(workspace);
    p.workspaceBytes = workspaceBytes;
    p.numSms = numSms;
    p.smVersion = smVersion;
    p.backend = parseBackend(backend);
    p.numSplits = numSplits;

    std::string const err = crossAttnCheckParams(p); // before any CUDA call
    if (!err.empty())
    {
        throw py::value_error(err);
    }
    std::string message;
    cudaError_t status = cudaSuccess;
    {
        py::gil_scoped_release release;
        status = crossAttnLaunch(p, reinterpret_cast<cudaStream_t>(stream), &message);
    }
    if (status != cudaSuccess)
    {
        std::ostringstream os;
        os << "slowFastCrossAttn launch failed: " << cudaGetErrorName(status) << " (" << cudaGetErrorString(status)
           << ")";
        if (!message.empty())
        {
            os << ": " << message;
        }
        throw std::runtime_error(os.str());
    }
}

py::list fieldList(slowfast::schema::FieldSpec const* fields, int32_t count)
{
    py::list out;
    for (int32_t i = 0; i < count; ++i)
    {
        py::dict f;
        f["name"] = fields[i].name;
        f["type"] = fields[i].type;
        f["optional"] = fields[i].optional;
        out.append(f);
    }
    return out;
}

py::dict schema()
{
    namespace s = slowfast::schema;
    py::dict d;
    d["name"] = s::kOP_NAME;
    d["domain"] = s::kOP_DOMAIN;
    d["op_version"] = s::kOP_VERSION;
    d["plugin_version"] = s::kPLUGIN_VERSION;
    d["plugin_namespace"] = s::kPLUGIN_NAMESPACE;
    d["attributes"] = fieldList(s::kATTRIBUTES, s::kNB_ATTRIBUTES);
    d["inputs"] = fieldList(s::kINPUTS, s::kNB_INPUTS);
    d["outputs"] = fieldList(s::kOUTPUTS, s::kNB_OUTPUTS);
    return d;
}

int32_t deviceCount()
{
    int32_t count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess)
    {
        cudaGetLastError(); // no driver / no device: not an error for this query
        return 0;
    }
    return count;
}

std::vector<std::string> builtArchitectures()
{
    std::vector<std::string> archs;
    std::stringstream ss(SLOWFAST_CUDA_ARCHS);
    std::string item;
    while (std::getline(ss, item, ','))
    {
        if (!item.empty())
        {
            archs.push_back(item);
        }
    }
    return archs;
}

} // namespace

PYBIND11_MODULE(_kernels, m)
{
    m.doc() = "slowFastCrossAttn CUDA launcher (raw pointers). Use slowfast_trt.kernels for torch tensors.";
    m.def("launch", &launch, py::arg("dtype"), py::arg("rows"), py::arg("batch"), py::arg("num_heads"),
        py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("slow_tokens"), py::arg("scale"), py::arg("query"),
        py::arg("slow_key"), py::arg("slow_value"), py::arg("slow_lengths"), py::arg("row_offsets"),
        py::arg("residual"), py::arg("gate"), py::arg("output"), py::arg("workspace"), py::arg("workspace_bytes"),
        py::arg("stream"), py::arg("num_sms"), py::arg("sm_version"), py::arg("backend") = "auto",
        py::arg("num_splits") = 0,
        "Enqueue the cross-attention on `stream` (int cudaStream_t). Pointers are ints (0 = none); "
        "residual/gate given -> fused gate. Raises ValueError for invalid arguments (before any CUDA call) and "
        "RuntimeError for CUDA errors.");
    m.def("plan", &plan, py::arg("dtype"), py::arg("rows"), py::arg("batch"), py::arg("num_heads"),
        py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("slow_tokens"), py::arg("num_sms"),
        py::arg("backend") = "auto", py::arg("num_splits") = 0,
        "Backend, block shape, split count, tile slots (grid.x) and workspace bytes the launcher would use "
        "(no CUDA call).");
    m.def("workspace_size", &workspaceSize, py::arg("dtype"), py::arg("max_rows"), py::arg("batch"),
        py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("max_slow_tokens"),
        py::arg("num_sms") = kMAX_POLICY_SMS,
        "Workspace bytes valid for every launch up to max_rows/max_slow_tokens with automatic splits "
        "(what the TensorRT plugin reserves; default num_sms gives a device-independent bound).");
    m.def("schema", &schema, "The op contract compiled into C++ (generated from export/cross_attention_op.json).");
    m.def("device_count", &deviceCount, "Number of CUDA devices visible (0 without driver or GPU).");
    m.def("built_architectures", &builtArchitectures, "CUDA architectures compiled into the kernels.");
    m.attr("cuda_compiler_version") = SLOWFAST_CUDA_COMPILER_VERSION;
    m.attr("supported_head_dims")
        = std::vector<int32_t>(std::begin(kSUPPORTED_HEAD_DIMS), std::end(kSUPPORTED_HEAD_DIMS));
    m.attr("max_splits") = kMAX_SPLITS;
    m.attr("max_policy_sms") = kMAX_POLICY_SMS;
}
