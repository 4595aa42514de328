// Self-test of the CUDA built-ins the NUFFT kernels rely on (tests/test_gpu_host.py on the host
// emulation, tests/test_gpu_device.py on a GPU): a block-level tree reduction in static
// __shared__ memory that is only right if __syncthreads is a true barrier, and atomicAdd of the
// block sums into one global total. Launch with 64 threads per block.
#include "narecon_nufft.cuh"

#define NARECON_SELFTEST_THREADS 64

extern "C" __global__ void selftest_block_sum(const double* x, int n, double* block_sums, double* total) {
  __shared__ double buf[NARECON_SELFTEST_THREADS];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  buf[threadIdx.x] = i < n ? x[i] : 0.0;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    block_sums[blockIdx.x] = buf[0];
    atomicAdd(total, buf[0]);
  }
}
NARECON_EXPORT(selftest_block_sum)
