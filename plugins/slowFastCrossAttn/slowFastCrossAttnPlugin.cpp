/*
 * TensorRT glue of the slow-token cross-attention: the IPluginV3 plugin. Everything numeric is in
 * slowFastCrossAttnKernel.*; the creator, the logger and the exported entry points are in
 * slowFastCrossAttnPluginCreator.cpp. Only header-inline TensorRT code is used (no libnvinfer symbol).
 */
#include "slowFastCrossAttnPlugin.h"
#include "slowFastCrossAttnSchema.h"

#include <sstream>
#include <stdexcept>

using namespace nvinfer1;

namespace slowfast
{
namespace plugin
{
namespace
{

namespace schema = slowfast::schema;
using kernels::CrossAttnDataType;

// Required inputs first, then the fused-gate pair, as in the contract.
static_assert(schema::kINPUT_RESIDUAL == 5 && schema::kINPUT_GATE == 6 && schema::kNB_INPUTS == 7,
    "plugin expects inputs query, slow_key, slow_value, slow_lengths, row_offsets[, residual, gate]");
constexpr int32_t kNB_REQUIRED_INPUTS = schema::kINPUT_RESIDUAL;

bool isFloatType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

CrossAttnDataType toKernelType(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return CrossAttnDataType::kFLOAT;
    case DataType::kHALF: return CrossAttnDataType::kHALF;
    case DataType::kBF16: return CrossAttnDataType::kBF16;
    default: throw std::invalid_argument("query dtype must be float32, float16 or bfloat16");
    }
}

} // namespace

SlowFastCrossAttnPlugin::SlowFastCrossAttnPlugin(CrossAttnAttributes const& attributes)
    : mAttributes(attributes)
{
    std::string const err = mAttributes.check();
    if (!err.empty())
    {
        throw std::invalid_argument(err);
    }
}

IPluginCapability* SlowFastCrossAttnPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        }
        throw std::invalid_argument("unknown capability type");
    }
    catch (...)
    {
        reportPluginException("getCapabilityInterface");
    }
    return nullptr;
}

IPluginV3* SlowFastCrossAttnPlugin::clone() noexcept
{
    try
    {
        auto* plugin = new SlowFastCrossAttnPlugin(*this);
        plugin->mDataToSerialize.clear(); // pointers into *this; rebuilt by getFieldsToSerialize
        plugin->mFieldsToSerialize = PluginFieldCollection{};
        return plugin;
    }
    catch (...)
    {
        reportPluginException("clone");
    }
    return nullptr;
}

char const* SlowFastCrossAttnPlugin::getPluginName() const noexcept
{
    return schema::kOP_NAME;
}

char const* SlowFastCrossAttnPlugin::getPluginVersion() const noexcept
{
    return schema::kPLUGIN_VERSION;
}

char const* SlowFastCrossAttnPlugin::getPluginNamespace() const noexcept
{
    return schema::kPLUGIN_NAMESPACE;
}

int32_t SlowFastCrossAttnPlugin::expectedInputs() const
{
    return mAttributes.fuseGate ? schema::kNB_INPUTS : kNB_REQUIRED_INPUTS;
}

std::string SlowFastCrossAttnPlugin::checkDims(Dims const* dims, int32_t nbInputs) const
{
    std::ostringstream err;
    if (nbInputs != expectedInputs())
    {
        err << "expected " << expectedInputs() << " inputs with " << schema::kATTR_FUSE_GATE << " = "
            << mAttributes.fuseGate << ", got " << nbInputs;
        return err.str();
    }
    // Static dims must match; -1 (dynamic at build time) is checked again in onShapeChange.
    auto mismatch = [](int64_t actual, int64_t expected) { return actual >= 0 && actual != expected; };
    Dims const& q = dims[schema::kINPUT_QUERY];
    Dims const& k = dims[schema::kINPUT_SLOW_KEY];
    Dims const& v = dims[schema::kINPUT_SLOW_VALUE];
    Dims const& lengths = dims[schema::kINPUT_SLOW_LENGTHS];
    Dims const& offsets = dims[schema::kINPUT_ROW_OFFSETS];
    int64_t const width = static_cast<int64_t>(mAttributes.numHeads) * mAttributes.headDim;
    if (q.nbDims != 3 || mismatch(q.d[1], mAttributes.numHeads) || mismatch(q.d[2], mAttributes.headDim))
    {
        err << "query must be [rows, " << mAttributes.numHeads << ", " << mAttributes.headDim << "]";
    }
    else if (k.nbDims != 4 || mismatch(k.d[1], mAttributes.numKvHeads) || mismatch(k.d[3], mAttributes.headDim))
    {
        err << "slow_key must be [batch, " << mAttributes.numKvHeads << ", slow_tokens, " << mAttributes.headDim << "]";
    }
    else if (v.nbDims != 4 || mismatch(v.d[1], mAttributes.numKvHeads) || mismatch(v.d[3], mAttributes.headDim)
        || (k.d[0] >= 0 && mismatch(v.d[0], k.d[0])) || (k.d[2] >= 0 && mismatch(v.d[2], k.d[2])))
    {
        err << "slow_value must have the shape of slow_key";
    }
    else if (lengths.nbDims != 1 || (k.d[0] >= 0 && mismatch(lengths.d[0], k.d[0])))
    {
        err << "slow_lengths must be [batch]";
    }
    else if (offsets.nbDims != 1 || (lengths.d[0] >= 0 && mismatch(offsets.d[0], lengths.d[0] + 1)))
    {
        err << "row_offsets must be [batch + 1]";
    }
    else if (mAttributes.fuseGate)
    {
        Dims const& residual = dims[schema::kINPUT_RESIDUAL];
        Dims const& gate = dims[schema::kINPUT_GATE];
        if (residual.nbDims != 2 || mismatch(residual.d[1], width) || (q.d[0] >= 0 && mismatch(residual.d[0], q.d[0])))
        {
            err << "residual must be [rows, " << width << "]";
        }
        else if (gate.nbDims != 2 || mismatch(gate.d[1], 1) || (q.d[0] >= 0 && mismatch(gate.d[0], q.d[0])))
        {
            err << "gate must be [rows, 1]";
        }
    }
    return err.str();
}

