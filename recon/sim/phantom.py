"""Analytic digital sodium head phantom: compartments, relaxation, B0 and receive sensitivity.

The phantom is a continuous object defined by smooth-edged ellipsoids, slabs and cylinders, so it
can be evaluated at any point and therefore on any grid (the simulator samples it on a grid at
least twice finer than the reconstruction, so tests do not commit the inverse crime).

Coordinates
-----------
Points are in metres in the scanner's *patient* coordinate system as Siemens stores it
(``sSliceArray`` ``dSag, dCor, dTra``): x = sagittal axis pointing to the patient's **left**,
y = coronal axis pointing **posterior**, z = transverse axis pointing **superior** (head), i.e.
LPS for a head-first supine patient. RAS millimetres are ``(-x, -y, z) * 1000``. The simulated
acquisition uses a transverse slab without rotation (readout = +x, phase = +y, slice = +z, rotation
matrix = identity), so image axis 0 follows kx = +x (towards the left), axis 1 follows
ky = +y (towards posterior), axis 2 follows kz = +z (towards superior). Voxel index i of an N-point
axis has its centre at ``position + (i - N // 2) * fov / N`` (DESIGN.md grid). The orientation
marker (``marker=True``) is a small bright sphere placed right-anterior-superior of the head
(x < 0, y < 0, z > 0), so a viewer that shows it at the patient's right-front-top confirms the
NIfTI affine.

Compartments and their values (TSC in mM, T1 and T2* in s)
-----------------------------------------------------------
Signal of a compartment at time t after excitation: ``TSC * T1sat * decay(t)`` with
``decay(t) = f exp(-t / T2s) + (1 - f) exp(-t / T2l)`` (bi-exponential T2*, Hubbard 1970 for the
spin-3/2 60/40 split) and ``T1sat = sin(a) (1 - E1) / (1 - cos(a) E1)``, ``E1 = exp(-TR / T1)``.

* CSF (sulcal and ventricles): 145 mM, mono-exponential T2* 54 ms (Fleysher et al. 2009, 7T:
  54 +- 4 ms), T1 60 ms (typical 50-65 ms for free fluid; [unverified]). Extracellular sodium
  136-145 mM.
* Vitreous humour: 140 mM, mono-exponential T2* 50 ms, T1 60 ms (fluid; pynamr normalises the
  eyes to 145 mM; [unverified] for T1).
* Grey matter: 40 mM (pynamr phantom; Thulborn/Ouwerkerk 35-45 mM), T1 38 ms [unverified],
  T2* 0.6 x 4.0 ms / 0.4 x 26 ms (Riemer et al. 2018, 3T: 3.9 / 26.3 ms; Niesporek et al. 7T).
* White matter: 36 mM, T1 36 ms [unverified], T2* 0.6 x 3.5 ms / 0.4 x 23 ms (Riemer 2018:
  3.4 / 23.5 ms; Niesporek 7T: 3.5 / 23.3 ms).
* Peritumoral oedema: 70 mM (raised extracellular volume; between tissue and fluid), T1 45 ms,
  T2* 0.45 x 5 ms / 0.55 x 35 ms [model values].
* Tumour, enhancing rim (or solid tumour): 65 mM (50-80 mM reported for gliomas and metastases,
  Ouwerkerk et al., Radiology 2003), T1 42 ms, T2* 0.5 x 4.5 ms / 0.5 x 30 ms [model values].
* Necrotic core: 120 mM (pynamr models the core as 0.9 x CSF), T1 55 ms, T2* 0.2 x 5 ms /
  0.8 x 45 ms [model values].
* Calibration tubes (aqueous NaCl): 30, 60, 90, 120 mM, mono-exponential T2* 50 ms, T1 55 ms
  (saline 50-60 ms; [unverified]).
* Orientation marker: 145 mM saline, as the tubes.

B0 (off-resonance, Hz at 23Na): a smooth low-order field (linear and quadratic terms of some
tens of Hz over the head) plus a susceptibility-like hot spot (a Gaussian, +60 Hz peak) just
above the frontal sinus, anterior-inferior at the midline; all scaled by ``b0_scale``.
23Na off-resonance is gamma(23Na)/gamma(1H) = 0.2645 times that of 1H.

Receive sensitivity: one channel is either uniform or a birdcage-like smooth profile (+-10 %);
several channels are loops on a ring around the head (Gaussian magnitude, a phase ramp each).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy.special import erfc

from recon.errors import InputError
from recon.physics import TISSUE_PRIORS, biexp_decay, t1_saturation


@dataclasses.dataclass(frozen=True)
class Compartment:
    """One tissue class: TSC in mM, T1 in s, bi-exponential T2* in s (``frac_short`` of the
    signal at t = 0 decays with ``t2s_short_s``, the rest with ``t2s_long_s``)."""

    name: str
    label: int
    tsc_mM: float
    t1_s: float
    t2s_short_s: float
    t2s_long_s: float
    frac_short: float
    source: str = ""

    def decay(self, t_s) -> np.ndarray:
        """T2* decay factor at time(s) ``t_s`` after excitation (1 at t = 0)."""
        return biexp_decay(t_s, self.frac_short, self.t2s_short_s, self.t2s_long_s)

    def t1_factor(self, tr_s: float, flip_deg: float) -> float:
        """Steady-state (spoiled) T1 saturation factor for ``tr_s`` and ``flip_deg``."""
        return t1_saturation(tr_s=tr_s, flip_deg=flip_deg, t1_s=self.t1_s)

    def pools(self) -> list[tuple[float, float]]:
        """[(fraction, T2* in s)]: the exponential pools of this compartment."""
        if self.frac_short <= 0 or self.t2s_short_s == self.t2s_long_s:
            return [(1.0, self.t2s_long_s)]
        return [(self.frac_short, self.t2s_short_s), (1 - self.frac_short, self.t2s_long_s)]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Tube:
    """A calibration tube: a uniform finite cylinder in patient (LPS) metres.

    ``axis`` is its direction (normalised; default z = along B0), ``t1_s`` and ``t2s_s`` its
    (mono-exponential) relaxation (default aqueous saline, :data:`recon.physics.TISSUE_PRIORS`).
    """

    name: str
    centre_m: tuple
    radius_m: float
    length_m: float
    concentration_mM: float
    axis: tuple = (0.0, 0.0, 1.0)
    t1_s: float = TISSUE_PRIORS["saline"].t1_s
    t2s_s: float = TISSUE_PRIORS["saline"].t2s_long_s

    def __post_init__(self) -> None:
        a = np.asarray(self.axis, dtype=np.float64)
        n = float(np.linalg.norm(a))
        if a.shape != (3,) or not n > 0:
            raise InputError(f"tube {self.name}: axis must be a non-zero 3-vector, got {self.axis}")
        if not (self.radius_m > 0 and self.length_m > 0):
            raise InputError(f"tube {self.name}: radius and length must be positive")
        if not (self.t1_s > 0 and self.t2s_s > 0):
            raise InputError(f"tube {self.name}: T1 and T2* must be positive")
        object.__setattr__(self, "axis", tuple(float(v) for v in a / n))
        object.__setattr__(self, "centre_m", tuple(float(v) for v in self.centre_m))

    def as_dict(self) -> dict:
        c = np.asarray(self.centre_m) * 1e3
        a = np.asarray(self.axis)
        return {
            "name": self.name,
            "concentration_mM": self.concentration_mM,
            "centre_mm_lps": [round(float(v), 4) for v in c],
            "centre_mm_ras": [round(float(v), 4) for v in (-c[0], -c[1], c[2])],
            "radius_mm": self.radius_m * 1e3,
            "length_mm": self.length_m * 1e3,
            "axis": "z (superior)" if np.allclose(a, (0, 0, 1)) else "oblique",
            "axis_lps": [round(float(v), 6) for v in a],
            "axis_ras": [round(float(v), 6) for v in (-a[0], -a[1], a[2])],
            "t1_s": self.t1_s,
            "t2star_s": self.t2s_s,
        }


DEFAULT_HEAD_SCALE = 0.85
"""Default scale of the phantom's head: small enough that the default tubes sit beside it inside the
alias-free sphere of a 224 mm FOV (a head of scale 1 leaves the tubes only the FOV's corners)."""


def default_tubes(concentrations: Sequence[float] = (30.0, 60.0, 90.0, 120.0), layout: str = "beside") -> tuple[Tube, ...]:
    """Four calibration tubes of radius 13 mm (26 mm vials, e.g. 50 mL centrifuge tubes), along B0.

    ``layout = "beside"`` (default): where a user puts them, 36 mm long, centres at x = +-84 mm,
    y = +-22 mm (LPS), about 13 mm clear of the head of :data:`DEFAULT_HEAD_SCALE` and entirely
    inside the alias-free sphere (the farthest rim point is 101 mm from the centre; radius 112 mm
    for a 224 mm FOV, 102 mm at angular undersampling 1.2). The shipped sample uses this geometry.

    ``layout = "corners"``: 80 mm long in the free corners of the FOV (x = +-88, y = +-72 mm), for
    matrices so coarse (>= 7 mm voxels) that tubes of 2 voxels do not fit beside the head; they
    reach 133 mm from the centre, outside the alias-free sphere (narecon run warns).
    """
    if layout == "beside":
        pos, length = [(-0.084, -0.022), (-0.084, 0.022), (0.084, -0.022), (0.084, 0.022)], 0.036
    elif layout == "corners":
        pos, length = [(-0.088, -0.072), (-0.088, 0.072), (0.088, -0.072), (0.088, 0.072)], 0.080
    else:
        raise InputError(f"default tube layout must be 'beside' or 'corners', got {layout!r}")
    if len(concentrations) > len(pos):
        raise InputError(f"at most {len(pos)} default tube positions, got {len(concentrations)} concentrations")
    return tuple(Tube(f"tube_{c:g}mM", (x, y, 0.0), 0.013, length, float(c)) for (x, y), c in zip(pos, concentrations))


def _comp(name: str, label: int, tsc: float, prior: str, src: str) -> Compartment:
    r = TISSUE_PRIORS[prior]
    return Compartment(name, label, tsc, r.t1_s, r.t2s_short_s, r.t2s_long_s, r.frac_short, src)


DEFAULT_COMPARTMENTS: dict[str, Compartment] = {
    c.name: c
    for c in (
        _comp("grey_matter", 1, 40.0, "grey_matter", "Riemer 2018; Niesporek 7T; pynamr"),
        _comp("white_matter", 2, 36.0, "white_matter", "Riemer 2018; Niesporek 7T"),
        _comp("csf_sulcal", 3, 145.0, "csf", "Fleysher 2009 (7T T2* 54 ms)"),
        _comp("csf_ventricles", 4, 145.0, "csf", "Fleysher 2009 (7T T2* 54 ms)"),
        _comp("vitreous", 5, 140.0, "vitreous", "pynamr eyes 145 mM; fluid"),
        _comp("oedema", 6, 70.0, "oedema", "model: raised extracellular volume"),
        _comp("tumour_rim", 7, 65.0, "tumour", "Ouwerkerk 2003 (50-80 mM)"),
        _comp("necrotic_core", 8, 120.0, "necrotic_core", "pynamr core 0.9 x CSF"),
    )
}
TUBE_T1_S = TISSUE_PRIORS["saline"].t1_s
TUBE_T2S_S = TISSUE_PRIORS["saline"].t2s_long_s
FIRST_TUBE_LABEL = 9
MARKER_NAME = "marker"


def _smooth_step(d: np.ndarray, edge: float) -> np.ndarray:
    """Inside fraction for signed distance d (negative inside): Gaussian-blurred step of width edge."""
    if edge <= 0:
        return (d <= 0).astype(np.float32)
    return (0.5 * erfc(d / (math.sqrt(2) * edge))).astype(np.float32)


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def _ellipsoid_distance(p: np.ndarray, centre, semi, rot_deg: float = 0.0, wobble=None) -> np.ndarray:
    """Approximate signed distance (m) to an ellipsoid surface, along the ray from its centre.

    ``wobble`` (amplitude, (l, m)) modulates the radius by 1 + amp * sin(l theta) cos(m phi), a
    cheap gyral folding of the surface.
    """
    u = p - np.asarray(centre)
    if rot_deg:
        u = u @ _rot_z(rot_deg)  # into the ellipsoid's own frame
    semi = np.asarray(semi, dtype=np.float64)
    q = np.sqrt(((u / semi) ** 2).sum(-1))
    rad = np.sqrt((u**2).sum(-1))
    if wobble is not None:
        amp, (lw, mw) = wobble
        theta = np.arccos(np.clip(u[..., 2] / np.maximum(rad, 1e-12), -1, 1))
        phi = np.arctan2(u[..., 1], u[..., 0])
        q = q / (1 + amp * np.sin(lw * theta) * np.cos(mw * phi))
    ray = np.where(q > 1e-9, rad / np.maximum(q, 1e-9), semi.min())  # centre-to-surface length on the ray
    return (q - 1) * ray


def _cylinder_distance(p: np.ndarray, centre, radius: float, length: float, axis=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Signed distance (m) to a finite cylinder along ``axis`` (unit vector; default z)."""
    u = p - np.asarray(centre)
    a = np.asarray(axis, dtype=np.float64)
    along = u @ a
    dr = np.sqrt(np.maximum((u**2).sum(-1) - along**2, 0.0)) - radius
    dz = np.abs(along) - length / 2
    outside = np.sqrt(np.maximum(dr, 0) ** 2 + np.maximum(dz, 0) ** 2)
    return np.where((dr > 0) | (dz > 0), outside, np.maximum(dr, dz))


@dataclasses.dataclass
class HeadPhantom:
    """The analytic sodium head phantom (patient LPS coordinates, metres; see module docstring).

    Parameters
    ----------
    tumour : ``"rim-core"`` (enhancing rim around a necrotic core), ``"solid"`` or ``"none"``.
    tubes : the calibration tubes (default :func:`default_tubes`: 30/60/90/120 mM).
    marker : add the right-anterior-superior orientation marker sphere (radius 6 mm, 145 mM).
    edge_m : boundary blur in m: the SD of a Gaussian the simulator convolves the object with (in
        k-space; default 0: sharp compartments, partial volume from the simulation grid's box average).
        ``fractions(points)`` without an edge evaluates erfc of the signed distance with it.
    b0_scale : multiplies the whole B0 map (0 switches off-resonance off).
    b0_hotspot_hz : peak of the frontal-sinus hot spot (before ``b0_scale``) in Hz.
    centre_m : head centre in patient coordinates (m).
    head_scale : scales the head (brain, ventricles, tumour, eyes) about ``centre_m``; tubes and marker stay.
    compartments : tissue table (default :data:`DEFAULT_COMPARTMENTS`); replace entries (e.g. with
        :func:`dataclasses.replace`) to change a compartment's TSC, T1 or T2*.
    """

    tumour: str = "rim-core"
    tubes: tuple = dataclasses.field(default_factory=default_tubes)
    marker: bool = False
    edge_m: float = 0.0
    b0_scale: float = 1.0
    b0_hotspot_hz: float = 60.0
    centre_m: tuple = (0.0, 0.0, 0.0)
    compartments: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_COMPARTMENTS))
    head_scale: float = DEFAULT_HEAD_SCALE

    # geometry (m, relative to centre_m; LPS: -x right, -y anterior, +z superior)
    brain_semi = (0.068, 0.084, 0.060)
    tumour_centre = (-0.032, -0.018, 0.022)  # right frontal-parietal white matter
    marker_centre = (-0.080, -0.080, 0.060)  # right, anterior, superior
    marker_radius = 0.006

    def __post_init__(self) -> None:
        if self.tumour not in ("rim-core", "solid", "none"):
            raise InputError(f"tumour must be 'rim-core', 'solid' or 'none', got {self.tumour!r}")
        if self.edge_m < 0:
            raise InputError(f"edge width must be >= 0 m, got {self.edge_m}")
        if not 0.5 <= self.head_scale <= 1.5:
            raise InputError(f"head scale must be within 0.5-1.5, got {self.head_scale}")
        self.tubes = tuple(self.tubes)

    # ------------------------------------------------------------------ table
    def table(self) -> list[Compartment]:
        """All compartments present in this phantom, tubes and marker included, by label."""
        comps = [c for c in self.compartments.values() if self._present(c.name)]
        for i, t in enumerate(self.tubes):
            comps.append(
                Compartment(
                    t.name,
                    FIRST_TUBE_LABEL + i,
                    t.concentration_mM,
                    t.t1_s,
                    t.t2s_s,
                    t.t2s_s,
                    0.0,
                    "aqueous NaCl",
                )
            )
        if self.marker:
            comps.append(
                Compartment(
                    MARKER_NAME,
                    FIRST_TUBE_LABEL + len(self.tubes),
                    145.0,
                    TUBE_T1_S,
                    TUBE_T2S_S,
                    TUBE_T2S_S,
                    0.0,
                    "orientation marker (right-anterior-superior)",
                )
            )
        return sorted(comps, key=lambda c: c.label)

    def _present(self, name: str) -> bool:
        if name == "necrotic_core":
            return self.tumour == "rim-core"
        if name == "tumour_rim":
            return self.tumour != "none"
        if name == "oedema":
            return self.tumour != "none"
        return True

    # -------------------------------------------------------------- geometry
    def _shapes(self) -> list[tuple]:
        """The geometry in painting order (later ones on top): (compartment, kind, parameters, in_brain).

        kinds: ``ellipsoid`` (centre, semi-axes, rotation about z in deg, wobble), ``cylinder``
        (centre, radius, length), ``fissure`` (a thin midline slab in the upper brain). ``in_brain``
        multiplies the shape by the brain's outer boundary.
        """
        c0 = np.asarray(self.centre_m, dtype=np.float64)
        k = float(self.head_scale)
        b = np.asarray(self.brain_semi) * k
        sh = [
            ("csf_sulcal", "ellipsoid", (c0, b, 0.0, None), False),
            ("grey_matter", "ellipsoid", (c0, b * 0.955, 0.0, (0.025, (9, 7))), False),
            ("white_matter", "ellipsoid", (c0 + k * np.array([0, 0.004, 0.004]), b * 0.80, 0.0, (0.05, (7, 5))), False),
            ("csf_sulcal", "fissure", (c0, 0.0012, -0.005), True),  # interhemispheric fissure
        ]
        for sx in (-1, 1):  # lateral ventricles, splayed
            sh.append(
                (
                    "csf_ventricles",
                    "ellipsoid",
                    (c0 + k * np.array([sx * 0.010, 0.004, 0.010]), k * np.array([0.007, 0.030, 0.011]), sx * 12.0, None),
                    False,
                )
            )
        sh.append(
            (
                "csf_ventricles",
                "ellipsoid",
                (c0 + k * np.array([0, 0.006, -0.004]), k * np.array([0.0025, 0.012, 0.008]), 0.0, None),
                False,
            )
        )
        if self.tumour != "none":
            tc = c0 + k * np.asarray(self.tumour_centre)
            sh.append(("oedema", "ellipsoid", (tc, k * np.array([0.024, 0.028, 0.022]), 20.0, None), True))
            sh.append(("tumour_rim", "ellipsoid", (tc, k * np.array([0.014, 0.016, 0.013]), 20.0, None), False))
            if self.tumour == "rim-core":
                sh.append(("necrotic_core", "ellipsoid", (tc, k * np.array([0.008, 0.009, 0.0075]), 20.0, None), False))
        for sx in (-1, 1):  # eyes: anterior, inferior
            sh.append(
                ("vitreous", "ellipsoid", (c0 + k * np.array([sx * 0.032, -0.080, -0.038]), (0.011 * k,) * 3, 0.0, None), False)
            )
        for t in self.tubes:
            sh.append(
                (
                    t.name,
                    "cylinder",
                    (np.asarray(t.centre_m, dtype=np.float64), t.radius_m, t.length_m, t.axis),
                    False,
                )
            )
        if self.marker:
            sh.append(
                (
                    MARKER_NAME,
                    "ellipsoid",
                    (c0 + np.asarray(self.marker_centre), (self.marker_radius,) * 3, 0.0, None),
                    False,
                )
            )
        return sh

    def _layers(self, p: np.ndarray, edge: float):
        """Yield (compartment name, flat point indices or None for all, inside fraction there).

        Each shape is evaluated only inside its bounding box grown by 6 edge widths (outside it
        the smooth step is below 1e-9 and taken as 0).
        """
        margin = 6 * edge + 1e-9
        b = np.asarray(self.brain_semi) * float(self.head_scale)
        outer = np.zeros(p.shape[0], np.float32)
        first = True
        lo_all, hi_all = p.min(axis=0), p.max(axis=0)
        for name, kind, prm, in_brain in self._shapes():
            if kind == "ellipsoid":
                centre, semi, rot, wob = prm
                r = float(np.max(semi)) * (1 + (wob[0] if wob else 0.0))
                half = np.full(3, r) if rot else np.asarray(semi, float) * (1 + (wob[0] if wob else 0.0))
            elif kind == "cylinder":
                centre, rad, length, ax = prm
                a = np.abs(np.asarray(ax))
                half = a * length / 2 + rad * np.sqrt(np.maximum(1 - a**2, 0.0))
            else:  # fissure
                centre = prm[0]
                half = np.array([prm[1], b[1], b[2]])
            lo, hi = np.asarray(centre) - half - margin, np.asarray(centre) + half + margin
            if np.all(lo <= lo_all) and np.all(hi >= hi_all):
                idx = None
                q = p
            else:
                inside = np.all((p >= lo) & (p <= hi), axis=1)
                idx = np.nonzero(inside)[0]
                if idx.size == 0:
                    first = False
                    continue
                q = p[idx]
            if kind == "ellipsoid":
                m = _smooth_step(_ellipsoid_distance(q, centre, semi, rot, wob), edge)
            elif kind == "cylinder":
                m = _smooth_step(_cylinder_distance(q, centre, rad, length, ax), edge)
            else:
                m = _smooth_step(np.abs(q[:, 0] - centre[0]) - prm[1], edge) * _smooth_step(-(q[:, 2] - centre[2] - prm[2]), edge)
            if in_brain:
                m = m * (outer if idx is None else outer[idx])
            if first:  # the first shape is the brain's outer boundary
                first = False
                if idx is None:
                    outer[:] = m
                else:
                    outer[idx] = m
            yield name, idx, m

    def fractions(self, points: np.ndarray, edge_m: float | None = None) -> tuple[list[Compartment], np.ndarray]:
        """Volume fractions of every compartment at ``points`` (..., 3) in m.

        Returns the compartment list (see :meth:`table`) and an array (n_compartments, ...) of
        float32 fractions in [0, 1]; their sum is the non-background fraction.
        """
        p = np.asarray(points, dtype=np.float64)
        if p.shape[-1] != 3:
            raise InputError(f"points must have shape (..., 3), got {p.shape}")
        comps = self.table()
        index = {c.name: i for i, c in enumerate(comps)}
        f = np.zeros((len(comps),) + p.shape[:-1], dtype=np.float32)
        shape = p.shape[:-1]
        p = p.reshape(-1, 3)
        f = f.reshape(len(comps), -1)
        for name, idx, m in self._layers(p, self.edge_m if edge_m is None else edge_m):
            if idx is None:
                f *= 1 - m
                f[index[name]] += m
            else:
                f[:, idx] *= 1 - m
                f[index[name], idx] += m
        return comps, f.reshape((len(comps),) + shape)

    def tsc_mM(self, points: np.ndarray, edge_m: float | None = None) -> np.ndarray:
        """True total sodium concentration in mM at ``points`` (..., 3) in m."""
        comps, f = self.fractions(points, edge_m)
        return np.tensordot(np.array([c.tsc_mM for c in comps], dtype=np.float32), f, axes=1)

    def labels(self, points: np.ndarray, edge_m: float | None = None) -> np.ndarray:
        """Label of the dominant compartment (0 = background) at ``points``."""
        comps, f = self.fractions(points, edge_m)
        lab = np.array([c.label for c in comps], dtype=np.int16)
        best = np.argmax(f, axis=0)
        bg = 1 - f.sum(0)
        out = lab[best]
        out[f.max(0) < bg] = 0
        return out

    def b0_hz(self, points: np.ndarray) -> np.ndarray:
        """Off-resonance in Hz at 23Na: smooth low-order field plus a frontal-sinus hot spot."""
        p = np.asarray(points, dtype=np.float64) - np.asarray(self.centre_m)
        x, y, z = p[..., 0] / 0.1, p[..., 1] / 0.1, p[..., 2] / 0.1  # in units of 10 cm
        smooth = 6.0 * x - 10.0 * y + 8.0 * z + 12.0 * (x**2 - y**2) - 9.0 * z**2 + 7.0 * x * z
        hs = np.array([0.0, -0.066, -0.020])  # above the frontal sinus: anterior, inferior, midline
        d2 = ((p - hs) ** 2 / np.array([0.014, 0.012, 0.012]) ** 2).sum(-1)
        return (self.b0_scale * (smooth + self.b0_hotspot_hz * np.exp(-0.5 * d2))).astype(np.float64)

    def receive_sensitivity(self, points: np.ndarray, n_coils: int = 1, kind: str = "uniform") -> np.ndarray:
        """Complex receive sensitivity (n_coils, ...) at ``points``.

        One coil: ``kind="uniform"`` (1 everywhere) or ``"birdcage"`` (smooth magnitude within
        +-10 % and a small phase variation). Several coils: loops on a ring of radius 0.13 m in
        the transverse plane, each a Gaussian magnitude of width 0.09 m times a phase ramp.
        """
        p = np.asarray(points, dtype=np.float64) - np.asarray(self.centre_m)
        if n_coils < 1:
            raise InputError(f"need at least one coil, got {n_coils}")
        if n_coils == 1:
            if kind == "uniform":
                return np.ones((1,) + p.shape[:-1], dtype=np.complex64)
            if kind != "birdcage":
                raise InputError(f"receive sensitivity kind must be 'uniform' or 'birdcage', got {kind!r}")
            r2 = (p[..., 0] ** 2 + p[..., 1] ** 2) / 0.1**2
            mag = 1.0 + 0.10 * (r2 - 0.5) - 0.05 * (p[..., 2] / 0.1) ** 2
            return (mag * np.exp(1j * 0.2 * p[..., 1] / 0.1))[None].astype(np.complex64)
        out = np.empty((n_coils,) + p.shape[:-1], dtype=np.complex64)
        for c in range(n_coils):
            ang = 2 * np.pi * c / n_coils
            centre = np.array([0.13 * math.cos(ang), 0.13 * math.sin(ang), 0.0])
            d2 = ((p - centre) ** 2).sum(-1)
            phase = 2 * np.pi * ((p - centre) @ np.array([math.sin(ang), -math.cos(ang), 0.3])) / 0.5
            out[c] = np.exp(-d2 / (2 * 0.09**2)) * np.exp(1j * (phase + ang))
        return out


def grid_points(matrix: Sequence[int], fov_m: Sequence[float], position_m=(0.0, 0.0, 0.0), supersample: int = 1) -> np.ndarray:
    """Voxel centre positions (N0, N1, N2, 3) in patient m of the DESIGN.md grid.

    With ``supersample`` s > 1 returns (s^3, N0, N1, N2, 3): s^3 points evenly spread inside each
    voxel, for partial-volume averages.
    """
    n = np.broadcast_to(np.asarray(matrix, dtype=int), (3,))
    fov = np.broadcast_to(np.asarray(fov_m, dtype=np.float64), (3,))
    dx = fov / n
    axes = [(np.arange(n[d]) - n[d] // 2) * dx[d] + position_m[d] for d in range(3)]
    base = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    if supersample <= 1:
        return base
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    offs = np.stack(np.meshgrid(off, off, off, indexing="ij"), -1).reshape(-1, 3) * dx
    return base[None] + offs[:, None, None, None, :]
