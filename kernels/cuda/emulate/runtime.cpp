// Runs an emulated CUDA grid on the CPU: the blocks on a pool of OS threads, the threads of a
// block as cooperative fibers that switch only at barriers (see README.md).
//
// Compiled once into a shared library that every emulated module links against. Each OS thread
// that runs blocks (the launching thread and the pool's helpers) keeps one Worker: its fiber
// stacks and its dynamic shared memory, allocated once and reused by every block and launch.
//
// A block runs in rounds. Each round resumes, in the launch's order (forward, reverse, or a fresh
// shuffle per round), every fiber that can run; a fiber runs until it reaches __syncthreads, a
// warp intrinsic, or its end, and switches back to the scheduler. A warp intrinsic completes when
// the last lane of its warp arrives; __syncthreads completes when no fiber can run any more and
// every fiber that has not exited waits at it. Anything else is reported as an error.
// The runtime's own per-thread variables use the initial-exec model: a plain %fs-relative access
// instead of a call to __tls_get_addr at every barrier (a few bytes of glibc's static TLS).
// Modules keep the default model: their static __shared__ arrays may be large. Where glibc has
// no static TLS left for a library loaded this late, _emulator.py rebuilds with
// -DFASTCNN_EMULATE_GENERAL_TLS.
#ifndef FASTCNN_EMULATE_GENERAL_TLS
#define FASTCNN_EMULATE_RUNTIME_TLS __attribute__((tls_model("initial-exec")))
#endif
#include "cuda_emulate.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if !defined(__x86_64__) || defined(FASTCNN_EMULATE_UCONTEXT)
#define FASTCNN_EMULATE_USE_UCONTEXT 1
#include <ucontext.h>
#endif

extern "C" {
__attribute__((visibility("default"))) __thread fastcnn_emulate::Builtins fastcnn_emulate_builtins
    FASTCNN_EMULATE_RUNTIME_TLS;
}

namespace fastcnn_emulate {
namespace {

constexpr unsigned int kWarpLanes = 32;
constexpr unsigned int kMaxBlockThreads = 1024;
constexpr uint64_t kMaxSharedBytes = 227 * 1024;  // the most an sm_90 block can opt in to
constexpr unsigned char kSharedPoison = 0xFF;     // every float and double of these bytes is NaN

// ---- Context switch.
#ifndef FASTCNN_EMULATE_USE_UCONTEXT
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save,
// loads `load` and pops the registers saved there. Everything else the ABI lets a call clobber,
// so the compiler saves it around the call: no system call, a dozen instructions.
// (glibc's swapcontext also saves the signal mask, with a system call per switch.)
extern "C" __attribute__((visibility("hidden"))) void fastcnn_emulate_switch_stacks(void** save,
                                                                                   void* load);
asm(R"(
    .text
    .globl fastcnn_emulate_switch_stacks
    .hidden fastcnn_emulate_switch_stacks
    .type fastcnn_emulate_switch_stacks, @function
fastcnn_emulate_switch_stacks:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fastcnn_emulate_switch_stacks, .-fastcnn_emulate_switch_stacks
)");
#endif

enum class FiberState : unsigned char { kRunnable, kAtBarrier, kInWarp, kExited, kFailed };

struct Fiber {
#ifdef FASTCNN_EMULATE_USE_UCONTEXT
  ucontext_t context;
#else
  void* stack_pointer = nullptr;  // where its registers are, while it is switched out
#endif
  char* stack_base = nullptr;  // lowest address of its stack (a guard page lies below)
  char* stack_top = nullptr;   // where its stack starts, a little below the highest address
  uint3 thread_index{};
  FiberState state = FiberState::kRunnable;
};

// One warp's pending intrinsic: the lanes deposit values; the last to arrive computes them all.
struct Warp {
  unsigned int existing = 0;  // lanes that exist (fewer than 32 in a block's last warp)
  unsigned int arrived = 0;   // lanes waiting in the pending intrinsic
  int operation = 0;
  unsigned int mask = 0;
  int width = 0;
  uint64_t value[kWarpLanes];
  int operand[kWarpLanes];
  uint64_t result[kWarpLanes];
};

struct Worker {
  // Fiber stacks: one mapping, each stack above a guard page, so an overflow faults instead of
  // silently writing into the neighbour's stack.
  char* stacks = nullptr;
  size_t stacks_bytes = 0;
  size_t stack_bytes = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<unsigned int> order;
  unsigned char* shared = nullptr;
  size_t shared_capacity = 0;

