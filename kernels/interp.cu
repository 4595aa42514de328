// Type-2 interpolation: oversampled grid -> non-uniform samples, ES kernel of width ns.
//
// One thread per sorted point; the kernel weights are computed once and reused for all n_t
// transforms of the batch. Layouts as in spread.cu: grid (n_t, nf0, nf1, nf2) complex,
// out (n_t, out_stride) complex, sample p of transform t at out[2 (t out_stride + p)].
// No atomics: every thread writes only its own samples.
#include "narecon_nufft.cuh"

template <typename T, int NS>
__device__ void interp_impl(const T* __restrict__ x0, const T* __restrict__ x1, const T* __restrict__ x2,
                            const T* __restrict__ grid, T* __restrict__ out, long long out_stride, int m,
                            int nf0, int nf1, int nf2, int ns_rt, T beta, T cc, int n_t) {
  T w0[NARECON_CAP(NS)], w1[NARECON_CAP(NS)], w2[NARECON_CAP(NS)];
  int i0[NARECON_CAP(NS)], i1[NARECON_CAP(NS)], i2[NARECON_CAP(NS)];
  const int ns = NARECON_WIDTH(NS, ns_rt);
  const long long grid_n = (long long)nf0 * nf1 * nf2;
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < m; p += blockDim.x * gridDim.x) {
    es_weights_1d<T, NS>(x0[p], ns, nf0, beta, cc, w0, i0);
    es_weights_1d<T, NS>(x1[p], ns, nf1, beta, cc, w1, i1);
    es_weights_1d<T, NS>(x2[p], ns, nf2, beta, cc, w2, i2);
    typedef typename nr_cplx<T>::type C;
    for (int t = 0; t < n_t; ++t) {
      const C* g = reinterpret_cast<const C*>(grid) + t * grid_n;  // one vector load per cell
      T sr = T(0), si = T(0);
#pragma unroll 1  // keep the code small: only the inner two loops unroll
      for (int a = 0; a < ns; ++a) {
        for (int b = 0; b < ns; ++b) {
          const T wab = w0[a] * w1[b];
          const long long row = ((long long)i0[a] * nf1 + i1[b]) * nf2;
          T rr = T(0), ri = T(0);
          for (int d = 0; d < ns; ++d) {
            const C v = g[row + i2[d]];
            rr += w2[d] * v.x;
            ri += w2[d] * v.y;
          }
          sr += wab * rr;
          si += wab * ri;
        }
      }
      C r;
      r.x = sr;
      r.y = si;
      reinterpret_cast<C*>(out)[t * out_stride + p] = r;
    }
  }
}

#define NARECON_INTERP(SUFFIX, T, NS)                                                                  \
  extern "C" __global__ void interp_##SUFFIX##_w##NS(const T* x0, const T* x1, const T* x2, const T* grid, \
                                                     T* out, long long out_stride, int m, int nf0, int nf1, \
                                                     int nf2, int ns, T beta, T cc, int n_t) {              \
    interp_impl<T, NS>(x0, x1, x2, grid, out, out_stride, m, nf0, nf1, nf2, ns, beta, cc, n_t);            \
  }                                                                                                         \
  NARECON_EXPORT(interp_##SUFFIX##_w##NS)

NARECON_FOR_WIDTHS(NARECON_INTERP, f32, float)
NARECON_FOR_WIDTHS(NARECON_INTERP, f64, double)
