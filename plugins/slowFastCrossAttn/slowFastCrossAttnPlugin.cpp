/*
 * TensorRT glue of the slow-token cross-attention. Everything numeric is in slowFastCrossAttnKernel.*.
 * Only header-inline TensorRT code is used (no libnvinfer symbol): the library is loaded through
 * getCreators()/setLoggerFinder() by trt.get_plugin_registry().load_library() or trtexec --dynamicPlugins.
 */
#include "slowFastCrossAttnPlugin.h"
#include "slowFastCrossAttnSchema.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>

#define SLOWFAST_PLUGIN_EXPORT __attribute__((visibility("default")))

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

//! Logger handed over by TensorRT through setLoggerFinder(); stderr until then.
class LoggerFinder
{
public:
    void set(ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        if (mFinder == nullptr && finder != nullptr)
        {
            mFinder = finder;
        }
    }

    void log(ILogger::Severity severity, std::string const& message)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        ILogger* logger = mFinder != nullptr ? mFinder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, message.c_str());
        }
        else
        {
            std::fprintf(stderr, "[slowfast_trt] %s\n", message.c_str());
        }
    }

private:
    ILoggerFinder* mFinder{nullptr};
    std::mutex mMutex;
};

LoggerFinder gLoggerFinder;

void reportError(char const* where, std::string const& what) noexcept
{
    try
    {
        std::string const message = std::string(schema::kOP_NAME) + "::" + where + ": " + what;
        gLoggerFinder.log(ILogger::Severity::kERROR, message);
    }
    catch (...)
    {
        std::fprintf(stderr, "[slowfast_trt] %s: error while reporting an error\n", where);
    }
}

void reportException(char const* where) noexcept
{
    try
    {
        throw;
    }
    catch (std::exception const& e)
    {
        reportError(where, e.what());
    }
    catch (...)
    {
        reportError(where, "unknown exception");
    }
}

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

//! Reads a numeric plugin field as double (int32/int64/float32/float64 accepted).
double readNumber(PluginField const& f)
{
    if (f.data == nullptr || f.length != 1)
    {
        throw std::invalid_argument(std::string("field ") + f.name + " must hold exactly one value");
    }
    switch (f.type)
    {
    case PluginFieldType::kINT32: return *static_cast<int32_t const*>(f.data);
    case PluginFieldType::kINT64: return static_cast<double>(*static_cast<int64_t const*>(f.data));
    case PluginFieldType::kFLOAT32: return *static_cast<float const*>(f.data);
    case PluginFieldType::kFLOAT64: return *static_cast<double const*>(f.data);
    default: throw std::invalid_argument(std::string("field ") + f.name + " must be numeric");
    }
}

int32_t readInt(PluginField const& f)
{
    double const v = readNumber(f);
    if (v != static_cast<double>(static_cast<int32_t>(v)))
    {
        throw std::invalid_argument(std::string("field ") + f.name + " must be an int32");
    }
    return static_cast<int32_t>(v);
}

//! String fields plugin_version / plugin_namespace, when given, must name this creator.
void checkStringField(PluginField const& f, char const* expected)
{
    std::string value;
    if (f.type == PluginFieldType::kCHAR && f.data != nullptr && f.length > 0)
    {
        char const* s = static_cast<char const*>(f.data);
        value.assign(s, strnlen(s, static_cast<size_t>(f.length)));
    }
    if (value != expected)
    {
        throw std::invalid_argument(std::string("field ") + f.name + " is '" + value + "', this library provides '"
            + expected + "'");
    }
}