  // The block being run.
  const Grid* grid = nullptr;
  uint3 block_index{};
  unsigned int thread_count = 0;
  Fiber* running = nullptr;
  unsigned int at_barrier = 0;
  unsigned int in_warp = 0;
  unsigned int exited = 0;
  int error = kOk;
  std::string message;
#ifdef FASTCNN_EMULATE_USE_UCONTEXT
  ucontext_t scheduler;
#else
  void* scheduler_stack_pointer = nullptr;
#endif

  ~Worker() {
    if (stacks != nullptr) munmap(stacks, stacks_bytes);
    free(shared);
  }
};

// The worker of this OS thread, while it runs a launch's blocks.
__thread Worker* current_worker FASTCNN_EMULATE_RUNTIME_TLS = nullptr;

// Created on the thread's first launch, freed when the thread exits.
Worker& this_threads_worker() {
  static thread_local std::unique_ptr<Worker> owned;
  if (!owned) owned.reset(new Worker());
  return *owned;
}

size_t page_bytes() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

size_t round_up(size_t value, size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// ---- Fibers.
[[noreturn]] void fiber_main();

// Sets a fiber up to start the kernel at its next resume; its old stack contents do not matter,
// so a fiber abandoned by a failed block is reused like any other.
void prepare(Worker& w, Fiber& fiber) {
#ifdef FASTCNN_EMULATE_USE_UCONTEXT
  getcontext(&fiber.context);
  fiber.context.uc_stack.ss_sp = fiber.stack_base;
  fiber.context.uc_stack.ss_size = static_cast<size_t>(fiber.stack_top - fiber.stack_base);
  fiber.context.uc_link = nullptr;
  makecontext(&fiber.context, reinterpret_cast<void (*)()>(&fiber_main), 0);
#else
  // The frame fastcnn_emulate_switch_stacks pops: six registers, then the address it returns
  // to, fiber_main, which then sees the stack a call would leave (rsp = 8 modulo 16) and a null
  // return address above (it never returns).
  void** top = reinterpret_cast<void**>(fiber.stack_top);
  void** frame = top - 8;
  for (int i = 0; i < 6; ++i) frame[i] = nullptr;
  frame[6] = reinterpret_cast<void*>(&fiber_main);
  frame[7] = nullptr;
  fiber.stack_pointer = frame;
#endif
}

// Scheduler -> fiber, until the fiber switches back.
inline void resume(Worker& w, Fiber& fiber) {
  fastcnn_emulate_builtins.thread_index = fiber.thread_index;
  w.running = &fiber;
#ifdef FASTCNN_EMULATE_USE_UCONTEXT
  swapcontext(&w.scheduler, &fiber.context);
#else
  fastcnn_emulate_switch_stacks(&w.scheduler_stack_pointer, fiber.stack_pointer);
#endif
}

// Fiber -> scheduler; returns when the scheduler resumes this fiber.
inline void suspend(Worker& w, Fiber& fiber) {
#ifdef FASTCNN_EMULATE_USE_UCONTEXT
  swapcontext(&fiber.context, &w.scheduler);
#else
  fastcnn_emulate_switch_stacks(&fiber.stack_pointer, w.scheduler_stack_pointer);
#endif
}

void fiber_main() {
  Worker& w = *current_worker;
  w.grid->run_thread(w.grid->call);
  Fiber& self = *w.running;
  self.state = FiberState::kExited;
  ++w.exited;
  suspend(w, self);  // never resumed: the next block prepares the fiber afresh
  __builtin_unreachable();
}

// ---- Errors.
std::string format(const char* pattern, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* pattern, ...) {
  char buffer[512];
  va_list arguments;
  va_start(arguments, pattern);
  vsnprintf(buffer, sizeof buffer, pattern, arguments);
  va_end(arguments);
  return buffer;
}

std::string where(const Worker& w) {
  return format("kernel %s, block (%u,%u,%u)", w.grid->kernel_name, w.block_index.x,
                w.block_index.y, w.block_index.z);
}

// From a fiber: record the block's error and leave the block for good.
[[noreturn]] void fail_in_fiber(int error, const std::string& message) {
  Worker& w = *current_worker;
  Fiber& self = *w.running;
  w.error = error;
  w.message = where(w) + format(", thread (%u,%u,%u): ", self.thread_index.x,
                                self.thread_index.y, self.thread_index.z) + message;
  self.state = FiberState::kFailed;
  suspend(w, self);
  __builtin_unreachable();
}

const char* warp_operation_name(int operation) {
  static const char* const names[] = {"__syncwarp",      "__ballot_sync",    "__any_sync",
                                      "__all_sync",      "__shfl_sync",      "__shfl_up_sync",
                                      "__shfl_down_sync", "__shfl_xor_sync"};
  return operation >= 0 && operation <= kShuffleXor ? names[operation] : "a warp intrinsic";
}

// ---- Warp intrinsics. The source lane of a shuffle follows PTX's shfl: lanes are split into
// segments of `width`; up and down stay inside the segment, xor and index may not leave it
// upwards; a lane whose source is out of range gets its own value.
unsigned int shuffle_source(int operation, unsigned int lane, int operand, int width) {
  const unsigned int segment_mask = kWarpLanes - static_cast<unsigned int>(width);  // high bits
  const unsigned int first = lane & segment_mask;
  const unsigned int last = first | (31u & ~segment_mask);
  const unsigned int b = static_cast<unsigned int>(operand) & 31u;
  switch (operation) {
    case kShuffleUp: return lane - b >= first && b <= lane ? lane - b : lane;
    case kShuffleDown: return lane + b <= last ? lane + b : lane;
    case kShuffleXor: return (lane ^ b) <= last ? lane ^ b : lane;
    default: return first | (b & ~segment_mask);  // kShuffleIndex
  }
}

void complete_warp(Worker& w, unsigned int warp_index) {
  Warp& warp = w.warps[warp_index];
  const unsigned int lanes = warp.arrived;
  unsigned int ballot = 0;
  for (unsigned int lane = 0; lane < kWarpLanes; ++lane) {
    if ((lanes >> lane & 1u) && warp.value[lane] != 0) ballot |= 1u << lane;
  }
  for (unsigned int lane = 0; lane < kWarpLanes; ++lane) {
    if (!(lanes >> lane & 1u)) continue;
    uint64_t result = 0;
    switch (warp.operation) {
      case kWarpSync: break;
      case kWarpBallot: result = ballot; break;
      case kWarpAny: result = ballot != 0; break;
      case kWarpAll: result = ballot == lanes; break;
      default: {
        const unsigned int source =
            shuffle_source(warp.operation, lane, warp.operand[lane], warp.width);
        result = warp.value[(lanes >> source & 1u) ? source : lane];
      }
    }
    warp.result[lane] = result;
    w.fibers[warp_index * kWarpLanes + lane].state = FiberState::kRunnable;
  }
  w.in_warp -= static_cast<unsigned int>(__builtin_popcount(lanes));
  warp.arrived = 0;
}

// ---- One block.
uint64_t mix(uint64_t x) {  // splitmix64: a seed per block, whichever worker runs it
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Fiber stacks for `count` threads of `stack_bytes` each; false if memory ran out.
bool ensure_fibers(Worker& w, unsigned int count, size_t stack_bytes) {
  if (w.fibers.size() >= count && w.stack_bytes == stack_bytes) return true;
  const size_t page = page_bytes();
  const size_t slot = page + stack_bytes;
  const size_t bytes = slot * count;
  void* mapping = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mapping == MAP_FAILED) return false;
  if (w.stacks != nullptr) munmap(w.stacks, w.stacks_bytes);
  w.stacks = static_cast<char*>(mapping);
  w.stacks_bytes = bytes;
  w.stack_bytes = stack_bytes;
  w.fibers.assign(count, Fiber{});
  for (unsigned int i = 0; i < count; ++i) {
    char* guard = w.stacks + i * slot;
    mprotect(guard, page, PROT_NONE);
    w.fibers[i].stack_base = guard + page;
    // Stacks start at 16 different offsets within a page: equal offsets would put every
    // fiber's hot top-of-stack lines into the same cache sets, and each switch would miss.
    w.fibers[i].stack_top = guard + page + stack_bytes - (i % 16) * 256;
  }
  return true;
}

bool ensure_shared(Worker& w, size_t bytes) {
  if (w.shared != nullptr && w.shared_capacity >= bytes) return true;
  free(w.shared);
  const size_t capacity = round_up(std::max<size_t>(bytes, 64), 64);
  w.shared = static_cast<unsigned char*>(aligned_alloc(64, capacity));
  w.shared_capacity = w.shared != nullptr ? capacity : 0;
  return w.shared != nullptr;
}

// Prepares the worker for a launch's blocks (the same for every block of the launch).
int prepare_launch(Worker& w, const Grid& grid, std::string& message) {
  const unsigned int count = grid.block[0] * grid.block[1] * grid.block[2];
  const size_t stack = round_up(std::max<uint64_t>(grid.options->stack_bytes, 16384), page_bytes());
  if (!ensure_fibers(w, count, stack) || !ensure_shared(w, grid.shared_bytes)) {
    message = "out of memory for fiber stacks or shared memory";
    return kSystem;
  }
  w.grid = &grid;
  w.thread_count = count;
  for (unsigned int t = 0; t < count; ++t) {
    w.fibers[t].thread_index = uint3{t % grid.block[0], t / grid.block[0] % grid.block[1],
                                     t / (grid.block[0] * grid.block[1])};
  }
  const unsigned int warp_count = (count + kWarpLanes - 1) / kWarpLanes;
  w.warps.resize(warp_count);
  for (unsigned int i = 0; i < warp_count; ++i) {
    const unsigned int lanes = std::min(kWarpLanes, count - i * kWarpLanes);
    w.warps[i].existing = lanes == kWarpLanes ? 0xFFFFFFFFu : (1u << lanes) - 1u;
  }
  w.order.reserve(count);
  return kOk;
}

// The fibers that can run, in the launch's order.
void schedule_round(Worker& w, int order, uint64_t& random) {
  w.order.clear();
  for (unsigned int t = 0; t < w.thread_count; ++t) {
    if (w.fibers[t].state == FiberState::kRunnable) w.order.push_back(t);
  }
  if (order == kReverse) {
    std::reverse(w.order.begin(), w.order.end());
  } else if (order == kShuffle) {
    for (size_t i = w.order.size(); i > 1; --i) {  // Fisher-Yates
      random = mix(random);
      std::swap(w.order[i - 1], w.order[random % i]);
    }
  }
}

// What went wrong when no fiber can run but some have not exited.
std::string describe_stall(const Worker& w) {
  for (size_t i = 0; i < w.warps.size(); ++i) {
    const Warp& warp = w.warps[i];
    if (warp.arrived == 0) continue;
    const unsigned int needed = warp.mask & warp.existing;
    return where(w) + format(
        ": warp %zu: %d of %d lanes named in mask 0x%08x reached %s; the others exited or "
        "wait elsewhere (the emulator needs every lane named in the mask)",
        i, __builtin_popcount(warp.arrived), __builtin_popcount(needed), warp.mask,
        warp_operation_name(warp.operation));
  }
  return where(w) + format(": __syncthreads reached by %u of %u threads; %u had exited",
                           w.at_barrier, w.thread_count, w.exited);
}

int run_block(Worker& w, uint64_t linear_block, std::string& message) {
  const Grid& grid = *w.grid;
  const uint64_t plane = uint64_t(grid.grid[0]) * grid.grid[1];
  w.block_index = uint3{static_cast<unsigned int>(linear_block % grid.grid[0]),
                        static_cast<unsigned int>(linear_block / grid.grid[0] % grid.grid[1]),
                        static_cast<unsigned int>(linear_block / plane)};
  Builtins& builtins = fastcnn_emulate_builtins;
  builtins.block_index = w.block_index;
  builtins.block_dim = uint3{grid.block[0], grid.block[1], grid.block[2]};
  builtins.grid_dim = uint3{grid.grid[0], grid.grid[1], grid.grid[2]};
  builtins.dynamic_shared = w.shared;
  memset(w.shared, kSharedPoison, grid.shared_bytes);
  for (unsigned int t = 0; t < w.thread_count; ++t) {
    w.fibers[t].state = FiberState::kRunnable;
    prepare(w, w.fibers[t]);
  }
  for (Warp& warp : w.warps) warp.arrived = 0;
  w.at_barrier = w.in_warp = w.exited = 0;
  w.error = kOk;

  const int order = grid.options->order;
  uint64_t random = mix(grid.options->seed ^ mix(linear_block));
  for (;;) {
    schedule_round(w, order, random);
    if (w.order.empty()) {
      if (w.exited == w.thread_count) return kOk;
      if (w.in_warp != 0 || w.exited != 0) {
        message = describe_stall(w);
        return w.in_warp != 0 ? kWarpDivergence : kBarrierDivergence;
      }
      // Every thread waits at __syncthreads: the barrier completes.
      for (unsigned int t = 0; t < w.thread_count; ++t) w.fibers[t].state = FiberState::kRunnable;
      w.at_barrier = 0;
      continue;
    }
    for (unsigned int t : w.order) {
      Fiber& fiber = w.fibers[t];
      if (fiber.state != FiberState::kRunnable) continue;
      resume(w, fiber);
      if (w.error != kOk) {
        message = w.message;
        return w.error;
      }
    }
  }
}

// ---- Launches: blocks handed out by an atomic counter to the launching thread and helpers.
struct Job {
  const Grid* grid = nullptr;
  uint64_t block_count = 0;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  int error = kOk;
  std::string message;
  unsigned int helpers_wanted = 0;
  unsigned int helpers_joined = 0;  // guarded by the pool's mutex
  unsigned int helpers_active = 0;  // guarded by the pool's mutex
};

void record_error(Job& job, int error, const std::string& message) {
  std::lock_guard<std::mutex> lock(job.error_mutex);
  if (job.error == kOk) {
    job.error = error;
    job.message = message;
  }
  job.failed.store(true, std::memory_order_relaxed);
}

void run_blocks(Job& job) {
  Worker& w = this_threads_worker();
  current_worker = &w;
  std::string message;
  int error = prepare_launch(w, *job.grid, message);
  if (error != kOk) {
    record_error(job, error, message);
    return;
  }
  const LaunchOptions& options = *job.grid->options;
  while (!job.failed.load(std::memory_order_relaxed)) {
    const uint64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job.block_count) break;
    error = run_block(w, options.blocks != nullptr ? options.blocks[i] : i, message);
    if (error != kOk) record_error(job, error, message);
  }
  w.grid = nullptr;
  current_worker = nullptr;
}

// Helper OS threads, started as launches ask for them and kept for the life of the process.
// Each launch runs blocks on its own thread too, so it finishes even if every helper is busy
// with other launches (several Python threads may launch at once).
class Pool {
 public:
  // Offers the job to `helpers` helper threads; false if threads could not be started.
  bool offer(Job& job, unsigned int helpers) {
    std::lock_guard<std::mutex> lock(mutex_);
    try {
      while (thread_count_ < helpers) {
        std::thread(&Pool::serve, this).detach();
        ++thread_count_;
      }
    } catch (const std::system_error&) {
      if (thread_count_ == 0) return false;
    }
    job.helpers_wanted = helpers;
    jobs_.push_back(&job);
    work_.notify_all();
    return true;
  }

