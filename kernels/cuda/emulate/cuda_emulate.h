// CUDA C on the CPU: what g++ needs to compile a kernels/cuda/*.cu file as C++ (backend cuda-emu).
// Included first (g++ -include); the threads of a block run as fibers of runtime.cpp (see README.md).
//
// Everything a kernel may use is declared here: qualifiers, the builtin index variables, vector
// types, math, barriers, warp intrinsics and atomics. The scheduler itself lives in one shared
// library (runtime.cpp) that every compiled module links against, so all modules share one pool
// of OS threads and one set of fiber stacks per thread.
#pragma once
#define FASTCNN_EMULATE 1

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- Qualifiers. Kernels become plain C++ functions; launch bounds only guide nvcc.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
// (No __noinline__: libstdc++ spells __attribute__((__noinline__)), which such a macro breaks.)
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is already a g++ keyword. __constant__ data cannot be written from Python here
// (there is no get_global); it is only usable for initialised constants.
#define __constant__
// Static shared memory: one OS thread runs one block at a time, all of its fibers included, so a
// per-OS-thread variable is exactly per-block storage. It is NOT poisoned between blocks (the
// emulator does not know these variables); dynamic shared memory is.
#define __shared__ static thread_local

// Dynamic shared memory: `extern __shared__ T name[];` cannot be made valid C++ by macros, so
// kernels write FASTCNN_DYNAMIC_SHARED(T, name); which declares `T* name` pointing at the block's
// dynamic shared memory (16-byte aligned). portable.cuh defines the same macro for nvcc.
#define FASTCNN_DYNAMIC_SHARED(T, name) \
  T* name = reinterpret_cast<T*>(::fastcnn_emulate::builtins().dynamic_shared)

// ---- Index types and vector types, laid out and aligned as in CUDA's vector_types.h.
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define FASTCNN_EMULATE_VECTOR2(name, T, alignment)                                   \
  struct __attribute__((aligned(alignment))) name {                                   \
    T x, y;                                                                           \
  };                                                                                  \
  static inline name make_##name(T x, T y) { return name{x, y}; }
#define FASTCNN_EMULATE_VECTOR3(name, T)                                              \
  struct name {                                                                       \
    T x, y, z;                                                                        \
  };                                                                                  \
  static inline name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define FASTCNN_EMULATE_VECTOR4(name, T, alignment)                                   \
  struct __attribute__((aligned(alignment))) name {                                   \
    T x, y, z, w;                                                                     \
  };                                                                                  \
  static inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
FASTCNN_EMULATE_VECTOR2(float2, float, 8)
FASTCNN_EMULATE_VECTOR3(float3, float)
FASTCNN_EMULATE_VECTOR4(float4, float, 16)
FASTCNN_EMULATE_VECTOR2(double2, double, 16)
FASTCNN_EMULATE_VECTOR2(int2, int, 8)
FASTCNN_EMULATE_VECTOR3(int3, int)
FASTCNN_EMULATE_VECTOR4(int4, int, 16)
FASTCNN_EMULATE_VECTOR2(uint2, unsigned int, 8)
FASTCNN_EMULATE_VECTOR4(uint4, unsigned int, 16)
static inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) {
  return uint3{x, y, z};
}
#undef FASTCNN_EMULATE_VECTOR2
#undef FASTCNN_EMULATE_VECTOR3
#undef FASTCNN_EMULATE_VECTOR4