//! Attributes from plugin fields (ONNX parser: the creator's field names; deserialisation: getFieldsToSerialize).
CrossAttnAttributes parseAttributes(PluginFieldCollection const* fc)
{
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        throw std::invalid_argument("no plugin fields");
    }
    CrossAttnAttributes attrs;
    std::vector<std::string> missing{schema::kATTR_NUM_HEADS, schema::kATTR_NUM_KV_HEADS, schema::kATTR_HEAD_DIM,
        schema::kATTR_SCALE}; // fuse_gate defaults to 0
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        std::string const name = f.name != nullptr ? f.name : "";
        if (name == schema::kATTR_NUM_HEADS)
        {
            attrs.numHeads = readInt(f);
        }
        else if (name == schema::kATTR_NUM_KV_HEADS)
        {
            attrs.numKvHeads = readInt(f);
        }
        else if (name == schema::kATTR_HEAD_DIM)
        {
            attrs.headDim = readInt(f);
        }
        else if (name == schema::kATTR_SCALE)
        {
            attrs.scale = static_cast<float>(readNumber(f));
        }
        else if (name == schema::kATTR_FUSE_GATE)
        {
            attrs.fuseGate = readInt(f);
        }
        else if (name == schema::kATTR_PLUGIN_VERSION || name == schema::kATTR_PLUGIN_NAMESPACE)
        {
            checkStringField(f, name == schema::kATTR_PLUGIN_VERSION ? schema::kPLUGIN_VERSION : schema::kPLUGIN_NAMESPACE);
        }
        else
        {
            throw std::invalid_argument("unknown field '" + name + "'");
        }
        missing.erase(std::remove(missing.begin(), missing.end(), name), missing.end());
    }
    if (!missing.empty())
    {
        throw std::invalid_argument("missing field '" + missing.front() + "'");
    }
    return attrs;
}

} // namespace

// ---------------------------------------------------------------------------------------------------------
std::string CrossAttnAttributes::check() const
{
    std::ostringstream err;
    if (numHeads < 1 || numKvHeads < 1 || numHeads % numKvHeads != 0)
    {
        err << schema::kATTR_NUM_HEADS << " (" << numHeads << ") must be a positive multiple of "
            << schema::kATTR_NUM_KV_HEADS << " (" << numKvHeads << ")";
    }
    else if (headDim != 64 && headDim != 128)
    {
        err << schema::kATTR_HEAD_DIM << " must be 64 or 128, got " << headDim;
    }
    else if (!std::isfinite(scale))
    {
        err << schema::kATTR_SCALE << " must be finite";
    }
    else if (fuseGate != 0 && fuseGate != 1)
    {
        err << schema::kATTR_FUSE_GATE << " must be 0 or 1, got " << fuseGate;
    }
    return err.str();
}

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
        reportException("getCapabilityInterface");
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
        reportException("clone");
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
        reportException("configurePlugin");
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
        reportException("getOutputDataTypes");
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
        reportException("getOutputShapes");
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
        reportException("supportsFormatCombination");
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
        reportException("getWorkspaceSize");
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
        reportException("onShapeChange");
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
        // What getWorkspaceSize reserved for the build profile covers this shape (it is monotone in rows/tokens).
        p.workspaceBytes = kernels::crossAttnWorkspaceSize(p.dataType, p.shape, kernels::kMAX_POLICY_SMS);
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
        reportException("enqueue");
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
        reportException("attachToContext");
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
        reportException("getFieldsToSerialize");
    }
    return nullptr;
}

// ---------------------------------------------------------------------------------------------------------
SlowFastCrossAttnPluginCreator::SlowFastCrossAttnPluginCreator()
{
    mFields.emplace_back(schema::kATTR_NUM_HEADS, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(schema::kATTR_NUM_KV_HEADS, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(schema::kATTR_HEAD_DIM, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(schema::kATTR_SCALE, nullptr, PluginFieldType::kFLOAT32, 1);
    mFields.emplace_back(schema::kATTR_FUSE_GATE, nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* SlowFastCrossAttnPluginCreator::getPluginName() const noexcept
{
    return schema::kOP_NAME;
}

char const* SlowFastCrossAttnPluginCreator::getPluginVersion() const noexcept
{
    return schema::kPLUGIN_VERSION;
}

char const* SlowFastCrossAttnPluginCreator::getPluginNamespace() const noexcept
{
    return schema::kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* SlowFastCrossAttnPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* SlowFastCrossAttnPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        return new SlowFastCrossAttnPlugin(parseAttributes(fc));
    }
    catch (...)
    {
        reportException("createPlugin");
    }
    return nullptr;
}

} // namespace plugin
} // namespace slowfast

// ---------------------------------------------------------------------------------------------------------
extern "C" SLOWFAST_PLUGIN_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static slowfast::plugin::SlowFastCrossAttnPluginCreator sCreator;
    static IPluginCreatorInterface* const kCREATORS[] = {&sCreator};
    nbCreators = 1;
    return kCREATORS;
}

extern "C" SLOWFAST_PLUGIN_EXPORT void setLoggerFinder(ILoggerFinder* finder)
{
    slowfast::plugin::gLoggerFinder.set(finder);
}