  // Stops more helpers joining and waits for those that did.
  void withdraw(Job& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    jobs_.erase(std::remove(jobs_.begin(), jobs_.end(), &job), jobs_.end());
    finished_.wait(lock, [&] { return job.helpers_active == 0; });
  }

 private:
  void serve() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      work_.wait(lock, [&] { return !jobs_.empty(); });
      Job& job = *jobs_.front();
      if (++job.helpers_joined == job.helpers_wanted) jobs_.pop_front();
      ++job.helpers_active;
      lock.unlock();
      run_blocks(job);
      lock.lock();
      if (--job.helpers_active == 0) finished_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable work_, finished_;
  std::deque<Job*> jobs_;
  unsigned int thread_count_ = 0;
};

// Never destroyed: helpers wait on it until the process exits.
Pool& pool() {
  static Pool* instance = new Pool();
  return *instance;
}

// CUDA's launch limits (sm_90), checked so a test learns what a GPU would refuse.
std::string check_configuration(const Grid& grid) {
  const unsigned int* b = grid.block;
  const unsigned int* g = grid.grid;
  const uint64_t threads = uint64_t(b[0]) * b[1] * b[2];
  if (b[0] == 0 || b[1] == 0 || b[2] == 0 || g[0] == 0 || g[1] == 0 || g[2] == 0) {
    return "grid and block dimensions must be at least 1";
  }
  if (threads > kMaxBlockThreads || b[0] > 1024 || b[1] > 1024 || b[2] > 64) {
    return format("block (%u,%u,%u) exceeds CUDA's limits: at most 1024 threads, "
                  "(1024, 1024, 64) per dimension", b[0], b[1], b[2]);
  }
  if (g[0] > 0x7FFFFFFFu || g[1] > 65535 || g[2] > 65535) {
    return format("grid (%u,%u,%u) exceeds CUDA's limits (2^31 - 1, 65535, 65535)", g[0], g[1],
                  g[2]);
  }
  if (grid.shared_bytes > kMaxSharedBytes) {
    return format("%llu bytes of dynamic shared memory; a block has at most %llu",
                  static_cast<unsigned long long>(grid.shared_bytes),
                  static_cast<unsigned long long>(kMaxSharedBytes));
  }
  const LaunchOptions& options = *grid.options;
  if (options.order < kForward || options.order > kShuffle || options.workers == 0) {
    return "invalid launch options";
  }
  const uint64_t total = uint64_t(g[0]) * g[1] * g[2];
  for (uint64_t i = 0; options.blocks != nullptr && i < options.block_count; ++i) {
    if (options.blocks[i] >= total) {
      return format("block %llu is outside the grid of %llu blocks",
                    static_cast<unsigned long long>(options.blocks[i]),
                    static_cast<unsigned long long>(total));
    }
  }
  return "";
}

void copy_message(const std::string& message, char* error, size_t error_size) {
  if (error == nullptr || error_size == 0) return;
  snprintf(error, error_size, "%s", message.c_str());
}

}  // namespace
}  // namespace fastcnn_emulate

