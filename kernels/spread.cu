// Type-1 spreading: non-uniform samples -> oversampled grid, ES kernel of width ns.
//
// Points arrive sorted into bins (recon/nufft/cupy_backend.py) so neighbouring threads touch
// neighbouring grid cells. Data and grids are interleaved complex (re, im) arrays of T:
//   c    : (n_t, c_stride) complex, sample m of transform t at c[2 (t c_stride + m)]
//   grid : (n_t, nf0, nf1, nf2) complex, C order (axis 2 fastest)
// Batches: each thread evaluates the kernel once and spreads all n_t transforms.
#include "narecon_nufft.cuh"

// GM-sort: one thread per sorted point, atomicAdd straight into global memory.
template <typename T, int NS>
__device__ void spread_gm_impl(const T* __restrict__ x0, const T* __restrict__ x1, const T* __restrict__ x2,
                               const T* __restrict__ c, long long c_stride, int m, T* grid,
                               int nf0, int nf1, int nf2, int ns_rt, T beta, T cc, int n_t) {
  T w0[NARECON_CAP(NS)], w1[NARECON_CAP(NS)], w2[NARECON_CAP(NS)];
  int i0[NARECON_CAP(NS)], i1[NARECON_CAP(NS)], i2[NARECON_CAP(NS)];
  const int ns = NARECON_WIDTH(NS, ns_rt);
  const long long grid_n = (long long)nf0 * nf1 * nf2;
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < m; p += blockDim.x * gridDim.x) {
    es_weights_1d<T, NS>(x0[p], ns, nf0, beta, cc, w0, i0);
    es_weights_1d<T, NS>(x1[p], ns, nf1, beta, cc, w1, i1);
    es_weights_1d<T, NS>(x2[p], ns, nf2, beta, cc, w2, i2);
    for (int t = 0; t < n_t; ++t) {
      const T cr = c[2 * (t * c_stride + p)], ci = c[2 * (t * c_stride + p) + 1];
      T* g = grid + 2 * t * grid_n;
#pragma unroll 1  // keep the code small: only the inner two loops unroll
      for (int a = 0; a < ns; ++a) {
        for (int b = 0; b < ns; ++b) {
          const T wab = w0[a] * w1[b];
          const long long row = ((long long)i0[a] * nf1 + i1[b]) * nf2;
          for (int d = 0; d < ns; ++d) {
            const T v = wab * w2[d];
            atomicAdd(&g[2 * (row + i2[d])], v * cr);
            atomicAdd(&g[2 * (row + i2[d]) + 1], v * ci);
          }
        }
      }
    }
  }
}

