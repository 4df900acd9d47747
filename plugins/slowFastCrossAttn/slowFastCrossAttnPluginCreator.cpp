/*
 * TensorRT glue of the slow-token cross-attention: plugin creator (fields from the JSON contract via the
 * generated schema header), error reporting through the logger TensorRT hands over, and the entry points
 * of a dynamically loaded plugin library (getCreators, setLoggerFinder) for
 * trt.get_plugin_registry().load_library() and trtexec --dynamicPlugins.
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
            bool const version = name == schema::kATTR_PLUGIN_VERSION;
            checkStringField(f, version ? schema::kPLUGIN_VERSION : schema::kPLUGIN_NAMESPACE);
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

void reportPluginException(char const* where) noexcept
{
    reportException(where);
}

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
