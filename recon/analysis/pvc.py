"""Partial-volume correction of small ROIs: the geometric transfer matrix (GTM, Rousset et al.,
J Nucl Med 1998), as PET does it.

A 2 mm sphere on 3.5 mm voxels seen through a 3D radial/TPI point response of ~1.6 voxels FWHM
is mostly its surroundings: the plain weighted mean mixes tumour with oedema, CSF with white
matter. The GTM models the image as a sum of uniform regions blurred by the point response
and solves for the region values.

Model and assumptions (named in the ``pvc_model`` column of ``narecon roi``):

* **Regions**: every ROI (its fractional sphere overlap or its mask), a **shell** of its
  surroundings (the voxels within ``shell_mm``, default 2 x FWHM, of the ROI that belong to no
  ROI; ROIs whose grown regions touch share one shell) and the **rest** of the image. Each
  region is assumed uniform: one value per ROI, per shell and for the rest.
* **Point response**: shift-invariant, isotropic Gaussian of ``fwhm_mm`` FWHM (default
  :data:`recon.calibrate.tubes.DEFAULT_PSF_FWHM_VOX` x the voxel size, the ideal TPI/radial
  PSF; give the measured one of your trajectory and decay when known), applied on the voxel
  grid.
* **Blurred regions** B_i: spheres in closed form (:func:`blurred_sphere`, exact), masks,
  shells and the rest on the grid; the shells and the rest as the blurred union minus the
  blurred regions inside it, so that the B_i add up to the blurred field of view.
* **Equations**: with region occupancies R_i(x) in [0, 1] and blurred occupancies
  B_i = PSF * R_i, the mean of the image over region j weighted by R_j is
  t_j = sum_i G_ji c_i, G_ji = sum_x R_j(x) B_i(x) / sum_x R_j(x); the GTM values c solve
  G c = t (least squares when G is singular). On an image that *is* such a blurred piecewise-
  constant object the plain means are biased and c is exact (the test).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from recon.analysis.roi import Image, MaskROI, SphereROI, roi_weights, sphere_weights
from recon.calibrate.tubes import DEFAULT_PSF_FWHM_VOX
from recon.errors import ConfigError

SHELL_FWHM = 2.0
"""Default shell width around each ROI in units of the PSF FWHM."""
MAX_AMPLIFICATION = 25.0
"""Largest error amplification ||row of G^-1|| for which ``narecon roi`` reports a corrected mean;
beyond it (an ROI far smaller than the point response: a 2 mm sphere keeps 2.8 % of its own
signal at 5.6 mm voxels) ``mean_pvc`` is NaN and ``pvc_model`` says why. A 2 mm sphere at the
protocol's 3.5 mm voxels keeps 9.5 % (recovery 0.095) with amplification 18: its noise SD grows 18x."""
SHELL_SUPERSAMPLE = 8
"""Sub-voxel points per axis for the (large) shell spheres' boundary voxels."""
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclasses.dataclass
class GTMResult:
    """GTM values: ``values`` per ROI name, ``shells`` per ROI name, ``rest`` (image units);
    ``names`` of the regions in the order of ``matrix`` (the GTM G, rows = measured region);
    ``fwhm_mm``, ``shell_mm``, ``condition`` (2-norm condition number of G), ``model`` (text);
    ``recovery`` per ROI: G_ii, the fraction of the ROI's own signal that stays in it (PET's
    recovery coefficient); ``amplification`` per ROI: ||(G^-1)_i||, how much an error of the
    region means (noise, non-uniform surroundings) is amplified in the corrected value."""

    values: dict[str, float]
    shells: dict[str, float]
    rest: float
    names: list[str]
    matrix: np.ndarray
    fwhm_mm: float
    shell_mm: float
    condition: float
    model: str
    recovery: dict[str, float] = dataclasses.field(default_factory=dict)
    amplification: dict[str, float] = dataclasses.field(default_factory=dict)


