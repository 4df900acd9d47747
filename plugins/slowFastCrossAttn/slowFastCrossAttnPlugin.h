/*
 * TensorRT IPluginV3 glue of the slow-token cross-attention (no math here: enqueue calls the launcher of
 * slowFastCrossAttnKernel.h). Name, version, namespace and field names come from the generated
 * slowFastCrossAttnSchema.h (export/cross_attention_op.json). Builds against TensorRT 10.3 .. 11.x headers.
 */
#pragma once

#include "NvInferRuntime.h"
#include "slowFastCrossAttnKernel.h"

#include <cstdint>
#include <string>
#include <vector>

namespace slowfast
{
namespace plugin
{

//! Plugin attributes (the int/float attributes of the contract; plugin_version/plugin_namespace select the
//! creator and are not fields).
struct CrossAttnAttributes
{
    int32_t numHeads{0};
    int32_t numKvHeads{0};
    int32_t headDim{0};
    float scale{0.F};
    int32_t fuseGate{0};

    //! "" when consistent, else a message naming the attribute.
    std::string check() const;
};

//! Reports the exception being handled (call inside catch) through TensorRT's logger, or stderr.
void reportPluginException(char const* where) noexcept;

class SlowFastCrossAttnPlugin : public nvinfer1::IPluginV3,
                                public nvinfer1::IPluginV3OneCore,
                                public nvinfer1::IPluginV3OneBuild,
                                public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit SlowFastCrossAttnPlugin(CrossAttnAttributes const& attributes);
    SlowFastCrossAttnPlugin(SlowFastCrossAttnPlugin const&) = default;
    ~SlowFastCrossAttnPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t expectedInputs() const;
    //! "" when the ranks/static dims of the inputs match the attributes.
    std::string checkDims(nvinfer1::Dims const* dims, int32_t nbInputs) const;
    kernels::CrossAttnShape shapeOf(nvinfer1::Dims const* dims) const;

    CrossAttnAttributes mAttributes;
    kernels::CrossAttnShape mShape{}; //!< runtime shape from onShapeChange
    size_t mWorkspaceBytes{0};        //!< workspace bound for mShape (<= what TensorRT reserved)
    int32_t mNumSms{0};
    int32_t mSmVersion{0};
    std::vector<nvinfer1::PluginField> mDataToSerialize;
    nvinfer1::PluginFieldCollection mFieldsToSerialize{};
};

class SlowFastCrossAttnPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    SlowFastCrossAttnPluginCreator();
    ~SlowFastCrossAttnPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace slowfast