using namespace fastcnn_emulate;

extern "C" __attribute__((visibility("default"))) int fastcnn_emulate_run_grid(
    const Grid* grid, char* error, size_t error_size) {
  const std::string invalid = check_configuration(*grid);
  if (!invalid.empty()) {
    copy_message(std::string("kernel ") + grid->kernel_name + ": " + invalid, error, error_size);
    return kInvalidConfiguration;
  }
  const LaunchOptions& options = *grid->options;
  Job job;
  job.grid = grid;
  job.block_count = options.blocks != nullptr
                        ? options.block_count
                        : uint64_t(grid->grid[0]) * grid->grid[1] * grid->grid[2];
  const uint64_t helpers = std::min<uint64_t>(options.workers - 1, job.block_count - 1);
  const bool helped = job.block_count > 1 && helpers > 0 &&
                      pool().offer(job, static_cast<unsigned int>(helpers));
  run_blocks(job);
  if (helped) pool().withdraw(job);
  fflush(stdout);  // a kernel's printf shows before whatever Python prints next
  if (job.error != kOk) copy_message(job.message, error, error_size);
  return job.error;
}

extern "C" __attribute__((visibility("default"))) void fastcnn_emulate_syncthreads(void) {
  Worker& w = *current_worker;
  Fiber& self = *w.running;
  self.state = FiberState::kAtBarrier;
  ++w.at_barrier;
  suspend(w, self);
}

