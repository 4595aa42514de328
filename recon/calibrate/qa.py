"""QA figure (qa.png): "is this scan OK?" at a glance.

Rows: the echo magnitudes, the B0 field map (Hz) and the TSC map (mM) (the map that is passed:
the pipeline passes the final, relaxation-corrected map; ``tsc=None`` omits the row, e.g. for
images-only runs), and the calibration line. Columns: axial, coronal and sagittal mid slices
(planes found from the affine: the array axis closest to S/A/R is cut), plus an axial slice
through the tubes when they lie elsewhere. Each panel is labelled at its edges with the patient
directions (R/L, A/P, S/I) of the affine; axial and coronal panels are shown radiologically
(patient right on the viewer's left), sagittal panels with anterior on the left, superior up.

* The B0 colour range is symmetric and covers the whole field inside the object mask (no
  percentile clipping: a 33-58 Hz hot spot stays visible); values beyond it outside the
  object are shown by the colour bar's extend arrows.
* Tube ROIs are drawn as thick magenta outlines with their nominal mM; the object mask (see
  :mod:`recon.calibrate.mask`) as a thin cyan outline; the background statistics of the TSC
  outside the mask are written under the calibration line.
* The fit legend reads ``S = 0.9489 C − 4.69, R² = 0.9990`` (signal units per mM and signal units).

Speed: matplotlib's object API on the Agg canvas (no pyplot, no global backend switch, safe in
batch workers), a fixed grid layout (no ``tight_layout``/``constrained_layout``), 80 dpi.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recon.atomic import atomic_file

DPI = 80
"""Resolution of qa.png (dots per inch)."""

_POS = ("R", "A", "S")
_NEG = ("L", "P", "I")
# plane name -> (RAS index of the plane normal, RAS index shown horizontally, letter on the viewer's
# right, RAS index shown vertically, letter at the top)
_PLANES = {
    "axial": (2, 0, "L", 1, "A"),
    "coronal": (1, 0, "L", 2, "S"),
    "sagittal": (0, 1, "P", 2, "S"),
}


@dataclasses.dataclass(frozen=True)
class Panel:
    """One slice panel: ``cut`` array axis at ``index``; ``h``/``v`` the array axes shown
    horizontally/vertically, flipped where ``flip_h``/``flip_v``; edge ``labels`` (left, right,
    bottom, top); ``title``."""

    plane: str
    cut: int
    index: int
    h: int
    v: int
    flip_h: bool
    flip_v: bool
    labels: tuple[str, str, str, str]
    title: str


def axis_directions(affine: np.ndarray | None) -> list[tuple[int, int]]:
    """For each array axis, (RAS index 0/1/2, sign +1/-1) of the patient direction it runs along.

    The assignment is the permutation of RAS axes that best matches the affine's columns (so an
    oblique plane still gets three distinct names); identity (R, A, S) without an affine.
    """
    if affine is None:
        return [(0, 1), (1, 1), (2, 1)]
    m = np.asarray(affine, dtype=float)[:3, :3]
    d = m / np.maximum(np.linalg.norm(m, axis=0, keepdims=True), 1e-30)  # columns = array axes in RAS
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[a], a]) for a in range(3)))
    return [(best[a], 1 if d[best[a], a] >= 0 else -1) for a in range(3)]


def _letter(ras: int, sign: int) -> str:
    return _POS[ras] if sign > 0 else _NEG[ras]


def panels(shape: Sequence[int], affine: np.ndarray | None = None, tubes: Sequence | None = None) -> list[Panel]:
    """The slice panels of the QA figure: axial, coronal, sagittal mid slices (+ axial through the tubes)."""
    dirs = axis_directions(affine)
    ras_to_axis = {r: a for a, (r, _) in enumerate(dirs)}
    out: list[Panel] = []

    def make(plane: str, index: int, note: str) -> Panel:
        normal, h_ras, right, v_ras, top = _PLANES[plane]
        cut, h, v = ras_to_axis[normal], ras_to_axis[h_ras], ras_to_axis[v_ras]
        flip_h = _letter(*dirs[h]) != right  # the + end of axis h is drawn on the right
        flip_v = _letter(*dirs[v]) != top
        rh, rv = _letter(*dirs[h]), _letter(*dirs[v])
        oh, ov = _letter(dirs[h][0], -dirs[h][1]), _letter(dirs[v][0], -dirs[v][1])
        left, rgt = (rh, oh) if flip_h else (oh, rh)
        bot, tp = (rv, ov) if flip_v else (ov, rv)
        where = ""
        if affine is not None:
            centre = (np.asarray(shape, dtype=float) - 1) / 2
            centre[cut] = index
            pos = np.asarray(affine, dtype=float) @ np.append(centre, 1.0)
            where = f" {_POS[normal]} {round(float(pos[normal])) + 0:+d} mm"
        return Panel(plane, cut, index, h, v, flip_h, flip_v, (left, rgt, bot, tp), f"{plane}{where}{note}")

    for plane in ("axial", "coronal", "sagittal"):
        cut = ras_to_axis[_PLANES[plane][0]]
        out.append(make(plane, int(shape[cut]) // 2, ""))
    if tubes:
        cut = ras_to_axis[2]
        k = int(round(float(np.mean([t.centre_vox[cut] for t in tubes]))))
        k = min(max(k, 0), int(shape[cut]) - 1)
        if k != int(shape[cut]) // 2:
            out.append(make("axial", k, " (tubes)"))
    return out


def cut2d(vol: np.ndarray, p: Panel) -> np.ndarray:
    """The 2D slice of ``vol`` for panel ``p`` as an array [vertical, horizontal] for ``origin="lower"``."""
    sl = np.take(np.asarray(vol), p.index, axis=p.cut)
    rest = [a for a in range(3) if a != p.cut]
    img = sl if rest.index(p.v) == 0 else sl.T  # rows = vertical axis
    if p.flip_h:
        img = img[:, ::-1]
    if p.flip_v:
        img = img[::-1, :]
    return img


def b0_limits(b0_hz: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, str]:
    """Symmetric colour limit (Hz) covering |B0| inside ``mask`` (all finite voxels without one),
    and matplotlib's ``extend`` ("both" when voxels outside the mask exceed it, else "neither")."""
    b = np.asarray(b0_hz, dtype=float)
    fin = np.isfinite(b)
    inside = fin & (np.asarray(mask, dtype=bool) if mask is not None else True)
    if not inside.any():
        inside = fin
    lim = float(np.abs(b[inside]).max()) if inside.any() else 0.0
    lim = lim if lim > 0 else 1.0
    extend = "both" if fin.any() and float(np.abs(b[fin]).max()) > lim else "neither"
    return lim, extend