namespace fastcnn_emulate {

// What the builtin variables read. The scheduler rewrites thread_index before it resumes each
// fiber, and the rest at each block's start: fibers never move between OS threads, so one
// per-OS-thread record is always the running fiber's view. (blockDim and gridDim are uint3 here,
// dim3 in CUDA; both have .x .y .z and convert to each other.)
struct Builtins {
  uint3 thread_index;
  uint3 block_index;
  uint3 block_dim;
  uint3 grid_dim;
  unsigned char* dynamic_shared;
};

// How the threads of a block are ordered between barriers.
enum Order : int { kForward = 0, kReverse = 1, kShuffle = 2 };

// Per-launch settings from Python (ctypes mirrors this layout in _emulator.py).
struct LaunchOptions {
  int order;                 // an Order
  unsigned int workers;      // OS threads running blocks, the calling one included (>= 1)
  uint64_t seed;             // for kShuffle
  const uint64_t* blocks;    // run only these linear block indices; null: the whole grid
  uint64_t block_count;      // how many are listed in `blocks`
  uint64_t stack_bytes;      // stack of each fiber
};

// One launch as the runtime sees it: a grid and a type-erased way to run one thread of it.
struct Grid {
  const char* kernel_name;
  unsigned int grid[3];
  unsigned int block[3];
  uint64_t shared_bytes;
  const LaunchOptions* options;
  void (*run_thread)(const void* call);  // calls the kernel with the launch's arguments
  const void* call;
};

// Error codes returned to Python (0: success); the message goes into the caller's buffer.
enum Error : int {
  kOk = 0,
  kInvalidConfiguration = 1,
  kBarrierDivergence = 2,  // __syncthreads reached by some threads of a block, others exited
  kWarpDivergence = 3,     // a warp intrinsic the warp's lanes cannot all meet
  kTrap = 4,               // the kernel called __trap()
  kSystem = 5,             // out of memory, or a thread could not be started
};

// Warp intrinsics, as one exchange: every lane deposits a value and an operand, and once all
// lanes named in the mask have arrived each gets its result.
enum WarpOperation : int {
  kWarpSync = 0,
  kWarpBallot = 1,
  kWarpAny = 2,
  kWarpAll = 3,
  kShuffleIndex = 4,
  kShuffleUp = 5,
  kShuffleDown = 6,
  kShuffleXor = 7,
};

}  // namespace fastcnn_emulate

// ---- The runtime's C interface (runtime.cpp).
#ifndef FASTCNN_EMULATE_RUNTIME_TLS
#define FASTCNN_EMULATE_RUNTIME_TLS
#endif
extern "C" {
extern __thread fastcnn_emulate::Builtins fastcnn_emulate_builtins FASTCNN_EMULATE_RUNTIME_TLS;
int fastcnn_emulate_run_grid(const fastcnn_emulate::Grid* grid, char* error, size_t error_size);
void fastcnn_emulate_syncthreads(void);
uint64_t fastcnn_emulate_warp(int operation, unsigned int mask, uint64_t value, int operand,
                              int width);
__attribute__((noreturn)) void fastcnn_emulate_trap(void);
}

namespace fastcnn_emulate {
inline const Builtins& builtins() { return fastcnn_emulate_builtins; }
}  // namespace fastcnn_emulate

#define threadIdx (::fastcnn_emulate::builtins().thread_index)
#define blockIdx (::fastcnn_emulate::builtins().block_index)
#define blockDim (::fastcnn_emulate::builtins().block_dim)
#define gridDim (::fastcnn_emulate::builtins().grid_dim)
static constexpr int warpSize = 32;

// ---- Barriers and fences. Only a barrier lets another fiber run, so fences only need to keep
// the compiler (and, between blocks on different OS threads, the CPU) in order.
static inline void __syncthreads() { fastcnn_emulate_syncthreads(); }
static inline void __syncwarp(unsigned int mask = 0xffffffffu) {
  fastcnn_emulate_warp(fastcnn_emulate::kWarpSync, mask, 0, 0, 32);
}
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static inline void __trap() { fastcnn_emulate_trap(); }

// ---- Warp votes and shuffles (any trivially copyable type of at most 8 bytes, as in CUDA).
static inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
  return static_cast<unsigned int>(
      fastcnn_emulate_warp(fastcnn_emulate::kWarpBallot, mask, predicate != 0, 0, 32));
}
static inline int __any_sync(unsigned int mask, int predicate) {
  return static_cast<int>(
      fastcnn_emulate_warp(fastcnn_emulate::kWarpAny, mask, predicate != 0, 0, 32));
}
static inline int __all_sync(unsigned int mask, int predicate) {
  return static_cast<int>(
      fastcnn_emulate_warp(fastcnn_emulate::kWarpAll, mask, predicate != 0, 0, 32));
}

namespace fastcnn_emulate {
template <typename T>
inline T shuffle(WarpOperation operation, unsigned int mask, T value, int operand, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "warp shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &value, sizeof(T));
  bits = fastcnn_emulate_warp(operation, mask, bits, operand, width);
  T result;
  memcpy(&result, &bits, sizeof(T));
  return result;
}
}  // namespace fastcnn_emulate