extern "C" __attribute__((visibility("default"))) uint64_t fastcnn_emulate_warp(
    int operation, unsigned int mask, uint64_t value, int operand, int width) {
  Worker& w = *current_worker;
  Fiber& self = *w.running;
  const unsigned int linear = static_cast<unsigned int>(&self - w.fibers.data());
  const unsigned int warp_index = linear / kWarpLanes;
  const unsigned int lane = linear % kWarpLanes;
  Warp& warp = w.warps[warp_index];
  if (!(mask >> lane & 1u)) {
    fail_in_fiber(kWarpDivergence, format("%s with mask 0x%08x, which leaves out the calling "
                                          "lane %u", warp_operation_name(operation), mask, lane));
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail_in_fiber(kWarpDivergence, format("%s with width %d; it must be a power of 2 up to 32",
                                          warp_operation_name(operation), width));
  }
  if (warp.arrived == 0) {
    warp.operation = operation;
    warp.mask = mask;
    warp.width = width;
  } else if (warp.operation != operation || warp.mask != mask || warp.width != width) {
    fail_in_fiber(kWarpDivergence,
                  format("lanes of warp %u meet in different warp intrinsics: %s (mask 0x%08x, "
                         "width %d) while others wait in %s (mask 0x%08x, width %d)",
                         warp_index, warp_operation_name(operation), mask, width,
                         warp_operation_name(warp.operation), warp.mask, warp.width));
  }
  warp.value[lane] = value;
  warp.operand[lane] = operand;
  warp.arrived |= 1u << lane;
  self.state = FiberState::kInWarp;
  ++w.in_warp;
  if (warp.arrived == (mask & warp.existing)) complete_warp(w, warp_index);
  suspend(w, self);  // every lane resumes in the next round, in the launch's order
  return warp.result[lane];
}

extern "C" __attribute__((visibility("default"))) void fastcnn_emulate_trap(void) {
  fail_in_fiber(kTrap, "the kernel called __trap()");
}