def fit_label(fit) -> str:
    """``S = 0.9489 C − 4.69, R² = 0.9990`` for a :class:`recon.calibrate.fit.LinearFit`."""
    b = float(fit.intercept)
    sign = "−" if b < 0 else "+"
    s = f"S = {float(fit.slope):.4g} C {sign} {abs(b):.3g}"
    if getattr(fit, "r2", None) is not None:
        s += f", R² = {float(fit.r2):.4f}"
    return s


def _mask_for(echo1: np.ndarray, affine):
    from recon.calibrate.mask import object_mask
    from recon.errors import NareconError

    try:
        return object_mask(echo1, affine)
    except NareconError:
        return None


def build_qa_figure(
    echoes: Sequence[np.ndarray],
    *,
    tsc: np.ndarray | None = None,
    b0_hz: np.ndarray | None = None,
    tubes: Sequence | None = None,
    fit=None,
    title: str | None = None,
    tsc_max_mM: float | None = None,
    affine: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    background: dict[str, Any] | None = None,
):
    """The QA :class:`matplotlib.figure.Figure` (Agg canvas attached); see :func:`qa_figure`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    echoes = [np.abs(np.asarray(e)) for e in echoes]
    shape = (echoes[0] if echoes else np.asarray(tsc if tsc is not None else b0_hz)).shape
    if mask is None and echoes:
        mask = _mask_for(echoes[0], affine)
    rows: list[tuple[str, np.ndarray, dict, str]] = []
    for i, e in enumerate(echoes):
        vmax = float(np.percentile(e, 99.9)) or 1.0
        rows.append((f"echo {i + 1} |S|", e, {"cmap": "gray", "vmin": 0.0, "vmax": vmax}, "max"))
    if b0_hz is not None:
        b0 = np.asarray(b0_hz, dtype=float)
        lim, ext = b0_limits(b0, mask)
        rows.append(("B0 (Hz)", b0, {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}, ext))
    if tsc is not None:
        t = np.asarray(tsc, dtype=float)
        ref = t[mask] if mask is not None and mask.any() else t[np.isfinite(t)]
        vmax = float(tsc_max_mM or max(float(np.percentile(ref, 99.9)), 1.0))
        ext = ("min" if np.nanmin(t) < 0 else "neither") if np.nanmax(t) <= vmax else ("both" if np.nanmin(t) < 0 else "max")
        rows.append(("TSC (mM)", t, {"cmap": "viridis", "vmin": 0.0, "vmax": vmax}, ext))
    cuts = panels(shape, affine, tubes)
    tube_union = np.logical_or.reduce([np.asarray(t.mask, dtype=bool) for t in tubes]) if tubes else None
    n_img = len(rows)
    has_fit = fit is not None
    ncol = len(cuts)
    w_panel, h_panel, w_bar, h_fit, top_pad = 2.2, 2.2, 0.9, 2.4, 0.55
    fig_w = w_panel * ncol + w_bar + 0.6
    fig_h = h_panel * n_img + (h_fit if has_fit else 0.0) + top_pad + 0.15
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    FigureCanvasAgg(fig)
    y0 = 1.0 - top_pad / fig_h
    for r, (name, vol, kw, ext) in enumerate(rows):
        im = None
        for c, p in enumerate(cuts):
            x = (0.45 + c * w_panel) / fig_w
            y = y0 - (r + 1) * h_panel / fig_h
            ax = fig.add_axes((x, y + 0.06 / fig_h, (w_panel - 0.12) / fig_w, (h_panel - 0.3) / fig_h))
            im = ax.imshow(cut2d(vol, p), origin="lower", interpolation="nearest", aspect="equal", **kw)
            if mask is not None and name != "B0 (Hz)":
                m2 = cut2d(mask, p)
                if m2.any() and not m2.all():
                    ax.contour(m2.astype(np.float32), levels=[0.5], colors="c", linewidths=0.6)
            if tube_union is not None:
                m2 = cut2d(tube_union, p)
                if m2.any():  # one contour call for all tubes
                    ax.contour(m2.astype(np.float32), levels=[0.5], colors="m", linewidths=1.6)
                    if r == 0:
                        for tb in tubes:
                            yy, xx = np.nonzero(cut2d(tb.mask, p))
                            if xx.size:  # label on the side towards the panel centre
                                up = yy.mean() < m2.shape[0] / 2
                                ax.text(
                                    xx.mean(),
                                    yy.max() + 1.0 if up else yy.min() - 1.0,
                                    f"{tb.concentration_mM:g}",
                                    color="m",
                                    fontsize=6,
                                    ha="center",
                                    va="bottom" if up else "top",
                                )
            ax.set_axis_off()  # no tick machinery: the frame and the labels below are all that is needed
            if r == 0:  # direction marks and plane names once per column (they are the same in every row)
                left, right, bottom, top = p.labels
                for s_, xy, ha, va in (
                    (left, (0.01, 0.5), "left", "center"),
                    (right, (0.99, 0.5), "right", "center"),
                    (bottom, (0.5, 0.01), "center", "bottom"),
                    (top, (0.5, 0.99), "center", "top"),
                ):
                    ax.text(*xy, s_, transform=ax.transAxes, color="y", fontsize=7, ha=ha, va=va, fontweight="bold")
                ax.set_title(p.title, fontsize=8)
        fig.text(0.3 / fig_w, y0 - (r + 0.5) * h_panel / fig_h, name, rotation=90, fontsize=8, ha="center", va="center")
        cax = fig.add_axes(
            (
                (0.45 + ncol * w_panel + 0.05) / fig_w,
                y0 - (r + 1) * h_panel / fig_h + 0.3 / fig_h,
                0.12 / fig_w,
                (h_panel - 0.6) / fig_h,
            )
        )
        cb = fig.colorbar(im, cax=cax, extend=ext)
        cb.ax.tick_params(labelsize=6)
        cb.locator = MaxNLocator(5)
        cb.update_ticks()
    if has_fit:
        ax = fig.add_axes((0.75 / fig_w, 0.55 / fig_h, (fig_w * 0.55) / fig_w, (h_fit - 0.9) / fig_h))
        cc = np.asarray(fit.concentrations_mM, dtype=float)
        ss = np.asarray(fit.signals, dtype=float)
        sd = [t.sd for t in tubes] if tubes and len(tubes) == len(cc) else None
        ax.errorbar(cc, ss, yerr=sd, fmt="o", color="k", capsize=3, label="ROI mean ± SD")
        xx = np.linspace(0, max(cc.max(), 1.0) * 1.1, 50)
        ax.plot(xx, fit.slope * xx + fit.intercept, "r-", label=fit_label(fit))
        ax.set_xlabel("concentration (mM)", fontsize=8)
        ax.set_ylabel("signal", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    notes = []
    if background is None and tsc is not None and mask is not None:
        from recon.calibrate.mask import background_stats

        background = background_stats(tsc, mask)
    if background is not None and np.isfinite(background.get("mean", np.nan)):
        notes.append(
            f"TSC outside the object mask (+{background.get('margin_vox', 0)} vox):\n"
            f"  {background['mean']:.1f} ± {background['sd']:.1f} mM, min {background['min']:.1f}, "
            f"max {background['max']:.1f}\n  ({background['n_voxels']} voxels)"
        )
    if mask is not None:
        notes.append(f"object mask: {int(np.count_nonzero(mask))} voxels (cyan)")
    if tubes:
        notes.append("tube ROIs: magenta, nominal mM")
    if notes:
        x = (0.75 + fig_w * 0.55 + 0.3) / fig_w if has_fit else 0.02
        fig.text(x, (h_fit - 0.5) / fig_h if has_fit else 0.05 / fig_h, "\n".join(notes), fontsize=7, va="top")
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - 0.08 / fig_h, va="top")
    return fig


def qa_figure(
    path: str | os.PathLike,
    echoes: Sequence[np.ndarray],
    *,
    tsc: np.ndarray | None = None,
    b0_hz: np.ndarray | None = None,
    tubes: Sequence | None = None,
    fit=None,
    title: str | None = None,
    tsc_max_mM: float | None = None,
    affine: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    background: dict[str, Any] | None = None,
) -> Path:
    """Write the QA PNG to ``path`` atomically and return the path.

    echoes : echo images (complex or magnitude; magnitudes are shown). tsc : the TSC map in mM
    that is written (None omits the row). b0_hz : field map in Hz. tubes :
    :class:`recon.calibrate.tubes.Tube` list (ROI outlines). fit :
    :class:`recon.calibrate.fit.LinearFit` for the calibration-line panel (None omits it).
    affine : 4x4 voxel-to-RAS mm (plane names, L/R/A/P/S/I marks; without it array axes 0/1/2
    are taken as R/A/S). mask : object mask (default: :func:`recon.calibrate.mask.object_mask`
    of echo 1). background : :func:`recon.calibrate.mask.background_stats` of the TSC (default:
    computed from ``tsc`` and ``mask``).
    """
    fig = build_qa_figure(
        echoes,
        tsc=tsc,
        b0_hz=b0_hz,
        tubes=tubes,
        fit=fit,
        title=title,
        tsc_max_mM=tsc_max_mM,
        affine=affine,
        mask=mask,
        background=background,
    )
    dest = Path(path)
    with atomic_file(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return dest
