// narecon NUFFT kernels: shared device helpers (CUDA C, also compiled for the host).
//
// The same sources are compiled
//   * by NVRTC through cupy.RawModule (GPU path; __CUDACC__ is defined), by nvcc in the test
//     suite (sm_80, sm_90), and
//   * by g++ for the host with recon/nufft/_hostcuda.h force-included (NARECON_HOSTCUDA is
//     defined), which provides threadIdx/blockIdx/blockDim/gridDim, atomicAdd, __syncthreads and
//     __shared__; every kernel is then exported through NARECON_EXPORT as a host launch stub.
//
// Kernel: "exponential of semicircle" (ES, Barnett et al. 2019), phi(z) = exp(beta (sqrt(1 - c z^2) - 1))
// for |z| < ns/2, c = 4/ns^2; width ns and beta follow FINUFFT/cuFINUFFT's rule at upsampling 2.0
// (chosen in recon/nufft/cupy_backend.py::es_params). Evaluated directly (exp of sqrt), 3*ns
// evaluations per point, which is cheap next to the ns^3 grid updates.
#pragma once

#if !defined(__CUDACC__) && !defined(NARECON_HOSTCUDA)
#error "compile with nvcc/NVRTC, or for the host with recon/nufft/_hostcuda.h force-included"
#endif

#ifdef __CUDACC__
#define NARECON_EXPORT(name)
// Dynamic shared memory (size given at launch) viewed as an array of T.
#define NARECON_DYNAMIC_SHARED(T, name)                     \
  extern __shared__ __align__(16) unsigned char nr_smem_[]; \
  T* name = reinterpret_cast<T*>(nr_smem_)
#endif

#define NARECON_MAX_NS 16

__device__ __forceinline__ float nr_exp(float x) { return expf(x); }
__device__ __forceinline__ double nr_exp(double x) { return exp(x); }
__device__ __forceinline__ float nr_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double nr_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float nr_ceil(float x) { return ceilf(x); }
__device__ __forceinline__ double nr_ceil(double x) { return ceil(x); }
__device__ __forceinline__ float nr_floor(float x) { return floorf(x); }
__device__ __forceinline__ double nr_floor(double x) { return floor(x); }

// Complex value as one vector load/store (float2 / double2: 8 / 16 bytes).
template <typename T> struct nr_cplx;
template <> struct nr_cplx<float> { typedef float2 type; };
template <> struct nr_cplx<double> { typedef double2 type; };

// ES kernel value at offset z (grid cells) from the point.
template <typename T>
__device__ __forceinline__ T es_kernel(T z, T beta, T c) {
  T s = T(1) - c * z * z;
  return s > T(0) ? nr_exp(beta * (nr_sqrt(s) - T(1))) : T(0);
}

// Kernel widths compiled as constants (unrolled loops, weights in registers); others use the
// generic kernels (NS = 0, runtime width). Kernel names carry the width: spread_gm_f32_w5, and
// _w0 for the generic one. Keep in sync with SPECIALIZED_WIDTHS in recon/nufft/cupy_backend.py.
#define NARECON_FOR_WIDTHS(M, SUFFIX, T) \
  M(SUFFIX, T, 0) M(SUFFIX, T, 4) M(SUFFIX, T, 5) M(SUFFIX, T, 6) M(SUFFIX, T, 7)

// Capacity of per-thread weight arrays and the width actually used.
#define NARECON_CAP(NS) ((NS) > 0 ? (NS) : NARECON_MAX_NS)
#define NARECON_WIDTH(NS, ns) ((NS) > 0 ? (NS) : (ns))

// Kernel weights and periodic grid indices of one point along one axis.
// x: position in fine-grid cells, [0, nf) (any real value is wrapped).
// Cells i0 .. i0+ns-1 with i0 = ceil(x - ns/2) are touched; idx[j] = (i0 + j) mod nf.
template <typename T, int NS>
__device__ __forceinline__ int es_weights_1d(T x, int ns_rt, int nf, T beta, T c, T* w, int* idx) {
  const int ns = NARECON_WIDTH(NS, ns_rt);
  T i0f = nr_ceil(x - T(0.5) * T(ns));
  int i0 = (int)i0f;
  T z = i0f - x;
  int i = i0 % nf;
  if (i < 0) i += nf;
#pragma unroll
  for (int j = 0; j < NARECON_CAP(NS); ++j) {
    if (j < ns) {
      w[j] = es_kernel(z + T(j), beta, c);
      idx[j] = i;
      i = (i + 1 == nf) ? 0 : i + 1;
    }
  }
  return i0;
}
