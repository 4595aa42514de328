"""Toeplitz embedding of the normal operator A^H W A of the (time-segmented) encoding.

For the plain NUFFT F (forward y_m = sum_j x_j exp(-i 2 pi k_m . r_j)) and real weights c_m,
(F^H diag(c) F x)_j = sum_j' h(r_j - r_j') x_j' with the point-spread function
h(d) = sum_m c_m exp(+i 2 pi k_m . d): a linear convolution, evaluated exactly as a circular
one on the 2N grid (Wajer & Pruessmann 2001; Fessler et al., IEEE TSP 53:3393, 2005). The PSF
on the offsets d = (i - N) fov / N is one adjoint NUFFT onto the 2N grid with a 2 x FOV.

With L time segments (:class:`recon.b0.TimeSegmentedOperator`, A x = sum_l b_l(t_m) F(e_l x),
e_l = exp(-z tau_l)) and per-sample weights W (density weights, voxel volume, a per-sample decay):

    A^H W A = sum_l sum_l' diag(conj e_l) T_ll' diag(e_l'),   T_ll' = F^H diag(W conj(b_l) b_l') F

T_l'l = T_ll'^H, so L (L + 1) / 2 kernels (the FFT of each PSF on the 2N grid) are computed once;
each application then costs 2 L FFTs on the 2N grid and L^2 products there, instead of 2 L NUFFTs
of all samples. Measured in benchmarks/README.md ("Iterative reconstruction").

Kernels of real weights are real: the PSF of real c is Hermitian, h(-d) = conj h(d), on every
offset |d_i| < N the linear convolution of N-point images uses (only the offsets -N of the 2N
grid have no partner, and they never enter the cropped result), so Re FFT(h) is an exact kernel.
Hence (i) the L kernels of the pairs l = l' (weights W |b_l|^2) are stored in the real dtype,
half a complex kernel: memory ((L (L - 1) / 2) x 8 + L x 4) x 8 N^3 bytes per echo in complex64
(72 MiB for L = 3 at 64^3); (ii) the weight functions of all pairs and echoes, functions of the
readout time, are expanded in a real basis (truncated SVD of their real and imaginary parts), and
two real basis functions go through one complex adjoint NUFFT, v_r + i v_r+1, whose kernel's real
and imaginary parts are the two basis kernels: ceil(rank / 2) NUFFTs on the 2N grid (4 for 2
echoes x 3 segments with R2* at 64^3, where rank is 7). Kernels are accumulated one basis NUFFT
at a time, so no basis array is held.

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


def _fft1_module(xp):
    """(fft, ifft) along one axis with zero-padding to ``n`` (scipy.fft threaded on the host, cupy.fft on a GPU)."""
    if xp is np:
        import scipy.fft

        from recon.nufft.operator import default_threads

        w = default_threads()
        return (
            lambda a, n, axis: scipy.fft.fft(a, n=n, axis=axis, workers=w),
            lambda a, axis: scipy.fft.ifft(a, axis=axis, workers=w, overwrite_x=True),
        )
    return (lambda a, n, axis: xp.fft.fft(a, n=n, axis=axis), lambda a, axis: xp.fft.ifft(a, axis=axis))


def padded_fft(x, shape2, xp):
    """FFT on the 2N grid of x (..., N0, N1, N2) zero-padded at the end of each axis, pruned:
    the zero blocks are never transformed (58 % of the work of a full 2N FFT)."""
    fft, _ = _fft1_module(xp)
    a = fft(x, shape2[2], -1)
    a = fft(a, shape2[1], -2)
    return fft(a, shape2[0], -3)


def cropped_ifft(z, shape, xp):
    """The first N0 x N1 x N2 corner of the inverse FFT of z (..., 2N0, 2N1, 2N2), pruned likewise."""
    _, ifft = _fft1_module(xp)
    a = ifft(z, -3)[..., : shape[0], :, :]
    a = ifft(xp.ascontiguousarray(a), -2)[..., : shape[1], :]
    return ifft(xp.ascontiguousarray(a), -1)[..., : shape[2]]


KERNEL_EPS_FACTOR = 10.0
"""The kernel NUFFT runs at this many times the operator's accuracy, but never looser than
:data:`recon.b0.segments.BIN_EPS` (1e-3) nor than the operator: 1e-3 at the default 1e-4 (as the
time bins and the calibration's point-response kernel), 1e-5 at 1e-6. On the 64^3 protocol the
four kernel NUFFTs onto the 128^3 grid are then ~25 % faster (narrower spreading kernel); the
normal operator's error against the exact NUFFT pair is measured in tests/test_iterative_lean.py."""


def kernel_eps(eps: float) -> float:
    """Accuracy of the Toeplitz kernel NUFFT for an operator of accuracy ``eps`` (:data:`KERNEL_EPS_FACTOR`)."""
    from recon.b0.segments import BIN_EPS

    return min(KERNEL_EPS_FACTOR * float(eps), max(float(eps), BIN_EPS))


def kernel_nufft(nufft, plans: Plans | None = None):
    """The NUFFT of ``nufft``'s samples onto the 2N grid with twice the FOV (through ``plans``), at
    :func:`kernel_eps` of its accuracy."""
    shape2 = tuple(2 * s for s in nufft.shape)
    fov2 = tuple(2 * f for f in nufft.fov)
    return plans_or_default(plans).nufft(
        nufft.k, shape2, fov2, backend=nufft.backend_name, device=nufft.device, eps=kernel_eps(nufft.eps), dtype=nufft.dtype
    )


def _shift_half(spec) -> None:
    """Multiply an FFT over the last three (even-length) axes by (-1)^(k0 + k1 + k2), in place: the
    spectrum of the array circularly shifted by half its size on every axis (``ifftshift``), without a copy."""
    spec[..., 1::2, :, :] *= -1
    spec[..., :, 1::2, :] *= -1
    spec[..., 1::2] *= -1


def psf_kernels(op2, weights: np.ndarray) -> np.ndarray:
    """FFT-domain kernels (n, 2N0, 2N1, 2N2) of F^H diag(weights_i) F for weights (n, *kshape).

    ``op2`` is :func:`kernel_nufft` of F. The PSF h_i(d) = sum_m weights_i(m) exp(+i 2 pi k_m . d)
    on the offsets d = (i - N) fov / N is one adjoint NUFFT onto the 2N grid with twice the FOV,
    circularly shifted so that offset 0 is at index 0 (done in the FFT domain, in place), then
    Fourier transformed.
    """
    from recon.device import to_host

    fftn, _ = _fft_module(np)
    h = to_host(op2.adjoint(np.ascontiguousarray(weights, dtype=op2.dtype)))
    k = fftn(h, (-3, -2, -1))
    del h
    _shift_half(k)  # offset 0 -> index 0 (2N even: a shift by N is the sign (-1)^k of the spectrum)
    return k


class ToeplitzNormal(LinearOperator):
    """sum_e A_e^H W_e A_e for time-segmented echo operators, by Toeplitz embedding.

    Parameters
    ----------
    nufft : the plain NUFFT of the trajectory (grid, FOV, accuracy, backend; its k for the kernels).
    terms : one ``(b, weights, e)`` per echo: ``b`` (L, ...) time coefficients broadcastable to
        (L, *kshape), or None (L = 1, b = 1), ``weights`` (*kshape) real non-negative per-sample weights (W |decay|^2 dV ...),
        ``e`` (L, N0, N1, N2) voxel factors exp(-z tau_l) or None.
    plans : plan factory for the kernel NUFFT on the 2N grid.
    base_weights : per-sample weights W (*kshape) shared by all terms; each term's weights are
        then a factor per readout time (or None), and the kernels of all terms and segment
        pairs come from a truncated real SVD of those per-time functions (module docstring):
        ceil(rank / 2) adjoint NUFFTs (4 for 2 echoes x 3 segments with R2* at 64^3) instead of
        one per distinct pair (12).
    rank_tol : singular values below rank_tol x the largest are dropped (default: the NUFFT eps).

    Memory: the kernels of the pairs l = l' in the real dtype; the kernel NUFFT runs one transform
    at a time (one fine grid) and its plan is dropped once the kernels exist.

    ``normal(x)`` for x (..., N0, N1, N2); forward/adjoint are the normal operator itself
    (it is Hermitian), so the contract's shape check applies.
    """

    def __init__(
        self,
        nufft,
        terms: Sequence[tuple],
        plans: Plans | None = None,
        base_weights: np.ndarray | None = None,
        rank_tol: float | None = None,
    ):
        self.nufft = nufft
        self.ishape = self.oshape = tuple(nufft.shape)
        self.oname = "image"
        self.shape2 = tuple(2 * s for s in nufft.shape)
        self._real = np.float32 if nufft.dtype == np.complex64 else np.float64
        kshape = tuple(nufft.kshape)

        def _weights(w):  # the caller's real weights as they are (no float32 copy of float64 ones)
            w = np.asarray(w)
            return w if w.dtype in (np.float32, np.float64) else w.astype(self._real)

        if base_weights is None:  # per-term full weights: each term its own base
            groups = [(_weights(w), [(b, None, e)]) for b, w, e in terms]
        else:
            groups = [(_weights(base_weights), list(terms))]
        self._terms = []
        self.n_psf = 0  # adjoint NUFFTs spent on kernels
        op2 = None
        for base, gterms in groups:
            # the kernel weights of every (echo, segment pair): base(m) x q(t_m), q = tf conj(b_i) b_j
            rows = []
            for b, tf, _e in gterms:
                bb = np.ones((1,) + (1,) * len(kshape), dtype=nufft.dtype) if b is None else np.asarray(b)
                n_seg = bb.shape[0]
                f = 1.0 if tf is None else np.asarray(tf)
                for i in range(n_seg):
                    for j in range(i, n_seg):
                        if i == j and not np.iscomplexobj(f):  # |b_i|^2 W: a real weight function, a real kernel
                            rows.append((bb[i].real ** 2 + bb[i].imag ** 2) * f)
                        else:
                            rows.append(np.conj(bb[i]) * bb[j] * f)
            cshape = np.broadcast_shapes(*(r.shape for r in rows))
            op2 = op2 or kernel_nufft(nufft, plans)
            tol = nufft.eps if rank_tol is None else float(rank_tol)
            kern_u, where = self._group_kernels(op2, base, [np.broadcast_to(r, cshape) for r in rows], tol)
            p = 0
            for b, _tf, e in gterms:
                n_seg = 1 if b is None else len(b)
                n_pair = n_seg * (n_seg + 1) // 2
                ee = None if e is None else np.asarray(e, dtype=nufft.dtype)
                self._terms.append((n_seg, kern_u, where[p : p + n_pair], ee))
                p += n_pair
        del op2  # the 2N-grid plan (its fine grid and sorted points) goes before the solver runs
        self._dev: dict[str, list] = {}

    def _group_kernels(self, op2, base, rows, rank_tol):
        """Kernels of base x q_k for all rows q_k: identical rows computed once; rows defined per
        readout time go through a truncated SVD of [Re Q; Im Q] = U S V^T (real basis functions
        v_r), two of them per adjoint NUFFT, so only ceil(rank / 2) NUFFTs run.

        Returns (list of kernels, one per distinct row: real arrays for real rows, complex
        otherwise; the index of each row's kernel)."""
        nufft = self.nufft
        real, cdt = self._real, np.dtype(nufft.dtype)
        kshape = tuple(nufft.kshape)
        uniq, where = [], []
        for r in rows:
            for u, ur in enumerate(uniq):
                if np.array_equal(ur, r):
                    where.append(u)
                    break
            else:
                where.append(len(uniq))
                uniq.append(r)
        is_real = [not np.iscomplexobj(u) for u in uniq]
        q = np.stack([np.asarray(u, dtype=np.complex128).reshape(-1) for u in uniq])  # (n_u, C)
        kern: list = [np.zeros(self.shape2, dtype=real if is_real[u] else cdt) for u in range(len(uniq))]
        wb = np.broadcast_to(base, kshape)
        if q.shape[1] <= 100_000:  # per readout time: a real low-rank basis, two basis kernels per NUFFT
            qr = np.concatenate([q.real, q.imag])  # (2 n_u, C): Re and Im of every row in one real basis
            u_, s_, vh = np.linalg.svd(qr, full_matrices=False)
            r = max(1, int(np.sum(s_ > rank_tol * s_[0]))) if s_[0] > 0 else 1
            cr = u_[:, :r] * s_[:r]
            coef = cr[: len(uniq)] + 1j * cr[len(uniq) :]  # (n_u, r): q_u = sum_r coef[u, r] v_r, v_r real
            n_nufft = 0
            for r0 in range(0, r, 2):
                # v_r + i v_r+1 in one NUFFT: the kernel of a real weight function is real (its PSF is
                # Hermitian on every offset the convolution uses), so Re and Im are the two kernels
                v = vh[r0] + (1j * vh[r0 + 1] if r0 + 1 < r else 0)
                c = np.multiply(wb, np.asarray(v.reshape(np.shape(uniq[0])), dtype=cdt), dtype=cdt)
                bk = psf_kernels(op2, c[None])[0]
                del c
                n_nufft += 1
                self._accumulate(kern, is_real, coef[:, r0], bk.real)
                if r0 + 1 < r:
                    self._accumulate(kern, is_real, coef[:, r0 + 1], bk.imag)
                del bk
        else:  # per sample: one NUFFT per distinct row
            for u, row in enumerate(uniq):
                c = np.multiply(wb, np.asarray(row, dtype=cdt), dtype=cdt)
                bk = psf_kernels(op2, c[None])[0]
                del c
                onehot = np.zeros(len(uniq), complex)
                onehot[u] = 1
                self._accumulate(kern, is_real, onehot, bk.real if is_real[u] else bk)
                del bk
            n_nufft = len(uniq)
        self.n_psf += n_nufft
        log.debug(
            "Toeplitz kernels: %d weight functions, %d distinct (%d real), %d adjoint NUFFTs on %s",
            len(rows),
            len(uniq),
            sum(is_real),
            n_nufft,
            self.shape2,
        )
        return kern, where

    def _accumulate(self, kern: list, is_real: list, coef, bk) -> None:
        """kern[u] += coef[u] bk for every kernel (real kernels: the real part), in slabs of planes
        so the temporaries stay small; ``bk`` is a real or complex basis kernel on the 2N grid."""
        cdt = np.dtype(self.nufft.dtype)
        slab = max(1, 2**18 // max(1, self.shape2[1] * self.shape2[2]))  # ~2 MB of complex64 per step
        sshape = (slab,) + self.shape2[1:]
        tmp = {np.dtype(self._real): np.empty(sshape, self._real), cdt: np.empty(sshape, cdt)}
        real_bk = not np.iscomplexobj(bk)
        for p0 in range(0, self.shape2[0], slab):
            bs = bk[p0 : p0 + slab]
            n = bs.shape[0]
            for u, k in enumerate(kern):
                cu = complex(coef[u])
                if cu == 0:
                    continue
                ks = k[p0 : p0 + n]
                t = tmp[k.dtype][:n]
                if is_real[u] and real_bk:
                    np.multiply(bs, cu.real, out=t)
                elif is_real[u]:  # Re(cu bk) = Re cu Re bk - Im cu Im bk
                    np.multiply(bs.real, cu.real, out=t)
                    ks += t
                    np.multiply(bs.imag, -cu.imag, out=t)
                else:
                    np.multiply(bs, cdt.type(cu), out=t)
                ks += t

    @property
    def kernel_bytes(self) -> int:
        """Bytes held by the kernels (one array per distinct weight function)."""
        return int(sum({id(k): k.nbytes for _, ks, _, _ in self._terms for k in ks}.values()))

    def _terms_for(self, xp):
        if xp is np:
            return self._terms
        key = xp.__name__
        if key not in self._dev:
            moved: dict[int, object] = {}
            terms = []
            for n_seg, kern, where, ee in self._terms:
                for k in kern:
                    if id(k) not in moved:
                        moved[id(k)] = xp.asarray(k)
                terms.append((n_seg, [moved[id(k)] for k in kern], where, None if ee is None else xp.asarray(ee)))
            self._dev[key] = terms
        return self._dev[key]

    def _normal(self, x, lead):
        xp = get_array_module(x)
        dt = self.nufft.dtype
        x = x.astype(dt, copy=False)
        out = xp.zeros(lead + self.ishape, dtype=dt)
        z = xp.empty(lead + self.shape2, dtype=dt)
        n0 = self.shape2[0]
        # the products are summed in slabs of planes (a ~2 MB work array on the host, not a 2N grid)
        slab = max(1, 2**18 // max(1, self.shape2[1] * self.shape2[2] * int(np.prod(lead)))) if xp is np else n0
        tmp = xp.empty(lead + (min(slab, n0),) + self.shape2[1:], dtype=dt)
        for n_seg, kern, where, ee in self._terms_for(xp):
            # one segment at a time into the spectra (no (L, 2N^3) intermediates of the pruned FFT)
            spec = [padded_fft(x if ee is None else x * ee[j], self.shape2, xp) for j in range(n_seg)]
            idx, p = {}, 0
            for i in range(n_seg):
                for j in range(i, n_seg):
                    idx[(i, j)] = p
                    p += 1
            for i in range(n_seg):
                for p0 in range(0, n0, slab):
                    sl = slice(p0, min(p0 + slab, n0))
                    zs = z[..., sl, :, :]
                    ts = tmp[..., : sl.stop - sl.start, :, :]
                    for j in range(n_seg):
                        k = (kern[where[idx[(i, j)]]] if i <= j else kern[where[idx[(j, i)]]])[sl]
                        dst = zs if j == 0 else ts
                        if i > j and xp.iscomplexobj(k):  # T_ij = T_ji^H: the conjugate kernel
                            xp.conjugate(k, out=dst)
                            xp.multiply(dst, spec[j][..., sl, :, :], out=dst)
                        else:
                            xp.multiply(k, spec[j][..., sl, :, :], out=dst)
                        if j > 0:
                            zs += ts
                zi = cropped_ifft(z, self.ishape, xp)  # may overwrite z (refilled for the next i)
                out += zi if ee is None else zi * xp.conj(ee[i])
            del spec
        return out

    def _forward(self, x, lead):
        return self._normal(x, lead)

    def _adjoint(self, y, lead):
        return self._normal(y, lead)

    def __repr__(self) -> str:
        segs = [t[0] for t in self._terms]
        return f"ToeplitzNormal(shape={self.ishape}, segments per echo={segs}, kernels={self.kernel_bytes / 2**20:.0f} MiB)"