template <typename T>
inline T __shfl_sync(unsigned int mask, T value, int source_lane, int width = 32) {
  return fastcnn_emulate::shuffle(fastcnn_emulate::kShuffleIndex, mask, value, source_lane, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned int mask, T value, unsigned int delta, int width = 32) {
  return fastcnn_emulate::shuffle(fastcnn_emulate::kShuffleUp, mask, value, int(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned int mask, T value, unsigned int delta, int width = 32) {
  return fastcnn_emulate::shuffle(fastcnn_emulate::kShuffleDown, mask, value, int(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = 32) {
  return fastcnn_emulate::shuffle(fastcnn_emulate::kShuffleXor, mask, value, lane_mask, width);
}

// ---- Atomics. Blocks run on parallel OS threads, so these are real atomic instructions;
// relaxed, like CUDA's (a kernel orders them with __threadfence()).
namespace fastcnn_emulate {
// Floating-point add, max and min have no x86 instruction: compare-and-swap on the bits.
template <typename T, typename Bits, typename Update>
inline T atomic_update(T* address, Update update) {
  static_assert(sizeof(T) == sizeof(Bits), "the bits must be the value's size");
  Bits* bits = reinterpret_cast<Bits*>(address);
  Bits expected = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    T old_value;
    memcpy(&old_value, &expected, sizeof(T));
    const T new_value = update(old_value);
    Bits desired;
    memcpy(&desired, &new_value, sizeof(T));
    if (__atomic_compare_exchange_n(bits, &expected, desired, true, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED)) {
      return old_value;
    }
  }
}
}  // namespace fastcnn_emulate

#define FASTCNN_EMULATE_INTEGER_ATOMICS(T)                                                   \
  static inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); } \
  static inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); } \
  static inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); } \
  static inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }   \
  static inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); } \
  static inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); } \
  static inline T atomicCAS(T* a, T compare, T v) {                                          \
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);  \
    return compare; /* the old value, whether or not it was swapped */                        \
  }                                                                                          \
  static inline T atomicMax(T* a, T v) {                                                     \
    return fastcnn_emulate::atomic_update<T, T>(a, [v](T old) { return old < v ? v : old; }); \
  }                                                                                          \
  static inline T atomicMin(T* a, T v) {                                                     \
    return fastcnn_emulate::atomic_update<T, T>(a, [v](T old) { return v < old ? v : old; }); \
  }
FASTCNN_EMULATE_INTEGER_ATOMICS(int)
FASTCNN_EMULATE_INTEGER_ATOMICS(unsigned int)
FASTCNN_EMULATE_INTEGER_ATOMICS(long long)
FASTCNN_EMULATE_INTEGER_ATOMICS(unsigned long long)
#undef FASTCNN_EMULATE_INTEGER_ATOMICS

static inline float atomicAdd(float* a, float v) {
  return fastcnn_emulate::atomic_update<float, uint32_t>(a, [v](float old) { return old + v; });
}
static inline double atomicAdd(double* a, double v) {
  return fastcnn_emulate::atomic_update<double, uint64_t>(a, [v](double old) { return old + v; });
}
static inline float atomicExch(float* a, float v) {
  return fastcnn_emulate::atomic_update<float, uint32_t>(a, [v](float) { return v; });
}

// ---- Math. <math.h> gives expf ... copysignf, isnan/isinf (float and double overloads),
// INFINITY and NAN; these are CUDA's extras. The fast intrinsics are computed exactly here.
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
// glibc declares __expf, __logf and __powf but does not export them, hence macros.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __powf(x, y) powf(x, y)
static inline float __fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
template <typename T>
inline T __ldg(const T* address) {
  return *address;
}
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

// CUDA's min and max overloads (nvcc also has mixed signed/unsigned ones; pass equal types).
#define FASTCNN_EMULATE_MIN_MAX(T)                           \
  static inline T min(T a, T b) { return b < a ? b : a; } \
  static inline T max(T a, T b) { return a < b ? b : a; }
FASTCNN_EMULATE_MIN_MAX(int)
FASTCNN_EMULATE_MIN_MAX(unsigned int)
FASTCNN_EMULATE_MIN_MAX(long)
FASTCNN_EMULATE_MIN_MAX(unsigned long)
FASTCNN_EMULATE_MIN_MAX(long long)
FASTCNN_EMULATE_MIN_MAX(unsigned long long)
#undef FASTCNN_EMULATE_MIN_MAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
// The mixed overloads nvcc has: an unsigned operand makes the comparison unsigned, a double
// operand makes it double.
#define FASTCNN_EMULATE_MIXED_MIN_MAX(A, B, Common)                                      \
  static inline Common min(A a, B b) { return min(static_cast<Common>(a), static_cast<Common>(b)); } \
  static inline Common min(B b, A a) { return min(static_cast<Common>(b), static_cast<Common>(a)); } \
  static inline Common max(A a, B b) { return max(static_cast<Common>(a), static_cast<Common>(b)); } \
  static inline Common max(B b, A a) { return max(static_cast<Common>(b), static_cast<Common>(a)); }