kernels::CrossAttnShape SlowFastCrossAttnPlugin::shapeOf(Dims const* dims) const
{
    kernels::CrossAttnShape s;
    s.rows = static_cast<int32_t>(dims[schema::kINPUT_QUERY].d[0]);
    s.batch = static_cast<int32_t>(dims[schema::kINPUT_SLOW_LENGTHS].d[0]);
    s.numHeads = mAttributes.numHeads;
    s.numKvHeads = mAttributes.numKvHeads;
    s.headDim = mAttributes.headDim;
    s.slowTokens = static_cast<int32_t>(dims[schema::kINPUT_SLOW_KEY].d[2]);
    return s;
}

int32_t SlowFastCrossAttnPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbOutputs != 1 || nbInputs > schema::kNB_INPUTS)
        {
            throw std::invalid_argument("expected 5 or 7 inputs and 1 output");
        }
        Dims dims[schema::kNB_INPUTS];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i] = in[i].desc.dims;
        }
        std::string const err = checkDims(dims, nbInputs);
        if (!err.empty())
        {
            throw std::invalid_argument(err);
        }
        return 0;
    }
    catch (...)
    {
        reportPluginException("configurePlugin");
    }
    return -1;
}

int32_t SlowFastCrossAttnPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs < 1)
        {
            throw std::invalid_argument("expected 1 output and at least 1 input");
        }
        outputTypes[0] = inputTypes[schema::kINPUT_QUERY];
        return 0;
    }
    catch (...)
    {
        reportPluginException("getOutputDataTypes");
    }
    return -1;
}

int32_t SlowFastCrossAttnPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    try
    {
        if (inputs == nullptr || outputs == nullptr || nbOutputs != 1 || nbInputs != expectedInputs())
        {
            throw std::invalid_argument("expected " + std::to_string(expectedInputs()) + " inputs and 1 output");
        }
        if (inputs[schema::kINPUT_QUERY].nbDims != 3)
        {
            throw std::invalid_argument("query must be [rows, num_heads, head_dim]");
        }
        outputs[0].nbDims = 2;
        outputs[0].d[0] = inputs[schema::kINPUT_QUERY].d[0]; // dynamic rows
        outputs[0].d[1] = exprBuilder.constant(static_cast<int64_t>(mAttributes.numHeads) * mAttributes.headDim);
        return 0;
    }
    catch (...)
    {
        reportPluginException("getOutputShapes");
    }
    return -1;
}

bool SlowFastCrossAttnPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        if (inOut == nullptr || pos < 0 || pos >= nbInputs + nbOutputs)
        {
            throw std::invalid_argument("position out of range");
        }
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        if (pos == schema::kINPUT_SLOW_LENGTHS || pos == schema::kINPUT_ROW_OFFSETS)
        {
            return desc.type == DataType::kINT32;
        }
        if (pos == schema::kINPUT_QUERY)
        {
            return isFloatType(desc.type);
        }
        // slow_key, slow_value, residual, gate and the output share the query's type.
        return desc.type == inOut[schema::kINPUT_QUERY].desc.type;
    }
    catch (...)
    {
        reportPluginException("supportsFormatCombination");
    }
    return false;
}

int32_t SlowFastCrossAttnPlugin::getNbOutputs() const noexcept
{
    return schema::kNB_OUTPUTS;
}

size_t SlowFastCrossAttnPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    try
    {
        if (inputs == nullptr || nbInputs != expectedInputs())
        {
            throw std::invalid_argument("unexpected inputs");
        }
        Dims dims[schema::kNB_INPUTS];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i] = inputs[i].max;
        }
        // Bound valid on any GPU (kMAX_POLICY_SMS): the engine may run on a device with more SMs than the builder.
        return kernels::crossAttnWorkspaceSize(
            toKernelType(inputs[schema::kINPUT_QUERY].desc.type), shapeOf(dims), kernels::kMAX_POLICY_SMS);
    }
    catch (...)
    {
        reportPluginException("getWorkspaceSize");
    }
    return 0;
}

