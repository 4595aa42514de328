// Host emulation of the CUDA built-ins used by narecon's kernels (kernels/*.cu).
//
// Force-included (g++ -include) ahead of each .cu source so the very same kernel code compiles
// as C++ for the CPU. It provides dim3, float2/double2, threadIdx/blockIdx (thread-local),
// blockDim/gridDim, atomicAdd (float, double: compare-and-swap on the host), __syncthreads (a std::barrier of
// the block's threads) and __shared__ (a function-local static: blocks run one after another,
// so it is one block's shared memory at a time; dynamic shared memory, NARECON_DYNAMIC_SHARED, is
// one buffer of the launch's size reused by each block). NARECON_EXPORT(kernel) emits
//   extern "C" int narecon_host_launch_<kernel>(const unsigned grid[3], const unsigned block[3],
//                                               void** args, int sync, unsigned shared_bytes)
// which runs every thread of every block; args are pointers to the argument values as for
// cuLaunchKernel. With sync == 0 the threads of a block run one after the other (kernels
// without __syncthreads); with sync != 0 each block's threads run as concurrent std::threads
// meeting at a barrier. Written by hand because no library emulates CUDA kernels on a CPU
// with the CUDA source unchanged (see recon/nufft/_hostcuda.py).
#pragma once
#define NARECON_HOSTCUDA 1

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

using std::ceil;
using std::exp;
using std::floor;
using std::sqrt;
using ::ceilf;
using ::expf;
using ::floorf;
using ::sqrtf;

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
// CUDA's vector types (natural alignment here: numpy buffers are only element-aligned)
struct float2 {
  float x, y;
};
struct double2 {
  double x, y;
};

namespace hostcuda {
inline thread_local dim3 thread_idx;
inline thread_local dim3 block_idx;
inline dim3 block_dim;
inline dim3 grid_dim;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline unsigned char* dynamic_shared = nullptr;  // the running block's dynamic shared memory

inline void syncthreads() {
  if (block_barrier == nullptr) {
    std::fprintf(stderr, "hostcuda: __syncthreads() in a kernel launched with sync=0 (launcher bug)\n");
    std::abort();
  }
  block_barrier->arrive_and_wait();
}

template <typename T>
inline T atomic_add(T* address, T val) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (!ref.compare_exchange_weak(old, old + val, std::memory_order_relaxed)) {
  }
  return old;
}

// Run body() for every thread of every block (blocks in order x fastest, as one SM would).
inline int launch(const unsigned* grid, const unsigned* block, int sync, unsigned shared_bytes,
                  const std::function<void()>& body) {
  std::vector<double> smem(shared_bytes / sizeof(double) + 2);  // 8-byte aligned, reused by each block
  dynamic_shared = reinterpret_cast<unsigned char*>(smem.data());
  grid_dim = dim3{grid[0], grid[1], grid[2]};
  block_dim = dim3{block[0], block[1], block[2]};
  const unsigned nthreads = block[0] * block[1] * block[2];
  if (nthreads == 0 || grid[0] * grid[1] * grid[2] == 0) return 0;
  for (unsigned bz = 0; bz < grid[2]; ++bz)
    for (unsigned by = 0; by < grid[1]; ++by)
      for (unsigned bx = 0; bx < grid[0]; ++bx) {
        const dim3 b{bx, by, bz};
        if (!sync) {
          block_idx = b;
          for (unsigned tz = 0; tz < block[2]; ++tz)
            for (unsigned ty = 0; ty < block[1]; ++ty)
              for (unsigned tx = 0; tx < block[0]; ++tx) {
                thread_idx = dim3{tx, ty, tz};
                body();
              }
        } else {
          std::barrier<> bar(nthreads);
          std::vector<std::thread> threads;
          threads.reserve(nthreads);
          for (unsigned q = 0; q < nthreads; ++q) {
            const dim3 t{q % block[0], (q / block[0]) % block[1], q / (block[0] * block[1])};
            threads.emplace_back([&, t] {
              block_idx = b;
              thread_idx = t;
              block_barrier = &bar;
              body();
              // a thread that returns early leaves the barrier so the others are not blocked
              bar.arrive_and_drop();
              block_barrier = nullptr;
            });
          }
          for (auto& th : threads) th.join();
        }
      }
  return 0;
}

// Call a kernel with its arguments given as void* pointers to values (cuLaunchKernel style).
template <typename... A, std::size_t... I>
inline void call_unpacked(void (*f)(A...), void** args, std::index_sequence<I...>) {
  f(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}
template <typename... A>
inline void call_packed(void (*f)(A...), void** args) {
  call_unpacked(f, args, std::index_sequence_for<A...>{});
}
}  // namespace hostcuda

#define threadIdx (hostcuda::thread_idx)
#define blockIdx (hostcuda::block_idx)
#define blockDim (hostcuda::block_dim)
#define gridDim (hostcuda::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __syncthreads() hostcuda::syncthreads()

inline float atomicAdd(float* a, float v) { return hostcuda::atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return hostcuda::atomic_add(a, v); }

#define NARECON_EXPORT(name)                                                                        \
  extern "C" int narecon_host_launch_##name(const unsigned* grid, const unsigned* block, void** args, \
                                            int sync, unsigned shared_bytes) {                       \
    return hostcuda::launch(grid, block, sync, shared_bytes,                                          \
                            [args] { hostcuda::call_packed(&name, args); });                         \
  }
#define NARECON_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(hostcuda::dynamic_shared)
