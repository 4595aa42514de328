// Deapodization: divide by the kernel's Fourier series and move between the image
// (n_t, N0, N1, N2) and the oversampled grid (n_t, nf0, nf1, nf2), both interleaved complex.
//
// Mode index j' = j - floor(N/2) of image voxel j sits at fine-grid cell j' mod nf
// (FINUFFT modeord 0). f0, f1, f2 hold 1 / phihat(j') per axis (with any scale folded in),
// precomputed once per plan on the host by Gauss-Legendre quadrature.
#include "narecon_nufft.cuh"

__device__ __forceinline__ int nr_mode_cell(int j, int n, int nf) {
  const int jp = j - n / 2;
  return jp < 0 ? jp + nf : jp;
}

// Forward (type 2) first step: fine = 0 elsewhere (caller zeroes it), fine[l(j)] = img[j] * f.
template <typename T>
__device__ void pad_deapod_impl(const T* __restrict__ img, T* __restrict__ fine, const T* __restrict__ f0,
                                const T* __restrict__ f1, const T* __restrict__ f2, int n0, int n1, int n2,
                                int nf0, int nf1, int nf2, int n_t) {
  const long long nimg = (long long)n0 * n1 * n2, nfine = (long long)nf0 * nf1 * nf2;
  const long long total = nimg * n_t;
  for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < total;
       q += (long long)blockDim.x * gridDim.x) {
    const long long t = q / nimg, r = q % nimg;
    const int j0 = (int)(r / ((long long)n1 * n2)), j1 = (int)((r / n2) % n1), j2 = (int)(r % n2);
    const T f = f0[j0] * f1[j1] * f2[j2];
    const long long l =
        t * nfine + ((long long)nr_mode_cell(j0, n0, nf0) * nf1 + nr_mode_cell(j1, n1, nf1)) * nf2 +
        nr_mode_cell(j2, n2, nf2);
    fine[2 * l] = img[2 * q] * f;
    fine[2 * l + 1] = img[2 * q + 1] * f;
  }
}

// Adjoint (type 1) last step: img[j] = fine[l(j)] * f.
template <typename T>
__device__ void crop_deapod_impl(const T* __restrict__ fine, T* __restrict__ img, const T* __restrict__ f0,
                                 const T* __restrict__ f1, const T* __restrict__ f2, int n0, int n1, int n2,
                                 int nf0, int nf1, int nf2, int n_t) {
  const long long nimg = (long long)n0 * n1 * n2, nfine = (long long)nf0 * nf1 * nf2;
  const long long total = nimg * n_t;
  for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < total;
       q += (long long)blockDim.x * gridDim.x) {
    const long long t = q / nimg, r = q % nimg;
    const int j0 = (int)(r / ((long long)n1 * n2)), j1 = (int)((r / n2) % n1), j2 = (int)(r % n2);
    const T f = f0[j0] * f1[j1] * f2[j2];
    const long long l =
        t * nfine + ((long long)nr_mode_cell(j0, n0, nf0) * nf1 + nr_mode_cell(j1, n1, nf1)) * nf2 +
        nr_mode_cell(j2, n2, nf2);
    img[2 * q] = fine[2 * l] * f;
    img[2 * q + 1] = fine[2 * l + 1] * f;
  }
}

#define NARECON_DEAPOD(SUFFIX, T)                                                                       \
  extern "C" __global__ void pad_deapod_##SUFFIX(const T* img, T* fine, const T* f0, const T* f1,      \
                                                 const T* f2, int n0, int n1, int n2, int nf0, int nf1, \
                                                 int nf2, int n_t) {                                    \
    pad_deapod_impl<T>(img, fine, f0, f1, f2, n0, n1, n2, nf0, nf1, nf2, n_t);                          \
  }                                                                                                     \
  NARECON_EXPORT(pad_deapod_##SUFFIX)                                                                   \
  extern "C" __global__ void crop_deapod_##SUFFIX(const T* fine, T* img, const T* f0, const T* f1,     \
                                                  const T* f2, int n0, int n1, int n2, int nf0, int nf1, \
                                                  int nf2, int n_t) {                                    \
    crop_deapod_impl<T>(fine, img, f0, f1, f2, n0, n1, n2, nf0, nf1, nf2, n_t);                          \
  }                                                                                                     \
  NARECON_EXPORT(crop_deapod_##SUFFIX)

NARECON_DEAPOD(f32, float)
NARECON_DEAPOD(f64, double)