int32_t SlowFastCrossAttnPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbOutputs != 1 || nbInputs > schema::kNB_INPUTS)
        {
            throw std::invalid_argument("expected 5 or 7 inputs and 1 output");
        }
        Dims dims[schema::kNB_INPUTS];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i] = in[i].dims;
        }
        std::string const err = checkDims(dims, nbInputs);
        if (!err.empty())
        {
            throw std::invalid_argument(err);
        }
        mShape = shapeOf(dims);
        // What getWorkspaceSize reserved for the build profile covers this shape (monotone in rows/tokens).
        mWorkspaceBytes = kernels::crossAttnWorkspaceSize(
            toKernelType(in[schema::kINPUT_QUERY].type), mShape, kernels::kMAX_POLICY_SMS);
        if (mNumSms == 0)
        {
            int32_t device = 0;
            int32_t major = 0;
            int32_t minor = 0;
            if (cudaGetDevice(&device) != cudaSuccess
                || cudaDeviceGetAttribute(&mNumSms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess
                || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess
                || cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
            {
                mNumSms = 0;
                throw std::runtime_error("cannot query the current CUDA device");
            }
            mSmVersion = major * 10 + minor;
        }
        return 0;
    }
    catch (...)
    {
        reportPluginException("onShapeChange");
    }
    return -1;
}

int32_t SlowFastCrossAttnPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    try
    {
        kernels::CrossAttnParams p;
        p.dataType = toKernelType(inputDesc[schema::kINPUT_QUERY].type);
        Dims dims[schema::kNB_INPUTS];
        for (int32_t i = 0; i < expectedInputs(); ++i)
        {
            dims[i] = inputDesc[i].dims;
        }
        p.shape = shapeOf(dims);
        p.scale = mAttributes.scale;
        p.fuseGate = mAttributes.fuseGate != 0;
        p.query = inputs[schema::kINPUT_QUERY];
        p.slowKey = inputs[schema::kINPUT_SLOW_KEY];
        p.slowValue = inputs[schema::kINPUT_SLOW_VALUE];
        p.slowLengths = static_cast<int32_t const*>(inputs[schema::kINPUT_SLOW_LENGTHS]);
        p.rowOffsets = static_cast<int32_t const*>(inputs[schema::kINPUT_ROW_OFFSETS]);
        p.residual = p.fuseGate ? inputs[schema::kINPUT_RESIDUAL] : nullptr;
        p.gate = p.fuseGate ? inputs[schema::kINPUT_GATE] : nullptr;
        p.output = outputs[0];
        p.workspace = workspace;
        bool const sameShape = p.shape.rows == mShape.rows && p.shape.batch == mShape.batch
            && p.shape.slowTokens == mShape.slowTokens;
        p.workspaceBytes = sameShape
            ? mWorkspaceBytes
            : kernels::crossAttnWorkspaceSize(p.dataType, p.shape, kernels::kMAX_POLICY_SMS);
        p.numSms = mNumSms;
        p.smVersion = mSmVersion;
        std::string message;
        cudaError_t const status = kernels::crossAttnLaunch(p, stream, &message);
        if (status != cudaSuccess)
        {
            throw std::runtime_error(std::string(cudaGetErrorName(status)) + (message.empty() ? "" : ": " + message));
        }
        return 0;
    }
    catch (...)
    {
        reportPluginException("enqueue");
    }
    return -1;
}

IPluginV3* SlowFastCrossAttnPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    try
    {
        return clone();
    }
    catch (...)
    {
        reportPluginException("attachToContext");
    }
    return nullptr;
}

PluginFieldCollection const* SlowFastCrossAttnPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mDataToSerialize.clear();
        mDataToSerialize.emplace_back(schema::kATTR_NUM_HEADS, &mAttributes.numHeads, PluginFieldType::kINT32, 1);
        mDataToSerialize.emplace_back(schema::kATTR_NUM_KV_HEADS, &mAttributes.numKvHeads, PluginFieldType::kINT32, 1);
        mDataToSerialize.emplace_back(schema::kATTR_HEAD_DIM, &mAttributes.headDim, PluginFieldType::kINT32, 1);
        mDataToSerialize.emplace_back(schema::kATTR_SCALE, &mAttributes.scale, PluginFieldType::kFLOAT32, 1);
        mDataToSerialize.emplace_back(schema::kATTR_FUSE_GATE, &mAttributes.fuseGate, PluginFieldType::kINT32, 1);
        mFieldsToSerialize.nbFields = static_cast<int32_t>(mDataToSerialize.size());
        mFieldsToSerialize.fields = mDataToSerialize.data();
        return &mFieldsToSerialize;
    }
    catch (...)
    {
        reportPluginException("getFieldsToSerialize");
    }
    return nullptr;
}

} // namespace plugin
} // namespace slowfast
