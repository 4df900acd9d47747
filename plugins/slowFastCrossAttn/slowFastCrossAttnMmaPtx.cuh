/*
 * PTX wrappers of the tensor-core kernel of slowFastCrossAttn (sm_80+): cp.async, ldmatrix, mma.sync m16n8k16
 * and the float -> 16-bit pair packing of its fragments. Compiled to __trap() below sm_80 (never launched there:
 * the launcher refuses such devices).
 */
#pragma once

#include "slowFastCrossAttnCommon.cuh"

namespace slowfast
{
namespace kernels
{
namespace detail
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

} // namespace detail
} // namespace kernels
} // namespace slowfast
