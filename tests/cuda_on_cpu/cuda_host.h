// cuda_host.h — what kernels/decode.cu needs of CUDA, on the host.
//
// The tests compile the kernel, unchanged, as C++20 with this header and
// run it on the CPU (tests/cuda_on_cpu.rs, harness.cpp): every thread block
// runs on 256 host threads, one per CUDA thread, and blocks run one after
// another. __shared__ arrays become function statics, which all threads of
// the block share as they would shared memory; __syncthreads() becomes a
// block-wide barrier that also checks that all threads meet at the same
// one, and fails instead of hanging when they never do.
//
// The kernel's ECF_MODEL_* hooks are defined here to feed the kernel's
// model (harness.cpp) when a launch is modelled: each ECF_MODEL_REGION()
// records that the thread entered the braces around it, and stands for
// those braces until they close; global and shared-memory accesses,
// codeword decodes and rounds are recorded with the region execution they
// belong to. The threads of a warp that run the same region execution
// (the same loop iteration, the same branch, reached the same way) are
// one warp issue of its instructions, and their k-th accesses in it are
// one memory request.
//
// Nothing else of CUDA is emulated: a kernel that uses more (warp
// intrinsics, atomics other than atomicMin, dynamic shared memory, vector
// types other than uint2 and uint4) does not compile here, which is the
// point. (__byte_perm's selectors that replicate a sign bit are not
// emulated either; the kernel uses none.) A prefetch into L1, inline PTX
// on the GPU, is ECF_MODEL_PREFETCH here: the model's sectors, no load.
#pragma once

#include <atomic>

struct dim3 {
    unsigned x, y, z;
};

namespace cuda_on_cpu {

// The CUDA thread each host thread is, and the block being run.
inline thread_local dim3 thread_index{0u, 0u, 0u};
inline thread_local dim3 block_index{0u, 0u, 0u};

// Waits until every thread of the block has arrived here (at this file and
// line); defined in harness.cpp.
void syncthreads(const char* file, int line);

// Whether the running launch is modelled; set only between launches.
extern bool modelling;

// Records, for the model, an access of the calling thread; defined in
// harness.cpp.
void model_access(const void* address, unsigned bytes, bool store);
void model_prefetch(const void* address);
void model_shared(const void* address, unsigned bytes);
void model_decode();
void model_round(bool active);
void model_enter(int line, unsigned variant);
void model_leave();

// The region of the braces it is declared in, while they are open.
struct ModelRegion {
    ModelRegion(int line, unsigned variant) : entered(modelling) {
        if (entered) {
            model_enter(line, variant);
        }
    }
    ~ModelRegion() {
        if (entered) {
            model_leave();
        }
    }
    ModelRegion(const ModelRegion&) = delete;
    ModelRegion& operator=(const ModelRegion&) = delete;
    // Launches start and stop being modelled between blocks only, but a
    // region left must be one that was entered.
    bool entered;
};

}  // namespace cuda_on_cpu

// The variant a region's counts go to: 0, but in a function template that
// declares its own (the kernel's write paths: their layout).
constexpr unsigned model_variant = 0;

#define ECF_MODEL_CONCAT_(a, b) a##b
#define ECF_MODEL_CONCAT(a, b) ECF_MODEL_CONCAT_(a, b)
#define ECF_MODEL_REGION() \
    ::cuda_on_cpu::ModelRegion ECF_MODEL_CONCAT(ecf_model_region_, __LINE__)(__LINE__, model_variant)
#define ECF_MODEL_PREFETCH(address)                 \
    do {                                            \
        if (::cuda_on_cpu::modelling) {             \
            ::cuda_on_cpu::model_prefetch(address);  \
        }                                           \
    } while (false)
#define ECF_MODEL_SHARED(address, bytes)                  \
    do {                                                  \
        if (::cuda_on_cpu::modelling) {                   \
            ::cuda_on_cpu::model_shared(address, bytes);  \
        }                                                 \
    } while (false)

#define ECF_MODEL_ACCESS(address, bytes, store)                  \
    do {                                                          \
        if (::cuda_on_cpu::modelling) {                           \
            ::cuda_on_cpu::model_access(address, bytes, store);   \
        }                                                         \
    } while (false)
#define ECF_MODEL_DECODE()                   \
    do {                                     \
        if (::cuda_on_cpu::modelling) {      \
            ::cuda_on_cpu::model_decode();   \
        }                                    \
    } while (false)
#define ECF_MODEL_ROUND(active)                  \
    do {                                         \
        if (::cuda_on_cpu::modelling) {          \
            ::cuda_on_cpu::model_round(active);  \
        }                                        \
    } while (false)

#define threadIdx (::cuda_on_cpu::thread_index)
#define blockIdx (::cuda_on_cpu::block_index)
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __syncthreads() ::cuda_on_cpu::syncthreads(__FILE__, __LINE__)

struct uint2 {
    unsigned x, y;
};

struct uint4 {
    unsigned x, y, z, w;
};

inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
    return uint4{x, y, z, w};
}

// Bytes of y:x picked by the selector's four nibbles, low byte first.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned selector) {
    const unsigned long long bytes = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned result = 0;
    for (unsigned k = 0; k < 4; ++k) {
        result |= static_cast<unsigned>((bytes >> (((selector >> (4 * k)) & 7u) * 8)) & 0xFFu) << (8 * k);
    }
    return result;
}

// The bits of x in reverse order.
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
    x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
    return (x >> 16) | (x << 16);
}

// hi:lo shifted right by shift % 32, low word.
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
    shift &= 31u;
    return shift == 0u ? lo : (lo >> shift) | (hi << (32u - shift));
}

inline unsigned min(unsigned a, unsigned b) {
    return a < b ? a : b;
}

inline unsigned max(unsigned a, unsigned b) {
    return a > b ? a : b;
}

inline unsigned atomicMin(unsigned* address, unsigned value) {
    std::atomic_ref<unsigned> target(*address);
    unsigned old = target.load(std::memory_order_relaxed);
    while (value < old && !target.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
    }
    return old;
}
