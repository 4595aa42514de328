"""Tube values from a model of the point response, not from erosion.

A calibration tube is a uniform cylinder (radius R, length L, axis a, centre r_c). Its image is the
cylinder seen through the point response of the actual acquisition and reconstruction: the exact
Fourier transform of the cylinder,

    F(k) = exp(-i 2 pi k . r_c) * pi R^2 * 2 J1(2 pi rho R) / (2 pi rho R) * L sinc(k_par L),
    k_par = k . a,  rho = |k - k_par a|,

evaluated at the trajectory's sample positions k_m, weighted by the tube's decay over the readout
exp(-t_m / T2*) (t_m from the first ADC sample at TE; the factor at TE and the T1 saturation are
common to the whole tube and go into its amplitude), and reconstructed exactly as the data were
(density-compensated gridding with the same weights and NUFFT). This *template* T_i(r) is the image
of a tube of unit value. It is evaluated as what it is, the convolution of the cylinder with the
system's point response p(r) = sum_m w_m d(t_m) exp(+i 2 pi k_m . r): p is gridded once per tube
T2* onto a box of twice the matrix (every voxel difference is then a sample of p; cached in the
plans, so a batch worker builds it once per protocol, and on disk by the protocol's content,
:mod:`recon.calibrate.kernel_cache`, so the next run of a protocol reads it), and each template is one FFT product with
the cylinder's closed-form transform on the box's Cartesian frequencies (exact up to the wrap of
the band-limited cylinder's tails, < 1e-3 of the peak; :meth:`SystemModel.template` with
``exact=True`` grids the transform at the samples instead, the tested reference). The geometry
refinement uses windows of about twice the tube's neighbourhood. The image near tube i is modelled as

    S(r) = sum_j A_j T_j(r) + p_i(r)        (r in the neighbourhood of tube i)

with p_i a low-order (linear) polynomial background that takes what neighbours (the head's blurred
tail and ringing, the fast-T2* component's wide point response) spill in. Voxels of other objects
(the head, with one voxel of margin) are left out of every neighbourhood. The amplitudes A_j and
background coefficients come from one linear least-squares fit; each tube's geometry (centre and
radius; axis and length stay at their moment estimates) comes from a small nonlinear fit
(:func:`scipy.optimize.least_squares`, variable projection: the linear parameters are solved
inside). A_j is the signal a large object of the tube's concentration and relaxation would give:
the calibration line is fitted through (C_j, A_j). The recovery coefficient recorded per tube is
the mean template value over the eroded ROI the erosion method would use (1 = no partial volume).

Regime (what this covers; :data:`MIN_RADIUS_VOX`, :data:`SUPPORTED_RADIUS_VOX`): uniform tubes of
radius >= 2 voxels (1.5-2 voxels work with a warning; below 1.5 voxels the fit is not trusted) that
lie entirely inside the alias-free sphere (radius FOV / 2 / sqrt(angular undersampling)) and at
least one voxel clear of the head, raw-data SNR >= ~50 (the template is noise-free; noise only
adds variance to A_j). Off-resonance inside the tube is not modelled (the B0-corrected image is
used); tubes are assumed mono-exponential with the preset saline T2* unless given.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage, special

from recon.errors import CalibrationError

log = logging.getLogger("recon.calibrate")

MIN_RADIUS_VOX = 1.5
"""Below this tube radius (voxels) the model fit is not trusted (warning)."""
SUPPORTED_RADIUS_VOX = 2.0
"""Tubes of at least this radius (voxels) are inside the validated regime; 1.5-2 voxels warn."""
NEIGHBOURHOOD_VOX = 1.5
"""The fit neighbourhood reaches this many voxels beyond the tube wall and ends."""
BACKGROUND_ORDER = 1
"""Polynomial order of the local background (0: constant, 1: linear)."""
HEAD_CLEARANCE_VOX = 2.0
"""Warn when the tube wall is closer than this (voxels) to another object (overlap in the point response)."""
KERNEL_EPS = 1e-3
"""NUFFT accuracy of the point-response kernel (:meth:`SystemModel.kernel`). At the 64^3 protocol its
largest error is 2.6e-5 of the kernel's peak (7e-6 at 1e-4, against a 1e-6 reference): far below the
template tolerance (1e-3 of the peak), and the 2N-box adjoint's kernel is 5 points wide instead of 7
(about 30 % less time)."""


@dataclasses.dataclass
class SystemModel:
    """What the calibration needs to know about the acquisition and reconstruction.

    Attributes
    ----------
    k : (n_proj, n_samp, 3) sample positions in cycles/m (the projections that were reconstructed).
    t_s : (n_samp,) or (n_proj, n_samp) sample times from the first ADC sample (s).
    dcf : (n_proj, n_samp) density weights in 1/m^3 used by the gridding.
    te_s : echo times (s). tr_s : repetition time (s). flip_deg : flip angle (degrees).
    matrix : image matrix (3 ints). fov_m : field of view (3 floats, m).
    undersampling : angular undersampling factor of the trajectory (1 = Nyquist).
    plans : a :class:`recon.plans.Plans` (NUFFT factory) or None for the default.
    tube_t2star_s : T2* of the tubes (s; default: the saline preset).
    eps : NUFFT accuracy of the exact templates.
    kernel_eps : NUFFT accuracy of the point-response kernel of the fast templates (:data:`KERNEL_EPS`).
    object_edge_m : Gaussian SD (m) of the tube wall's blur (0 for real, sharp-walled tubes; the
        simulator blurs every boundary by its ``edge_mm``, recorded in truth.json).
    """

    k: np.ndarray
    t_s: np.ndarray
    dcf: np.ndarray
    te_s: tuple
    tr_s: float
    flip_deg: float
    matrix: tuple
    fov_m: tuple
    undersampling: float = 1.0
    plans: Any = None
    tube_t2star_s: float | None = None
    eps: float = 1e-4
    object_edge_m: float = 0.0
    kernel_eps: float = KERNEL_EPS
    k_identity: str | None = None
    """Content key of k and t when known (:meth:`Trajectory.content_key`: a built-in design's identity or
    the trajectory's one digest): the kernel's cache keys then skip hashing k (0.1-0.15 s at 64^3)."""

    def __post_init__(self) -> None:
        self.k = np.asarray(self.k)
        if self.k.ndim != 3 or self.k.shape[-1] != 3:
            raise CalibrationError(f"system model: k must have shape (n_proj, n_samp, 3), got {self.k.shape}")
        self.dcf = np.asarray(self.dcf)
        if self.dcf.shape != self.k.shape[:-1]:
            raise CalibrationError(f"system model: dcf shape {self.dcf.shape} differs from k {self.k.shape[:-1]}")
        self.matrix = tuple(int(m) for m in np.broadcast_to(np.asarray(self.matrix), (3,)))
        self.fov_m = tuple(float(f) for f in np.broadcast_to(np.asarray(self.fov_m, dtype=float), (3,)))
        self._op = None
        self._kernels: dict[Any, np.ndarray] = {}
        self._kernel_images: dict[float, np.ndarray] = {}

    @classmethod
    def from_trajectory(cls, traj, dcf, te_s, tr_s, flip_deg, *, matrix=None, plans=None, **kw) -> SystemModel:
        """From a :class:`recon.trajectory.Trajectory` (its undersampling parameter when recorded)."""
        us = float((traj.params or {}).get("undersampling", 1.0) or 1.0)
        return cls(
            k=traj.k,
            t_s=np.asarray(traj.t),
            dcf=dcf,
            te_s=tuple(te_s),
            tr_s=float(tr_s),
            flip_deg=float(flip_deg),
            matrix=tuple(matrix or traj.matrix),
            fov_m=tuple(traj.fov_m),
            undersampling=us,
            plans=plans,
            **({"k_identity": traj.content_key()} | kw),
        )

    @property
    def voxel_m(self) -> np.ndarray:
        return np.asarray(self.fov_m) / np.asarray(self.matrix)

    @property
    def alias_free_radius_m(self) -> float:
        """Radius of the sphere supported without aliasing: min(FOV) / 2 / sqrt(undersampling)."""
        return 0.5 * min(self.fov_m) / math.sqrt(max(self.undersampling, 1.0))

    def nufft(self):
        if self._op is None:
            from recon.plans import plans_or_default

            self._op = plans_or_default(self.plans).nufft(self.k, self.matrix, self.fov_m, eps=self.eps)
        return self._op

    def decay_weights(self, t2star_s: float) -> np.ndarray:
        """exp(-t / T2*) over the readout, (n_proj, n_samp)."""
        t = np.broadcast_to(np.asarray(self.t_s, dtype=np.float64), self.k.shape[:-1])
        return np.exp(-t / float(t2star_s))

    def kernel_image(self, t2star_s: float) -> np.ndarray:
        """The system's point response for a pool of T2* ``t2star_s`` on the 2N box (image, complex64).

        ``p(r) = sum_m w_m d(t_m) exp(+i 2 pi k_m . r)`` (w the density weights, d the decay over the
        readout) is the gridding reconstruction of a unit point at the origin. It is computed once per
        T2* by one adjoint NUFFT onto a grid of twice the matrix (voxel unchanged, FOV doubled), so that
        every difference of two voxel positions of the image is sampled (r = 0 at index N); cached per
        T2* in memory (the plans) and on disk per protocol (:mod:`recon.calibrate.kernel_cache`).
        """
        key = float(t2star_s)
        hit = self._kernel_images.get(key)
        if hit is not None:
            return hit
        from recon.plans import array_digest, plans_or_default

        def build() -> np.ndarray:
            from recon.calibrate.kernel_cache import cached_kernel, kernel_key

            def disk_key() -> str:
                k = self.k if self.k_identity is None else None
                return kernel_key(k, self.dcf, self.t_s, self.matrix, self.fov_m, self.kernel_eps, key, k_identity=self.k_identity)

            box = tuple(2 * m for m in self.matrix)
            out, how = cached_kernel(disk_key, box, lambda: self._build_kernel(key))
            log.debug("point-response kernel (T2* %.1f ms): %s", key * 1e3, how)
            return out

        def cache_key() -> tuple:
            ident = (
                (self.k_identity,) if self.k_identity is not None else (array_digest(self.k), array_digest(np.asarray(self.t_s)))
            )
            return (*ident, array_digest(self.dcf), self.matrix, self.fov_m, float(self.kernel_eps), key)

        p = plans_or_default(self.plans).get("psf", cache_key, build)
        self._kernel_images[key] = p
        return p

    def kernel(self, t2star_s: float) -> np.ndarray:
        """Spectrum of :meth:`kernel_image` on the 2N box, in numpy's FFT order (complex64).

        Computed on first use from the image (one 2N-box FFT) and kept per T2*; the default tube fit
        uses windowed templates (:meth:`template` with ``window``) and never needs it.
        """
        key = float(t2star_s)
        hit = self._kernels.get(key)
        if hit is not None:
            return hit
        from scipy import fft as sfft

        spec = sfft.fftn(sfft.ifftshift(self.kernel_image(key)), workers=_workers()).astype(np.complex64)
        self._kernels[key] = spec
        return spec

    def _build_kernel(self, t2star_s: float) -> np.ndarray:
        """The point response on the 2N box (:meth:`kernel_image`); one adjoint NUFFT."""
        from recon.nufft import NUFFT
        from recon.nufft.operator import gridding

        box = tuple(2 * m for m in self.matrix)
        fov2 = tuple(2 * f for f in self.fov_m)
        op2 = NUFFT(self.k, box, fov2, eps=self.kernel_eps)  # used once: not kept in the plan cache
        w = self.decay_weights(t2star_s).astype(np.float32)
        p = np.asarray(gridding(op2, w.astype(op2.dtype), self.dcf)).astype(np.complex64)
        del op2
        return p

    def _patch_kernel(self, t2star_s: float, box: tuple) -> np.ndarray:
        """Spectrum of the point response cropped to ``box`` (even sizes <= 2N) about the origin."""
        key = (float(t2star_s), box)
        hit = self._kernels.get(key)
        if hit is not None:
            return hit
        from scipy import fft as sfft

        p = self.kernel_image(t2star_s)
        sl = tuple(slice(m - g // 2, m - g // 2 + g) for m, g in zip(self.matrix, box))  # r = 0 at index N
        spec = sfft.fftn(sfft.ifftshift(p[sl]), workers=_workers()).astype(np.complex64)
        self._kernels[key] = spec
        return spec

    def template(
        self,
        centre_img_m,
        axis_img,
        radius_m: float,
        length_m: float,
        t2star_s: float,
        derivatives: bool = False,
        exact: bool = False,
        window: tuple | None = None,
    ) -> np.ndarray:
        """Real image (matrix) of a uniform cylinder of value 1 through the system (module docstring).

        ``centre_img_m`` is in image metres (voxel i at (i - N//2) * dx per axis), ``axis_img`` a unit
        vector in image axes. With ``derivatives`` returns (5, *matrix): the template and its
        derivatives with respect to the centre (3, per m) and the radius (per m).

        Default (fast) path: the gridding reconstruction of the cylinder is the convolution of its
        band-limited samples with the point response p, evaluated as a circular convolution on the
        2N box: ``T = IFFT(P * F(k_q))`` with P = :meth:`kernel` and F the cylinder's closed-form
        transform at the box's Cartesian frequencies k_q. Every voxel difference of the image is a
        sample of p, so the only approximation is the wrap of the band-limited cylinder's tails
        across the box (measured < 1e-3 of the template's peak, tests/test_calibrate_model.py).
        ``exact`` evaluates F at the trajectory's samples and grids them with the NUFFT instead
        (one adjoint per call: the reference the fast path is tested against).

        ``window`` ((lo, hi) voxel index bounds per axis, hi exclusive) asks for the template only
        there (zero elsewhere): the convolution then runs on a box of about twice the window with the
        point response cropped to it, exact for every pair of voxels inside the window (the cylinder
        must lie inside it). The geometry refinement uses this; the final fit the whole box.
        """
        if exact:
            return self._template_exact(centre_img_m, axis_img, radius_m, length_m, t2star_s, derivatives)
        from scipy import fft as sfft

        n = self.matrix
        vox = self.voxel_m
        c = np.asarray(centre_img_m, dtype=np.float64)
        box, origin, dest, src = _layout(n, window)
        if window is None:
            P = self.kernel(t2star_s)
        else:
            P = self._patch_kernel(t2star_s, box)
        # box index j <-> r = r0 + (j - G//2) dx after fftshift, r0 the position of image voxel origin
        r0 = (np.asarray(origin) - np.asarray(n) // 2) * vox
        fx, fy, fz = (np.fft.fftfreq(g, d=float(vox[d])).astype(np.float32) for d, g in enumerate(box))
        kx, ky, kz = fx[:, None, None], fy[None, :, None], fz[None, None, :]
        a = np.asarray(axis_img, dtype=np.float64)
        a = (a / np.linalg.norm(a)).astype(np.float32)
        ft, dR = _box_spectrum((kx, ky, kz), a, float(radius_m), float(length_m), self.object_edge_m, derivatives)
        cr = c - r0
        ph = (
            np.exp(-2j * np.pi * fx * cr[0]).astype(np.complex64)[:, None, None]
            * np.exp(-2j * np.pi * fy * cr[1]).astype(np.complex64)[None, :, None]
            * np.exp(-2j * np.pi * fz * cr[2]).astype(np.complex64)[None, None, :]
        )
        base = P * ph

        # fftshift(img)[src] read straight from img: index j of the shifted box is (j - G // 2) mod G
        take = np.ix_(*[(np.arange(sl.start, sl.stop) - g // 2) % g for sl, g in zip(src, box)])

        def image(spec: np.ndarray, out: np.ndarray) -> None:
            img = sfft.ifftn(spec, workers=_workers(), overwrite_x=True)
            out[dest] = np.real(img[take])

        nf = 5 if derivatives else 1
        out = np.zeros((nf,) + n, dtype=np.float64)
        bf = base * ft
        if derivatives:
            image(bf.copy(), out[0])
            for j, kj in enumerate((kx, ky, kz)):
                image(bf * (-2j * np.pi * kj).astype(np.complex64), out[1 + j])
            image(base * dR, out[4])
            return out
        image(bf, out[0])
        return out[0]

    def _template_exact(self, centre_img_m, axis_img, radius_m, length_m, t2star_s, derivatives) -> np.ndarray:
        """:meth:`template` by the NUFFT at the trajectory's samples (the reference)."""
        from recon.nufft.operator import gridding

        op = self.nufft()
        kf = self.k.reshape(-1, 3).astype(np.float32)
        a = np.asarray(axis_img, dtype=np.float32)
        a = a / np.linalg.norm(a)
        kp = kf @ a
        k2 = (kf**2).sum(1)
        ft, dR = _cylinder_spectrum(kp, k2, float(radius_m), float(length_m), self.object_edge_m, derivatives)
        ph = np.exp(-2j * np.pi * (kf @ np.asarray(centre_img_m, dtype=np.float32))).astype(np.complex64)
        w = (self.decay_weights(t2star_s).reshape(-1)).astype(np.float32)
        base = ph * (ft * w)
        if not derivatives:
            d = base.reshape(self.k.shape[:-1])
            return np.real(np.asarray(gridding(op, d.astype(op.dtype), self.dcf))).astype(np.float64)
        batch = np.empty((5, kf.shape[0]), dtype=np.complex64)
        batch[0] = base
        for j in range(3):
            batch[1 + j] = base * (-2j * np.pi * kf[:, j])
        batch[4] = ph * (dR * w)
        img = gridding(op, batch.reshape((5,) + self.k.shape[:-1]).astype(op.dtype), self.dcf)
        return np.real(np.asarray(img)).astype(np.float64)


_PAD = 8
"""Extra voxels on each side of a windowed template's box (the cropped point response's reach; 6e-4 of the peak at 64^3)."""


def _layout(n: tuple, window: tuple | None):
    """Box sizes, origin voxel and the (image, box) slices of the convolution (:meth:`SystemModel.template`)."""
    from scipy import fft as sfft

    if window is None:
        box = tuple(2 * m for m in n)
        origin = tuple(m // 2 for m in n)  # r = 0 at box index G//2 = N
        dest = tuple(slice(0, m) for m in n)
        src = tuple(slice(m - m // 2, m - m // 2 + m) for m in n)  # box index of image voxel i: i - N//2 + N
        return box, origin, dest, src
    box, origin, dest, src = [], [], [], []
    for m, (lo, hi) in zip(n, window):
        lo, hi = max(int(lo), 0), min(int(hi), m)
        e = hi - lo
        g = sfft.next_fast_len(2 * e + 2 + 2 * _PAD, real=False)
        g += g % 2
        if g > 2 * m:
            g = 2 * m
        mid = (lo + hi) // 2
        origin.append(mid)
        box.append(g)
        dest.append(slice(lo, hi))
        src.append(slice(lo - mid + g // 2, hi - mid + g // 2))
    return tuple(box), tuple(origin), tuple(dest), tuple(src)


def _workers() -> int:
    from recon.util import available_cpus

    return available_cpus()


def _box_spectrum(ks: tuple, a: np.ndarray, radius_m: float, length_m: float, edge_m: float, derivatives: bool):
    """:func:`_cylinder_spectrum` on a Cartesian box (``ks`` the three broadcastable frequency axes).

    A tube along an image axis is a disc times a segment: its transform is evaluated on the 2D
    plane and the 1D axis and broadcast (exact; N^2 + N Bessel evaluations instead of N^3).
    """
    aligned = np.nonzero(np.abs(a) >= 1.0 - 1e-9)[0]
    if len(aligned) != 1:
        return _tilted_box_spectrum(ks, a, radius_m, length_m, edge_m, derivatives)
    d = int(aligned[0])
    perp = [ks[j] for j in range(3) if j != d]
    kr2 = perp[0] ** 2 + perp[1] ** 2
    kd = ks[d]
    disc, ddisc = _cylinder_spectrum(np.zeros_like(kr2), kr2, radius_m, 1.0, edge_m, derivatives)  # L=1: no axial factor
    axial = (length_m * np.sinc(kd * length_m)).astype(np.float32)
    if edge_m > 0:
        axial = axial * np.exp(-2 * np.pi**2 * edge_m**2 * kd**2).astype(np.float32)
    # _cylinder_spectrum with L = 1 and kp = 0 returns pi R^2 jinc * sinc(0) * edge(k_perp)
    ft = disc * axial
    return ft, (None if ddisc is None else ddisc * axial)


def _tilted_box_spectrum(ks: tuple, a: np.ndarray, radius_m: float, length_m: float, edge_m: float, derivatives: bool):
    """:func:`_cylinder_spectrum` of a tilted tube on the box, evaluated on half of it.

    A cylinder centred at the origin has an even transform, F(-k) = F(k), and numpy's frequency
    axes hold exact negatives (index j and G - j), so the upper half of the last axis is the point
    reflection of the lower half (bit-identical: the same float operations on negated inputs).
    Only the Nyquist planes of the first two axes (whose negatives are not on the grid) are
    evaluated directly. Half the Bessel evaluations of the direct N^3 path (the calibration's
    largest cost).
    """

    def direct(kx, ky, kz):
        kp = kx * a[0] + ky * a[1] + kz * a[2]
        k2 = kx**2 + ky**2 + kz**2
        return _cylinder_spectrum(kp, k2, radius_m, length_m, edge_m, derivatives)

    kx, ky, kz = (np.asarray(k) for k in ks)
    g0, g1, g2 = kx.shape[0], ky.shape[1], kz.shape[2]
    if g0 % 2 or g1 % 2 or g2 % 2 or g2 < 4:
        return direct(kx, ky, kz)
    h = g2 // 2 + 1
    halves = direct(kx, ky, kz[..., :h])
    up = kz[..., h:]
    idx = np.ix_((-np.arange(g0)) % g0, (-np.arange(g1)) % g1, np.arange(g2 - h, 0, -1))
    nyq0 = direct(kx[g0 // 2 : g0 // 2 + 1], ky, up)
    nyq1 = direct(kx, ky[:, g1 // 2 : g1 // 2 + 1], up)
    out = []
    for j, half in enumerate(halves):
        if half is None:
            out.append(None)
            continue
        full = np.empty((g0, g1, g2), dtype=half.dtype)
        full[:, :, :h] = half
        full[:, :, h:] = half[idx]
        full[g0 // 2, :, h:] = nyq0[j][0]
        full[:, g1 // 2, h:] = nyq1[j][:, 0]
        out.append(full)
    return out[0], out[1]


def _cylinder_spectrum(kp, k2, radius_m: float, length_m: float, edge_m: float, derivatives: bool):
    """Closed-form transform of a uniform cylinder at the origin (axis along kp's direction).

    ``kp`` the frequency along the axis and ``k2`` the squared frequency (cycles/m; any broadcastable
    shapes). Returns (F, dF/dR) (dF/dR None unless ``derivatives``), float32, m^3 (and m^2).
    """
    rho = np.sqrt(np.maximum(k2 - kp**2, 0.0))
    x = (2 * np.pi * radius_m) * rho
    safe = np.where(x > 1e-6, x, 1.0)
    jinc = np.where(x > 1e-6, 2 * special.j1(safe) / safe, 1.0)
    axial = length_m * np.sinc(kp * length_m)
    if edge_m > 0:
        axial = axial * np.exp(-2 * np.pi**2 * edge_m**2 * k2)
    ft = ((np.pi * radius_m**2) * jinc * axial).astype(np.float32)
    if not derivatives:
        return ft, None
    dR = ((2 * np.pi * radius_m) * special.j0(x) * axial).astype(np.float32)
    return ft, dR


@dataclasses.dataclass
class TubeGeometry:
    """Geometry of one tube in image metres (centre), image axes (axis), m (radius, length)."""

    centre_img_m: np.ndarray
    axis_img: np.ndarray
    radius_m: float
    length_m: float


def _img_coords(shape) -> list[np.ndarray]:
    return [np.arange(n) - n // 2 for n in shape]


def geometry_from_tube(tube, affine: np.ndarray, sm: SystemModel) -> TubeGeometry:
    """Image-space geometry of a detected/specified :class:`~recon.calibrate.tubes.Tube`."""
    vox = sm.voxel_m
    c = (np.asarray(tube.centre_vox, dtype=np.float64) - np.asarray(sm.matrix) // 2) * vox
    ax_ras = getattr(tube, "axis_ras", None)
    if ax_ras is None:
        ax_ras = (0.0, 0.0, 1.0)
    lin = np.linalg.inv(np.asarray(affine, dtype=np.float64)[:3, :3])  # RAS mm -> voxel index
    a = (lin @ np.asarray(ax_ras, dtype=np.float64)) * vox
    a = a / np.linalg.norm(a)
    length = tube.length_mm if tube.length_mm else 2 * tube.radius_mm
    return TubeGeometry(c, a, float(tube.radius_mm) * 1e-3, float(length) * 1e-3)


def _near(shape: tuple, vox: np.ndarray, g: TubeGeometry, margin_m: float) -> np.ndarray:
    """Flat indices (ascending, C order) of the voxels of the box that holds the cylinder plus ``margin_m``.

    Every voxel within ``margin_m`` of the cylinder is in it (its bounding sphere, one voxel of slack),
    so a selection over these indices equals the same selection over the whole grid, in the same order.
    """
    n = np.asarray(shape)
    c = np.asarray(g.centre_img_m, dtype=np.float64) / vox + n // 2
    e = (math.hypot(g.length_m / 2, g.radius_m) + margin_m) / vox + 1.0
    lo = np.clip(np.floor(c - e).astype(int), 0, n)
    hi = np.clip(np.ceil(c + e).astype(int) + 1, 0, n)
    ranges = [np.arange(a, b) for a, b in zip(lo, hi)]
    if any(r.size == 0 for r in ranges):
        return np.zeros(0, dtype=np.intp)
    return np.ravel_multi_index(np.meshgrid(*ranges, indexing="ij"), shape).ravel()


def _cyl_dist(pts: np.ndarray, g: TubeGeometry) -> np.ndarray:
    """Distance (m) outside the cylinder (0 inside) for points (n, 3) in image metres."""
    u = pts - g.centre_img_m
    along = u @ g.axis_img
    perp = np.sqrt(np.maximum((u**2).sum(-1) - along**2, 0.0))
    dr = np.maximum(perp - g.radius_m, 0.0)
    dz = np.maximum(np.abs(along) - g.length_m / 2, 0.0)
    return np.sqrt(dr**2 + dz**2)


def _clearance(
    others: np.ndarray, shape: tuple, centre: np.ndarray, vox: np.ndarray, g: TubeGeometry, reach_m: float
) -> float | None:
    """Smallest distance (m) from a voxel inside the cylinder to a voxel of ``others``; None when no voxel is inside.

    The distance transform runs on the cylinder's box grown by ``reach_m`` + one voxel, not on the whole
    grid: a gap below ``reach_m`` has its nearest other voxel inside that box, so it is exact there, and
    a larger gap comes out at least ``reach_m`` (the nearest voxel in the box is no nearer than the true
    one), which is all a comparison with ``reach_m`` needs.
    """
    c = np.asarray(g.centre_img_m, dtype=np.float64) / vox + centre
    e = (math.hypot(g.length_m / 2, g.radius_m) + reach_m) / vox + 2.0
    lo = np.clip(np.floor(c - e).astype(int), 0, shape)
    hi = np.clip(np.ceil(c + e).astype(int) + 1, 0, shape)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pts = np.stack(np.meshgrid(*[(np.arange(a, b) - m) * v for a, b, m, v in zip(lo, hi, centre, vox)], indexing="ij"), -1)
    inside = _cyl_inside(pts.reshape(-1, 3), g, 0.0).reshape(pts.shape[:3])
    if not inside.any():
        return None
    sub = others[box]
    if not sub.any():
        return math.inf
    return float(ndimage.distance_transform_edt(~sub, sampling=vox)[inside].min())


def _cyl_inside(pts: np.ndarray, g: TubeGeometry, shrink_m: float = 0.0) -> np.ndarray:
    u = pts - g.centre_img_m
    along = u @ g.axis_img
    perp2 = (u**2).sum(-1) - along**2
    return (perp2 <= max(g.radius_m - shrink_m, 0.0) ** 2) & (np.abs(along) <= max(g.length_m / 2 - shrink_m, 0.0))


@dataclasses.dataclass
class ModelFit:
    """Per-tube results of the model fit (what calibration.json records)."""

    amplitude: float
    amplitude_se: float | None
    recovery: float
    background_at_centre: float
    background_gradient_per_mm: list
    residual_rms: float
    n_voxels: int
    geometry: TubeGeometry
    nfev: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "amplitude": self.amplitude,
            "amplitude_se": self.amplitude_se,
            "recovery_coefficient": self.recovery,
            "background_at_centre": self.background_at_centre,
            "background_gradient_per_mm": self.background_gradient_per_mm,
            "residual_rms": self.residual_rms,
            "n_voxels": self.n_voxels,
            "fitted_radius_mm": self.geometry.radius_m * 1e3,
            "fitted_length_mm": self.geometry.length_m * 1e3,
            "fitted_centre_image_mm": (self.geometry.centre_img_m * 1e3).tolist(),
            "function_evaluations": self.nfev,
        }


def fit_tubes(
    signal: np.ndarray,
    geoms: Sequence[TubeGeometry],
    sm: SystemModel,
    *,
    other_objects: np.ndarray | None = None,
    t2star_s: float | None = None,
    refine: bool = True,
    erode_vox: float = 1.6,
    max_iter: int = 6,
) -> tuple[list[ModelFit], list[str]]:
    """Fit every tube's amplitude (and refine its centre and radius) through the system's point response.

    Parameters
    ----------
    signal : real calibrated-signal image (matrix).
    geoms : initial geometry of each tube (:func:`geometry_from_tube`).
    sm : the :class:`SystemModel` of the acquisition and reconstruction.
    other_objects : boolean mask of everything that is not a tube (the head); left out of the fit.
    t2star_s : tube T2* (s); default ``sm.tube_t2star_s`` or the saline preset.
    refine : fit centre and radius (nonlinear); otherwise keep the given geometry.
    erode_vox : erosion (voxels) of the ROI over which the recovery coefficient is reported.

    Returns the fits (in the order of ``geoms``) and warnings.
    """
    from recon.physics import SALINE_TUBE

    s = np.asarray(signal, dtype=np.float64)
    if s.shape != sm.matrix:
        raise CalibrationError(f"system model matrix {sm.matrix} differs from the image {s.shape}")
    t2 = float(t2star_s or sm.tube_t2star_s or SALINE_TUBE.t2star_s[0])
    vox = sm.voxel_m
    vmean = float(vox.mean())
    axes = _img_coords(s.shape)
    grid = np.stack(np.meshgrid(*[axes[d] * vox[d] for d in range(3)], indexing="ij"), -1)
    flat = grid.reshape(-1, 3)
    others = np.zeros(s.shape, bool) if other_objects is None else np.asarray(other_objects, bool)
    others_d = ndimage.binary_dilation(others, iterations=1).ravel()
    warnings: list[str] = []
    geoms = [dataclasses.replace(g) for g in geoms]
    reach = NEIGHBOURHOOD_VOX * vmean

    def region(g: TubeGeometry) -> np.ndarray:
        near = _near(s.shape, vox, g, reach)  # the tube's box: the same voxels as the whole grid, in order
        return near[(_cyl_dist(flat[near], g) <= reach) & ~others_d[near]]

    def core_voxels(g: TubeGeometry, shrink_m: float) -> np.ndarray:
        near = _near(s.shape, vox, g, 0.0)
        return near[_cyl_inside(flat[near], g, shrink_m)]

    nfevs = []
    for i, g0 in enumerate(geoms):
        if not refine:
            nfevs.append(0)
            continue
        g, n_eval = _refine_geometry(s, flat, region(g0), g0, sm, t2, vmean, max_iter)
        nfevs.append(n_eval)
        if g is None:
            w = f"tube {i + 1}: geometry refinement did not converge; kept the moment estimate"
            log.warning(w)
            warnings.append(w)
        else:
            geoms[i] = g

    # joint linear fit of all amplitudes with a linear background per tube neighbourhood
    regions = [region(g) for g in geoms]
    templates = _final_templates(s.shape, flat, geoms, regions, sm, t2)
    n = len(geoms)
    rows = sum(len(r) for r in regions)
    if rows == 0:
        raise CalibrationError("no voxels in any tube neighbourhood (tubes overlap the head?)")
    nb = 4 if BACKGROUND_ORDER >= 1 else 1
    M = np.zeros((rows, n + nb * n))
    y = np.zeros(rows)
    o = 0
    for i, (g, idx) in enumerate(zip(geoms, regions)):
        m = len(idx)
        for j in range(n):
            M[o : o + m, j] = templates[j].ravel()[idx]
        x = (flat[idx] - g.centre_img_m) * 1e3
        M[o : o + m, n + nb * i] = 1.0
        if nb > 1:
            M[o : o + m, n + nb * i + 1 : n + nb * i + nb] = x
        y[o : o + m] = s.ravel()[idx]
        o += m
    coef, *_ = np.linalg.lstsq(M, y, rcond=None)
    res = y - M @ coef
    dof = max(rows - M.shape[1], 1)
    sigma2 = float((res**2).sum() / dof)
    try:
        cov = np.linalg.pinv(M.T @ M) * sigma2
        se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    except np.linalg.LinAlgError:
        se = np.full(M.shape[1], np.nan)
    fits = []
    o = 0
    for i, (g, idx) in enumerate(zip(geoms, regions)):
        m = len(idx)
        core = core_voxels(g, erode_vox * vmean)
        if not core.size:
            core = core_voxels(g, 0.0)
        rec = float(templates[i].ravel()[core].mean()) if core.size else float("nan")
        fits.append(
            ModelFit(
                amplitude=float(coef[i]),
                amplitude_se=float(se[i]) if np.isfinite(se[i]) else None,
                recovery=rec,
                background_at_centre=float(coef[n + nb * i]),
                background_gradient_per_mm=[float(v) for v in coef[n + nb * i + 1 : n + nb * i + nb]],
                residual_rms=float(np.sqrt(np.mean(res[o : o + m] ** 2))) if m else float("nan"),
                n_voxels=int(m),
                geometry=g,
                nfev=nfevs[i] if i < len(nfevs) else 0,
            )
        )
        o += m
    return fits, warnings


CROSS_REACH_VOX = _PAD
"""Voxels beyond a tube's wall within which its template is evaluated in the other tubes' neighbourhoods.

Farther away the point response of a tube (tails and ringing) is below about 6e-4 of its peak at the
64^3 protocol (the windowed template's own reach, :data:`_PAD`), and the fit takes it as 0.
"""


def _final_templates(shape: tuple, flat: np.ndarray, geoms, regions, sm: SystemModel, t2: float) -> list[np.ndarray]:
    """Each tube's template where the joint fit and the recovery read it: on a window, not the whole 2N box.

    Tube j's template is needed in its own neighbourhood (and its core) and in every other tube's
    neighbourhood. It is evaluated exactly (:meth:`SystemModel.template` with ``window``) on the box
    that holds its own neighbourhood and the voxels of other neighbourhoods within
    :data:`CROSS_REACH_VOX` of its wall; elsewhere it is 0. Tubes far apart (the usual layout) cost a
    box of about twice the tube instead of the 2N box each (64^3 protocol: 0.66 s -> ~0.05 s for four).
    """
    vox = sm.voxel_m
    reach = CROSS_REACH_VOX * float(vox.mean())
    out = []
    margin = 3
    for j, g in enumerate(geoms):
        sel = [regions[j]]
        for i, idx in enumerate(regions):
            if i != j and len(idx):
                sel.append(idx[_cyl_dist(flat[idx], g) <= reach])
        near = _near(shape, vox, g, 0.0)  # the cylinder itself must lie inside the window
        ids = np.concatenate(sel + [near])
        v = np.unravel_index(ids, shape)
        window = tuple((int(a.min()) - margin, int(a.max()) + 1 + margin) for a in v)
        out.append(sm.template(g.centre_img_m, g.axis_img, g.radius_m, g.length_m, t2, window=window))
    return out


def _refine_geometry(s, flat, idx, g0: TubeGeometry, sm: SystemModel, t2: float, vmean: float, max_iter: int):
    """Gauss-Newton on centre and radius (with amplitude and linear background solved jointly).

    Model in the neighbourhood ``idx``: A T(c, R) + b0 + b . x; the Jacobian uses the analytic
    derivatives of the template (:meth:`SystemModel.template` with ``derivatives``). Steps are
    limited to half a voxel; returns (geometry or None when it diverges, number of template batches).
    """
    if len(idx) < 10:
        return None, 0
    y = s.ravel()[idx]
    x = (flat[idx] - g0.centre_img_m) * 1e3
    c, R = g0.centre_img_m.copy(), float(g0.radius_m)
    vidx = np.unravel_index(idx, s.shape)
    margin = 3  # voxels: the steps below move the cylinder by at most 2 voxels
    window = tuple((int(v.min()) - margin, int(v.max()) + 1 + margin) for v in vidx)
    n_eval = 0
    for _ in range(max_iter):
        T = sm.template(c, g0.axis_img, R, g0.length_m, t2, derivatives=True, window=window)
        n_eval += 1
        Tl = T.reshape(5, -1)[:, idx]
        lin = np.column_stack([Tl[0], np.ones(len(idx))] + ([x] if BACKGROUND_ORDER >= 1 else []))
        coef, *_ = np.linalg.lstsq(lin, y, rcond=None)
        A = float(coef[0])
        if not A > 0:
            return None, n_eval
        r = y - lin @ coef
        J = np.column_stack([lin, A * Tl[1:4].T * vmean, A * Tl[4] * vmean])  # geometry in voxels
        step, *_ = np.linalg.lstsq(J, r, rcond=None)
        dg = step[lin.shape[1] :]
        dg = dg * min(1.0, 0.5 / max(float(np.abs(dg).max()), 1e-12))
        c = c + dg[:3] * vmean
        R = R + dg[3] * vmean
        if R <= 0.25 * g0.radius_m or np.linalg.norm(c - g0.centre_img_m) > 2 * vmean or R > 2 * g0.radius_m:
            return None, n_eval
        if float(np.abs(dg).max()) < 0.01:
            break
    return TubeGeometry(c, g0.axis_img, R, g0.length_m), n_eval


def geometry_warnings(geoms: Sequence[TubeGeometry], sm: SystemModel, others: np.ndarray | None, names: Sequence[str]) -> list[str]:
    """Warnings for tubes outside the alias-free sphere, thinner than supported, or touching other objects."""
    out = []
    vox = sm.voxel_m
    vmean = float(vox.mean())
    r_sup = sm.alias_free_radius_m
    oth = None if others is None or not np.any(others) else np.asarray(others, bool)
    shape = tuple(int(v) for v in sm.matrix)
    centre = np.asarray(shape) // 2
    for g, name in zip(geoms, names):
        # farthest point of the cylinder from the FOV centre (ends' rims)
        a = g.axis_img
        ends = [g.centre_img_m + s * a * g.length_m / 2 for s in (-1, 1)]
        far = 0.0
        for e in ends:  # farthest point of each end disc from the FOV centre
            ea = float(e @ a)
            perp = math.sqrt(max(float(e @ e) - ea**2, 0.0))
            far = max(far, math.sqrt(ea**2 + (perp + g.radius_m) ** 2))
        if far > r_sup + 0.5 * vmean:  # the sphere's edge is not sharp at the voxel scale
            out.append(
                f"tube {name} reaches {far * 1e3:.0f} mm from the FOV centre, outside the alias-free sphere "
                f"(radius {r_sup * 1e3:.0f} mm = FOV/2/sqrt(undersampling {sm.undersampling:g})): its value is not trusted"
            )
        rv = g.radius_m / vmean
        if rv < MIN_RADIUS_VOX:
            out.append(f"tube {name} radius {rv:.2f} voxels is below the {MIN_RADIUS_VOX} voxels the model calibration supports")
        elif rv < SUPPORTED_RADIUS_VOX:
            out.append(
                f"tube {name} radius {rv:.2f} voxels is below {SUPPORTED_RADIUS_VOX} voxels: validated only to "
                f"twice the accuracy bounds"
            )
        if oth is not None:
            gap = _clearance(oth, shape, centre, vox, g, HEAD_CLEARANCE_VOX * vmean)
            if gap is not None:
                if gap < HEAD_CLEARANCE_VOX * vmean:
                    out.append(
                        f"tube {name} lies {gap * 1e3:.1f} mm from the head (< {HEAD_CLEARANCE_VOX:g} voxels): tube and "
                        f"head overlap in the point response"
                    )
    for w in out:
        log.warning(w)
    return out
