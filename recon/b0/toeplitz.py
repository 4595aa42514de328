"""Toeplitz embedding of the normal operator A^H W A of the (time-segmented) encoding.

For the plain NUFFT F (forward y_m = sum_j x_j exp(-i 2 pi k_m . r_j)) and real weights c_m,
(F^H diag(c) F x)_j = sum_j' h(r_j - r_j') x_j' with the point-spread function
h(d) = sum_m c_m exp(+i 2 pi k_m . d): a linear convolution, evaluated exactly as a circular
one on the 2N grid (Wajer & Pruessmann 2001; Fessler et al., IEEE TSP 53:3393, 2005). The PSF
on the offsets d = (i - N) fov / N is one adjoint NUFFT onto the 2N grid with a 2 x FOV.

With L time segments (:class:`recon.b0.TimeSegmentedOperator`, A x = sum_l b_l(t_m) F(e_l x),
e_l = exp(-z tau_l)) and per-sample weights W (density weights, voxel volume, a per-sample decay):

    A^H W A = sum_l sum_l' diag(conj e_l) T_ll' diag(e_l'),   T_ll' = F^H diag(W conj(b_l) b_l') F

T_l'l = T_ll'^H, so L (L + 1) / 2 kernels (the FFT of each PSF on the 2N grid) are computed once,
by one batched adjoint NUFFT; each application then costs 2 L FFTs on the 2N grid and L^2
products there, instead of 2 L NUFFTs of all samples. Measured in benchmarks/README.md
("Iterative reconstruction"); memory: (L (L + 1) / 2) x 8 N^3 complex values per echo
(16 MB each at 64^3 in complex64).

Several echoes are summed (``ToeplitzNormal`` takes one (b, weights, e) triple per echo);
echoes whose coefficients and weights agree share one set of kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from recon.device import get_array_module
from recon.linop import LinearOperator
from recon.plans import Plans, plans_or_default

log = logging.getLogger(__name__)


def _fft_module(xp):
    """(fftn, ifftn) for the array module: scipy.fft with all threads on the host, cupy.fft on a GPU."""
    if xp is np:
        import scipy.fft

        from recon.nufft.operator import default_threads

        w = default_threads()
        return (
            lambda a, axes: scipy.fft.fftn(a, axes=axes, workers=w, overwrite_x=True),
            lambda a, axes: scipy.fft.ifftn(a, axes=axes, workers=w, overwrite_x=True),
        )
    return (lambda a, axes: xp.fft.fftn(a, axes=axes), lambda a, axes: xp.fft.ifftn(a, axes=axes))


def kernel_nufft(nufft, plans: Plans | None = None):
    """The NUFFT of ``nufft``'s samples onto the 2N grid with twice the FOV (through ``plans``)."""
    shape2 = tuple(2 * s for s in nufft.shape)
    fov2 = tuple(2 * f for f in nufft.fov)
    return plans_or_default(plans).nufft(
        nufft.k, shape2, fov2, backend=nufft.backend_name, device=nufft.device, eps=nufft.eps, dtype=nufft.dtype
    )


def psf_kernels(op2, weights: np.ndarray) -> np.ndarray:
    """FFT-domain kernels (n, 2N0, 2N1, 2N2) of F^H diag(weights_i) F for weights (n, *kshape).

    ``op2`` is :func:`kernel_nufft` of F. The PSF h_i(d) = sum_m weights_i(m) exp(+i 2 pi k_m . d)
    on the offsets d = (i - N) fov / N is one adjoint NUFFT onto the 2N grid with twice the FOV,
    circularly shifted so that offset 0 is at index 0, then Fourier transformed.
    """
    from recon.device import to_host

    fftn, _ = _fft_module(np)
    h = to_host(op2.adjoint(np.ascontiguousarray(weights, dtype=op2.dtype)))
    h = np.fft.ifftshift(h, axes=(-3, -2, -1))  # offset 0 -> index 0 (2N even: shift by N)
    return fftn(h, (-3, -2, -1))