FASTCNN_EMULATE_MIXED_MIN_MAX(int, unsigned int, unsigned int)
FASTCNN_EMULATE_MIXED_MIN_MAX(long long, unsigned long long, unsigned long long)
FASTCNN_EMULATE_MIXED_MIN_MAX(float, double, double)
#undef FASTCNN_EMULATE_MIXED_MIN_MAX

// ---- Launching: _emulator.py generates, per name expression,
//   extern "C" int fastcnn_launch_<i>(...) { return fastcnn_emulate::launch(&expression, ...); }
// Taking the kernel's address instantiates a template; the function type gives the parameter
// types, so each args[i] (a pointer to the i-th argument's bytes) is read as its parameter.
namespace fastcnn_emulate {

// How a parameter is described to Python, which checks every argument against it:
// "f4", "i8", "u4", "b1" (scalars), "s<bytes>" (a struct by value), "ptr:<pointee>" and
// "constptr:<pointee>" (pointee "v": void or anything else Python cannot check).
template <typename T>
std::string value_code() {
  if constexpr (std::is_enum<T>::value) {
    return value_code<typename std::underlying_type<T>::type>();
  } else if constexpr (std::is_same<T, bool>::value) {
    return "b1";
  } else if constexpr (std::is_integral<T>::value) {
    return (std::is_signed<T>::value ? "i" : "u") + std::to_string(sizeof(T));
  } else if constexpr (std::is_floating_point<T>::value) {
    return "f" + std::to_string(sizeof(T));
  } else {
    return "s" + std::to_string(sizeof(T));
  }
}
template <typename T>
std::string parameter_code() {
  if constexpr (std::is_pointer<T>::value) {
    using Pointee = typename std::remove_pointer<T>::type;
    using Plain = typename std::remove_cv<Pointee>::type;
    const char* kind = std::is_const<Pointee>::value ? "constptr:" : "ptr:";
    if constexpr (std::is_void<Plain>::value || std::is_pointer<Plain>::value ||
                  std::is_class<Plain>::value) {
      return kind + std::string("v");
    } else {
      return kind + value_code<Plain>();
    }
  } else {
    return value_code<T>();
  }
}

template <typename... Parameters>
struct KernelCall {
  void (*kernel)(Parameters...);
  std::tuple<typename std::decay<Parameters>::type...> arguments;
  static void run(const void* self) {
    const KernelCall& call = *static_cast<const KernelCall*>(self);
    std::apply(call.kernel, call.arguments);
  }
};

template <typename... Parameters, size_t... I>
int launch_with(void (*kernel)(Parameters...), const char* name, const unsigned int* grid,
                const unsigned int* block, size_t shared_bytes, void** args,
                const LaunchOptions* options, char* error, size_t error_size,
                std::index_sequence<I...>) {
  const KernelCall<Parameters...> call{
      kernel, {*static_cast<const typename std::decay<Parameters>::type*>(args[I])...}};
  const Grid launch{name,
                    {grid[0], grid[1], grid[2]},
                    {block[0], block[1], block[2]},
                    shared_bytes,
                    options,
                    &KernelCall<Parameters...>::run,
                    &call};
  return fastcnn_emulate_run_grid(&launch, error, error_size);
}

template <typename... Parameters>
int launch(void (*kernel)(Parameters...), const char* name, const unsigned int* grid,
           const unsigned int* block, size_t shared_bytes, void** args,
           const LaunchOptions* options, char* error, size_t error_size) {
  return launch_with(kernel, name, grid, block, shared_bytes, args, options, error, error_size,
                     std::index_sequence_for<Parameters...>{});
}

// The parameters, comma-separated, for Python's argument checks.
template <typename... Parameters>
const char* signature(void (*)(Parameters...)) {
  static const std::string codes = [] {
    std::string joined;
    ((joined += (joined.empty() ? "" : ",") + parameter_code<Parameters>()), ...);
    return joined;
  }();
  return codes.c_str();
}

}  // namespace fastcnn_emulate