// SM: one block per subproblem, i.e. at most max_sub consecutive sorted points of one cubic bin
// of side B (dense bins are split so that no block gets a long tail). The block spreads its
// points into a padded (B + 2h)^3 subgrid in shared memory (h = ceil(ns/2)), then adds the
// subgrid to the global grid with one atomicAdd per non-zero cell. Subproblem q covers sorted
// indices [sub_start[q], sub_start[q] + sub_count[q]) of bin sub_bin[q], clipped to this
// launch's chunk [m_lo, m_hi); x0, x1, x2 and c point at the chunk (index p - m_lo).
template <typename T, int NS>
__device__ void spread_sm_impl(const T* __restrict__ x0, const T* __restrict__ x1, const T* __restrict__ x2,
                               const T* __restrict__ c, long long c_stride, const int* __restrict__ sub_bin,
                               const int* __restrict__ sub_start, const int* __restrict__ sub_count,
                               int nb1, int nb2, int B, int m_lo, int m_hi, T* grid,
                               int nf0, int nf1, int nf2, int ns_rt, T beta, T cc, int n_t) {
  NARECON_DYNAMIC_SHARED(T, sub);  // 2 (B + 2h)^3 values of T, sized at launch
  T w0[NARECON_CAP(NS)], w1[NARECON_CAP(NS)], w2[NARECON_CAP(NS)];
  int i0[NARECON_CAP(NS)], i1[NARECON_CAP(NS)], i2[NARECON_CAP(NS)];
  const int ns = NARECON_WIDTH(NS, ns_rt);
  const int bin = sub_bin[blockIdx.x];
  int s = sub_start[blockIdx.x], e = s + sub_count[blockIdx.x];
  s = (s > m_lo ? s : m_lo) - m_lo;
  e = (e < m_hi ? e : m_hi) - m_lo;
  if (s >= e) return;  // the whole block leaves together
  const int h = (ns + 1) / 2, P = B + 2 * h, P3 = P * P * P;
  const int b0 = bin / (nb1 * nb2), b1 = (bin / nb2) % nb1, b2 = bin % nb2;
  const int o0 = b0 * B - h, o1 = b1 * B - h, o2 = b2 * B - h;  // subgrid origin (global cells)
  const long long grid_n = (long long)nf0 * nf1 * nf2;
  for (int t = 0; t < n_t; ++t) {
    for (int l = threadIdx.x; l < 2 * P3; l += blockDim.x) sub[l] = T(0);
    __syncthreads();
    for (int p = s + threadIdx.x; p < e; p += blockDim.x) {
      const int j0 = es_weights_1d<T, NS>(x0[p], ns, nf0, beta, cc, w0, i0) - o0;
      const int j1 = es_weights_1d<T, NS>(x1[p], ns, nf1, beta, cc, w1, i1) - o1;
      const int j2 = es_weights_1d<T, NS>(x2[p], ns, nf2, beta, cc, w2, i2) - o2;
      const T cr = c[2 * (t * c_stride + p)], ci = c[2 * (t * c_stride + p) + 1];
#pragma unroll 1  // keep the code small: only the inner two loops unroll
      for (int a = 0; a < ns; ++a) {
        for (int b = 0; b < ns; ++b) {
          const T wab = w0[a] * w1[b];
          const int row = ((j0 + a) * P + (j1 + b)) * P + j2;
          for (int d = 0; d < ns; ++d) {
            const T v = wab * w2[d];
            atomicAdd(&sub[2 * (row + d)], v * cr);
            atomicAdd(&sub[2 * (row + d) + 1], v * ci);
          }
        }
      }
    }
    __syncthreads();
    T* g = grid + 2 * t * grid_n;
    for (int l = threadIdx.x; l < P3; l += blockDim.x) {
      const T vr = sub[2 * l], vi = sub[2 * l + 1];
      if (vr == T(0) && vi == T(0)) continue;
      int g0 = (o0 + l / (P * P)) % nf0, g1 = (o1 + (l / P) % P) % nf1, g2 = (o2 + l % P) % nf2;
      g0 += g0 < 0 ? nf0 : 0;
      g1 += g1 < 0 ? nf1 : 0;
      g2 += g2 < 0 ? nf2 : 0;
      const long long gi = ((long long)g0 * nf1 + g1) * nf2 + g2;
      atomicAdd(&g[2 * gi], vr);
      atomicAdd(&g[2 * gi + 1], vi);
    }
    __syncthreads();
  }
}

#define NARECON_SPREAD_GM(SUFFIX, T, NS)                                                                 \
  extern "C" __global__ void spread_gm_##SUFFIX##_w##NS(const T* x0, const T* x1, const T* x2, const T* c, \
                                                        long long c_stride, int m, T* grid, int nf0,        \
                                                        int nf1, int nf2, int ns, T beta, T cc, int n_t) {  \
    spread_gm_impl<T, NS>(x0, x1, x2, c, c_stride, m, grid, nf0, nf1, nf2, ns, beta, cc, n_t);             \
  }                                                                                                         \
  NARECON_EXPORT(spread_gm_##SUFFIX##_w##NS)

#define NARECON_SPREAD_SM(SUFFIX, T, NS)                                                                  \
  extern "C" __global__ void spread_sm_##SUFFIX##_w##NS(                                                 \
      const T* x0, const T* x1, const T* x2, const T* c, long long c_stride, const int* sub_bin,         \
      const int* sub_start, const int* sub_count, int nb1, int nb2, int B, int m_lo, int m_hi, T* grid,  \
      int nf0, int nf1, int nf2, int ns, T beta, T cc, int n_t) {                                        \
    spread_sm_impl<T, NS>(x0, x1, x2, c, c_stride, sub_bin, sub_start, sub_count, nb1, nb2, B, m_lo,     \
                          m_hi, grid, nf0, nf1, nf2, ns, beta, cc, n_t);                                 \
  }                                                                                                       \
  NARECON_EXPORT(spread_sm_##SUFFIX##_w##NS)

NARECON_FOR_WIDTHS(NARECON_SPREAD_GM, f32, float)
NARECON_FOR_WIDTHS(NARECON_SPREAD_GM, f64, double)
NARECON_FOR_WIDTHS(NARECON_SPREAD_SM, f32, float)
NARECON_FOR_WIDTHS(NARECON_SPREAD_SM, f64, double)