class ToeplitzNormal(LinearOperator):
    """sum_e A_e^H W_e A_e for time-segmented echo operators, by Toeplitz embedding.

    Parameters
    ----------
    nufft : the plain NUFFT of the trajectory (grid, FOV, accuracy, backend; its k for the kernels).
    terms : one ``(b, weights, e)`` per echo: ``b`` (L, ...) time coefficients broadcastable to
        (L, *kshape), or None (L = 1, b = 1), ``weights`` (*kshape) real non-negative per-sample weights (W |decay|^2 dV ...),
        ``e`` (L, N0, N1, N2) voxel factors exp(-z tau_l) or None.
    plans : plan factory for the kernel NUFFT on the 2N grid.

    ``normal(x)`` for x (..., N0, N1, N2); forward/adjoint are the normal operator itself
    (it is Hermitian), so the contract's shape check applies.
    """

    def __init__(self, nufft, terms: Sequence[tuple], plans: Plans | None = None):
        self.nufft = nufft
        self.ishape = self.oshape = tuple(nufft.shape)
        self.oname = "image"
        self.shape2 = tuple(2 * s for s in nufft.shape)
        self._terms = []
        cache: list[tuple] = []  # (b, weights, kernels) already computed
        op2 = None
        for b, weights, e in terms:
            w = np.broadcast_to(np.asarray(weights, dtype=np.float64), tuple(nufft.kshape))
            bb = np.ones((1,) + (1,) * len(nufft.kshape), dtype=nufft.dtype) if b is None else np.asarray(b)
            n_seg = bb.shape[0]
            kern = None
            for b_c, w_c, k_c in cache:
                if b_c.shape == bb.shape and np.array_equal(b_c, bb) and np.array_equal(w_c, w):
                    kern = k_c
                    break
            if kern is None:
                pairs = [(i, j) for i in range(n_seg) for j in range(i, n_seg)]
                kern = np.empty((len(pairs),) + self.shape2, dtype=nufft.dtype)
                wr = w.astype(np.float32 if nufft.dtype == np.complex64 else np.float64)
                op2 = op2 or kernel_nufft(nufft, plans)
                step = 2  # weights of two pairs at a time (each a full sample array; the fine grid x 2)
                for s0 in range(0, len(pairs), step):
                    c = np.stack([wr * (np.conj(bb[i]) * bb[j]) for i, j in pairs[s0 : s0 + step]])
                    kern[s0 : s0 + step] = psf_kernels(op2, c)
                cache.append((bb, w, kern))
                log.debug("Toeplitz kernels: %d segment pairs on %s", len(pairs), self.shape2)
            ee = None if e is None else np.asarray(e, dtype=nufft.dtype)
            self._terms.append((n_seg, kern, ee))
        self._dev: dict[str, list] = {}

    @property
    def kernel_bytes(self) -> int:
        """Bytes held by the distinct kernels."""
        seen = {id(k): k.nbytes for _, k, _ in self._terms}
        return int(sum(seen.values()))

    def _terms_for(self, xp):
        if xp is np:
            return self._terms
        key = xp.__name__
        if key not in self._dev:
            moved = {}
            terms = []
            for n_seg, kern, ee in self._terms:
                if id(kern) not in moved:
                    moved[id(kern)] = xp.asarray(kern)
                terms.append((n_seg, moved[id(kern)], None if ee is None else xp.asarray(ee)))
            self._dev[key] = terms
        return self._dev[key]

    def _normal(self, x, lead):
        xp = get_array_module(x)
        fftn, ifftn = _fft_module(xp)
        n0, n1, n2 = self.ishape
        axes = (-3, -2, -1)
        x = x.astype(self.nufft.dtype, copy=False)
        out = xp.zeros(lead + self.ishape, dtype=self.nufft.dtype)
        for n_seg, kern, ee in self._terms_for(xp):
            pad = xp.zeros(lead + (n_seg,) + self.shape2, dtype=self.nufft.dtype)
            for j in range(n_seg):
                pad[..., j, :n0, :n1, :n2] = x if ee is None else x * ee[j]
            spec = fftn(pad, axes)  # (..., L, 2N0, 2N1, 2N2)
            idx = {}
            p = 0
            for i in range(n_seg):
                for j in range(i, n_seg):
                    idx[(i, j)] = p
                    p += 1
            for i in range(n_seg):
                z = xp.zeros(lead + self.shape2, dtype=self.nufft.dtype)
                for j in range(n_seg):
                    if i <= j:
                        z += kern[idx[(i, j)]] * spec[..., j, :, :, :]
                    else:
                        z += xp.conj(kern[idx[(j, i)]]) * spec[..., j, :, :, :]
                zi = ifftn(z, axes)[..., :n0, :n1, :n2]
                out += zi if ee is None else zi * xp.conj(ee[i])
        return out

    def _forward(self, x, lead):
        return self._normal(x, lead)

    def _adjoint(self, y, lead):
        return self._normal(y, lead)

    def __repr__(self) -> str:
        segs = [t[0] for t in self._terms]
        return f"ToeplitzNormal(shape={self.ishape}, segments per echo={segs}, kernels={self.kernel_bytes / 2**20:.0f} MiB)"