def voxel_sizes_mm(affine: np.ndarray) -> np.ndarray:
    """Edge lengths of the voxels (mm) from the affine's columns."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def default_fwhm_mm(affine: np.ndarray) -> float:
    """The default PSF FWHM in mm: DEFAULT_PSF_FWHM_VOX x the mean voxel size."""
    return float(DEFAULT_PSF_FWHM_VOX * voxel_sizes_mm(affine).mean())


def blurred_sphere(r_mm: np.ndarray, radius_mm: float, sigma_mm: float) -> np.ndarray:
    """A uniform ball of ``radius_mm`` convolved with an isotropic Gaussian of SD ``sigma_mm``, at
    distances ``r_mm`` from its centre (closed form):
    (erf((a - r)/(sqrt2 s)) + erf((a + r)/(sqrt2 s)))/2 - s/(r sqrt(2 pi)) (e^{-(a-r)^2/2s^2} - e^{-(a+r)^2/2s^2})."""
    from scipy.special import erf

    a, s = float(radius_mm), float(sigma_mm)
    r = np.maximum(np.asarray(r_mm, dtype=float), 1e-9 * s)
    q = math.sqrt(2.0) * s
    val = 0.5 * (erf((a - r) / q) + erf((a + r) / q)) - s / (r * math.sqrt(2 * math.pi)) * (
        np.exp(-((a - r) ** 2) / (2 * s * s)) - np.exp(-((a + r) ** 2) / (2 * s * s))
    )
    return np.clip(val, 0.0, 1.0)


def voxel_kernel(sigma_mm: float, dx_mm: float) -> np.ndarray:
    """1D kernel that maps a voxel's occupancy to the point-sampled Gaussian blur at the voxel
    centres n voxels away: k[n] = (erf((n + 1/2) dx / (sqrt2 s)) - erf((n - 1/2) dx / (sqrt2 s))) / 2
    (exact for regions made of whole voxels; sums to 1)."""
    from scipy.special import erf

    half = int(math.ceil(4.0 * sigma_mm / dx_mm)) + 1
    n = np.arange(-half, half + 1, dtype=float)
    q = math.sqrt(2.0) * sigma_mm
    k = 0.5 * (erf((n + 0.5) * dx_mm / q) - erf((n - 0.5) * dx_mm / q))
    return k / k.sum()


def _dense(shape, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = np.zeros(shape)
    if len(idx):
        out[idx[:, 0], idx[:, 1], idx[:, 2]] = w
    return out


def _outer(roi, image: Image, inner: np.ndarray, shell_mm: float) -> np.ndarray:
    """Occupancy of the ROI grown by ``shell_mm`` (a larger sphere, or the mask dilated by distance)."""
    shape = image.data.shape
    if isinstance(roi, SphereROI):
        idx, w = sphere_weights(shape, image.affine, roi.center_in_mm(image.affine), roi.radius_mm + shell_mm, SHELL_SUPERSAMPLE)
        return _dense(shape, idx, w)
    dist = ndimage.distance_transform_edt(inner <= 0, sampling=voxel_sizes_mm(image.affine))
    return (dist <= shell_mm).astype(float)


def gtm(
    image: Image,
    rois: list[SphereROI | MaskROI],
    fwhm_mm: float | None = None,
    shell_mm: float | None = None,
    supersample: int | None = None,
) -> GTMResult:
    """Partial-volume corrected ROI values of ``image`` by the GTM (module docstring)."""
    from recon.analysis.roi import SUPERSAMPLE

    if not rois:
        raise ConfigError("the GTM needs at least one ROI")
    fwhm = default_fwhm_mm(image.affine) if fwhm_mm is None else float(fwhm_mm)
    if not (fwhm > 0 and math.isfinite(fwhm)):
        raise ConfigError(f"PSF FWHM must be a positive number of mm, got {fwhm_mm}")
    shell = SHELL_FWHM * fwhm if shell_mm is None else float(shell_mm)
    ss = SUPERSAMPLE if supersample is None else int(supersample)
    shape = image.data.shape
    x = np.asarray(image.data, dtype=float)
    finite = np.isfinite(x)
    xf = np.where(finite, x, 0.0)

    occ = np.stack([_dense(shape, *roi_weights(r, image, ss)) for r in rois])
    tot = occ.sum(0)
    over = tot > 1.0 + 1e-9
    if over.any():  # overlapping ROIs share a voxel in proportion
        occ[:, over] /= tot[over]
        tot = occ.sum(0)
    # ROIs whose grown regions touch share one shell ("their surroundings", one uniform value)
    grown = np.stack([_outer(r, image, occ[i], shell) for i, r in enumerate(rois)])
    n = len(rois)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if np.any((grown[i] > 0) & (grown[j] > 0)):
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)

    sigma_mm = fwhm * FWHM_TO_SIGMA
    kernels = [voxel_kernel(sigma_mm, float(d)) for d in voxel_sizes_mm(image.affine)]

    def blur(reg: np.ndarray) -> np.ndarray:
        out = reg
        for ax, k in enumerate(kernels):
            out = ndimage.correlate1d(out, k, axis=ax, mode="constant")
        return out

    # blurred ROIs: spheres (often smaller than a voxel) in closed form, exact; masks on the grid
    b_roi = []
    xyz = None
    for i, roi in enumerate(rois):
        if isinstance(roi, SphereROI) and not over.any():
            if xyz is None:
                ijk = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"), -1).reshape(-1, 3)
                aff = np.asarray(image.affine, dtype=float)
                xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
            r = np.linalg.norm(xyz - roi.center_in_mm(image.affine), axis=1)
            b_roi.append(blurred_sphere(r, roi.radius_mm, sigma_mm).reshape(shape))
        else:
            b_roi.append(blur(occ[i]))
    regions, blurred, names = list(occ), list(b_roi), [r.name for r in rois]
    for members in groups.values():
        union = np.clip(grown[members].max(0), tot, 1.0)  # contains its ROIs
        regions.append(np.clip(union - occ[members].sum(0), 0.0, 1.0))
        blurred.append(blur(union) - sum(b_roi[i] for i in members))
        names.append(" + ".join(rois[i].name for i in members) + " shell")
    rest = np.clip(1.0 - sum(regions), 0.0, 1.0)
    regions.append(rest)
    blurred.append(blur(np.ones(shape)) - sum(blurred))
    names.append("rest")
    keep = [i for i, reg in enumerate(regions) if (reg * finite).sum() > 1e-9]
    regions = [regions[i] for i in keep]
    blurred = [blurred[i] for i in keep]
    names = [names[i] for i in keep]
    m = len(regions)
    G = np.empty((m, m))
    t = np.empty(m)
    for j, rj in enumerate(regions):
        wj = rj * finite
        sw = wj.sum()
        t[j] = (wj * xf).sum() / sw
        for i, bi in enumerate(blurred):
            G[j, i] = (wj * bi).sum() / sw
    c, *_ = np.linalg.lstsq(G, t, rcond=None)
    cond = float(np.linalg.cond(G))
    ginv = np.linalg.pinv(G)
    recovery = {names[i]: float(G[i, i]) for i in range(m)}
    amplification = {names[i]: float(np.linalg.norm(ginv[i])) for i in range(m)}
    val = dict(zip(names, (float(v) for v in c)))
    model = f"GTM (Rousset 1998): uniform ROI, {shell:.3g} mm shell and rest regions; Gaussian PSF {fwhm:.3g} mm FWHM"
    return GTMResult(
        values={r.name: val.get(r.name, float("nan")) for r in rois},
        shells={
            r.name: next(
                (v for k, v in val.items() if k.endswith(" shell") and r.name in k[: -len(" shell")].split(" + ")), float("nan")
            )
            for r in rois
        },
        rest=val.get("rest", float("nan")),
        names=names,
        matrix=G,
        fwhm_mm=fwhm,
        shell_mm=shell,
        condition=cond,
        model=model,
        recovery={r.name: recovery.get(r.name, float("nan")) for r in rois},
        amplification={r.name: amplification.get(r.name, float("nan")) for r in rois},
    )


def apply_pvc(results: list, images: list[Image], rois: list, fwhm_mm: float | None = None) -> None:
    """Fill ``mean_pvc``, ``pvc_recovery``, ``pvc_amplification`` and ``pvc_model`` of
    :func:`recon.analysis.roi.measure` results in place (one GTM per image; field maps in Hz are
    not concentrations and are left out; ROIs beyond :data:`MAX_AMPLIFICATION` get NaN)."""
    for img in images:
        rows = [r for r in results if r.image == img.name]
        if img.unit == "Hz":
            for r in rows:
                r.pvc_model = "not applied (field map)"
            continue
        g = gtm(img, rois, fwhm_mm)
        for r in rows:
            amp = g.amplification.get(r.roi, float("nan"))
            r.pvc_recovery = g.recovery.get(r.roi, float("nan"))
            r.pvc_amplification = amp
            if amp <= MAX_AMPLIFICATION:
                r.mean_pvc = g.values.get(r.roi, float("nan"))
                r.pvc_model = g.model
            else:
                r.pvc_model = (
                    f"not reliable: the ROI keeps {100 * r.pvc_recovery:.1f} % of its own signal, errors amplified "
                    f"{amp:.0f}x > {MAX_AMPLIFICATION:g}x ({g.model})"
                )
