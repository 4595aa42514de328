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
batch workers), a fixed grid layout (no ``tight_layout``/``constrained_layout``), 80 dpi. The
slice panels, their outlines and the colour bars are painted in numpy into one RGBA array that is
copied onto the canvas; the calibration-line panel is one axes whose ticks and grid are plain
lines (no Tick objects); PNG deflate level 1. At 64^3 the figure takes about a third of the
time of the previous one-axes-per-panel figure with contour outlines (0.23-0.35 s against
0.52-1.05 s, same process, interleaved, machine load 2). Outlines follow the voxel edges of
the upsampled masks (the previous contours cut the corners).
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

PNG_LEVEL = 1
"""zlib level of qa.png: 1 deflates the figure in a third of the default's (6) time for about 10 % more bytes."""

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


_PT = 1 / 72
"""One typographic point in inches."""


def _cmap_rgba(values: np.ndarray, cmap, vmin: float, vmax: float) -> np.ndarray:
    """uint8 RGBA of ``values`` through ``cmap`` on [vmin, vmax] (over/under/bad colours as imshow);
    transparent (NaN) voxels become the white figure background."""
    from matplotlib.colors import Normalize

    rgba = cmap(Normalize(vmin, vmax)(np.ma.masked_invalid(values)), bytes=True)
    rgba[rgba[..., 3] == 0] = 255
    return rgba


def _pixel_index(start_px: float, size_px: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvas pixels covered by ``n`` cells spanning [start_px, start_px + size_px) and the cell of each
    (nearest neighbour, the pixel centre decides, as Agg's nearest resampling)."""
    pix = np.arange(int(np.floor(start_px)), int(np.ceil(start_px + size_px)))
    cell = np.floor((pix + 0.5 - start_px) * n / size_px).astype(np.intp)
    keep = (cell >= 0) & (cell < n)
    return pix[keep], cell[keep]


def _outline(m: np.ndarray, thick: bool) -> np.ndarray:
    """Pixels on the boundary of the upsampled mask ``m``: the inside ring (1 px), or both sides of
    the edge (2 px) when ``thick``; the canvas edge is no boundary (as a contour that stops there)."""
    p = np.pad(m, 1, mode="edge")
    c = p[1:-1, 1:-1]
    nb = (p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:])
    inner = c & ~np.logical_and.reduce(nb)
    if not thick:
        return inner
    return inner | (~c & np.logical_or.reduce(nb))


class _Canvas:
    """The figure's pixels (RGBA uint8, row 0 at the top) painted in numpy and blitted by :meth:`artist`."""

    def __init__(self, fig) -> None:
        w, h = fig.canvas.get_width_height()
        self.px = np.full((h, w, 4), 255, dtype=np.uint8)
        self.h = h
        self.dpi = fig.dpi

    def box(self, x_in: float, y_in: float, w_in: float, h_in: float) -> tuple[float, float, float, float]:
        """Inches from the bottom-left -> (left px, top px, width px, height px) of the top-origin canvas."""
        d = self.dpi
        return x_in * d, self.h - (y_in + h_in) * d, w_in * d, h_in * d

    def paint(self, box, rgba: np.ndarray, layers: Sequence[tuple[np.ndarray, tuple[int, int, int], bool]] = ()) -> None:
        """Nearest-neighbour ``rgba`` [row 0 at the top] into ``box``; then outline each (mask, colour, thick)."""
        left, top, w, h = box
        cols, ci = _pixel_index(left, w, rgba.shape[1])
        rows, ri = _pixel_index(top, h, rgba.shape[0])
        region = rgba[np.ix_(ri, ci)]
        for m, colour, thick in layers:
            edge = _outline(m[np.ix_(ri, ci)], thick)
            region[edge, :3] = colour
            region[edge, 3] = 255
        self.px[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = region

    def artist(self):
        """A matplotlib artist that copies the pixels onto the Agg canvas (pixel for pixel, under every
        other artist: drawn first, zorder -1), without the resampling pass of ``figimage``."""
        from matplotlib.artist import Artist

        px = self.px

        class _Pixels(Artist):
            def draw(self, renderer) -> None:
                gc = renderer.new_gc()
                renderer.draw_image(gc, 0, 0, np.ascontiguousarray(px[::-1]))  # Agg: first row at the bottom
                gc.restore()

        a = _Pixels()
        a.set_zorder(-1)
        return a


def _colorbar(fig, canvas: _Canvas, rect, cmap, vmin: float, vmax: float, extend: str) -> None:
    """A vertical colour bar in ``rect`` (inches), drawn as matplotlib's ``fig.colorbar`` draws one:
    extension triangles of 5 % of the bar inside the rect, black 0.8 pt outline, outward ticks at
    :class:`~matplotlib.ticker.MaxNLocator` (5) with 6 pt labels on the right."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Polygon
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    x, y, w, h = rect
    lo, hi = extend in ("min", "both"), extend in ("max", "both")
    frac = 0.05  # matplotlib's default extendfrac
    length = h / (1 + frac * (lo + hi))
    yb = y + (frac * length if lo else 0.0)
    n = max(int(round(length * canvas.dpi)), 2)
    vals = vmin + (vmax - vmin) * (np.arange(n)[::-1] + 0.5) / n  # top row first
    canvas.paint(canvas.box(x, yb, w, length), _cmap_rgba(vals[:, None], cmap, vmin, vmax))
    tr = fig.dpi_scale_trans
    outline = [(x, yb), (x, yb + length), (x + w / 2, yb + length + frac * length if hi else yb + length)]
    outline += [(x + w, yb + length), (x + w, yb), (x + w / 2, yb - frac * length if lo else yb)]
    seam = 1.0 / canvas.dpi  # the triangles reach one pixel into the bar: no light seam at its ends
    if hi:
        tri = [(x, yb + length - seam), outline[2], (x + w, yb + length - seam)]
        fig.add_artist(Polygon(tri, closed=True, transform=tr, facecolor=cmap.get_over(), edgecolor="none"))
    if lo:
        tri = [(x + w, yb + seam), outline[5], (x, yb + seam)]
        fig.add_artist(Polygon(tri, closed=True, transform=tr, facecolor=cmap.get_under(), edgecolor="none"))
    fig.add_artist(Polygon(outline, closed=True, transform=tr, fill=False, edgecolor="k", linewidth=0.8, joinstyle="miter"))
    ticks = [
        t for t in MaxNLocator(5).tick_values(vmin, vmax) if vmin - 1e-9 * abs(vmax - vmin) <= t <= vmax + 1e-9 * abs(vmax - vmin)
    ]
    fmt = ScalarFormatter()
    fmt.create_dummy_axis()
    fmt.axis.set_view_interval(vmin, vmax)
    labels = fmt.format_ticks(ticks)
    xs, ys = [], []
    for t, s in zip(ticks, labels):
        ty = yb + (t - vmin) / (vmax - vmin) * length
        xs += [x + w, x + w + 3.5 * _PT, np.nan]
        ys += [ty, ty, np.nan]
        fig.text(x + w + 7 * _PT, ty, s, transform=tr, fontsize=6, ha="left", va="center")
    if fmt.get_offset():
        fig.text(x + w, y + h + 2 * _PT, fmt.get_offset(), transform=tr, fontsize=6, ha="left", va="bottom")
    fig.add_artist(Line2D(xs, ys, transform=tr, color="k", linewidth=0.8, solid_capstyle="butt"))


def _light_axes(fig, ax, xlabel: str, ylabel: str, size_in: tuple[float, float], labelsize: float, fontsize: float) -> None:
    """Ticks, tick labels, grid and axis labels of ``ax`` drawn as plain lines and texts, as matplotlib's
    axes draw them (AutoLocator's ticks, outward 3.5 pt, 0.8 pt; grid ``alpha=0.3``), without its tick
    objects (each Tick is four artists; they were half of the QA figure's time)."""
    from matplotlib import rcParams
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator, ScalarFormatter
    from matplotlib.transforms import ScaledTranslation, blended_transform_factory

    ax.xaxis.set_visible(False)
    ax.yaxis.set_visible(False)
    grid = dict(color=rcParams["grid.color"], alpha=0.3, linewidth=rcParams["grid.linewidth"], zorder=0.5)
    tick = dict(color="k", linewidth=0.8, solid_capstyle="butt", clip_on=False)
    widest = 0.0
    for axis, lim, length_pt, per_label in (("x", ax.get_xlim(), size_in[0] * 72, 3), ("y", ax.get_ylim(), size_in[1] * 72, 2)):
        nbins = max(min(int(length_pt // (labelsize * per_label)), 9), 1)  # Axis.get_tick_space, MaxNLocator("auto")
        lo, hi = min(lim), max(lim)
        tol = 1e-9 * (hi - lo)
        ticks = [t for t in MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if lo - tol <= t <= hi + tol]
        fmt = ScalarFormatter()
        fmt.create_dummy_axis()
        fmt.axis.set_view_interval(lo, hi)
        labels = fmt.format_ticks(ticks)
        if axis == "x":
            tr = blended_transform_factory(ax.transData, ax.transAxes)
            out = tr + ScaledTranslation(0, -3.5 * _PT, fig.dpi_scale_trans)
            lab = tr + ScaledTranslation(0, -7 * _PT, fig.dpi_scale_trans)
            for t, s_ in zip(ticks, labels):
                ax.add_line(Line2D([t, t], [0, 1], transform=tr, **grid))
                ax.add_line(Line2D([t, t], [0, 0], transform=tr, **tick))
                ax.add_line(Line2D([t, t], [0, 0], transform=out, **tick))
                ax.text(t, 0, s_, transform=lab, fontsize=labelsize, ha="center", va="top")
        else:
            tr = blended_transform_factory(ax.transAxes, ax.transData)
            lab = tr + ScaledTranslation(-7 * _PT, 0, fig.dpi_scale_trans)
            for t, s_ in zip(ticks, labels):
                ax.add_line(Line2D([0, 1], [t, t], transform=tr, **grid))
                ax.add_line(Line2D([0, -3.5 * _PT / size_in[0]], [t, t], transform=tr, **tick))
                ax.text(0, t, s_, transform=lab, fontsize=labelsize, ha="right", va="center")
            widest = max((len(s_) for s_ in labels), default=0) * 0.64 * labelsize  # DejaVu Sans digits: 0.64 em
    ax.text(
        0.5,
        0,
        xlabel,
        transform=ax.transAxes + ScaledTranslation(0, -(10.5 + labelsize) * _PT, fig.dpi_scale_trans),
        fontsize=fontsize,
        ha="center",
        va="top",
    )
    ax.text(
        0,
        0.5,
        ylabel,
        transform=ax.transAxes + ScaledTranslation(-(11 + widest) * _PT, 0, fig.dpi_scale_trans),
        fontsize=fontsize,
        ha="center",
        va="bottom",
        rotation=90,
        rotation_mode="anchor",
    )


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
    """The QA :class:`matplotlib.figure.Figure` (Agg canvas attached); see :func:`qa_figure`.

    The slice panels, their outlines and the colour bars are painted into one RGBA array in numpy
    and copied onto the canvas as it is (pixel for pixel, no resampling); only the texts, the
    bar outlines and the calibration-line panel are matplotlib artists. Panel geometry is that of
    an ``imshow`` (``aspect="equal"``, nearest neighbour) in a fixed grid of axes.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
    canvas = _Canvas(fig)
    tr = fig.dpi_scale_trans  # texts are placed in inches from the bottom-left corner
    y0 = fig_h - top_pad
    cyan, magenta = (0, 191, 191), (191, 0, 191)  # matplotlib's "c" and "m"
    mask2 = {id(p): cut2d(mask, p).astype(bool) for p in cuts} if mask is not None else {}
    tube2 = {id(p): cut2d(tube_union, p) for p in cuts} if tube_union is not None else {}
    for r, (name, vol, kw, ext) in enumerate(rows):
        cmap = colormaps[kw["cmap"]]
        for c, p in enumerate(cuts):
            img = cut2d(vol, p)
            nv, nh = img.shape
            ax_x, ax_y = 0.45 + c * w_panel, y0 - (r + 1) * h_panel + 0.06
            ax_w, ax_h = w_panel - 0.12, h_panel - 0.3
            scale = min(ax_w / nh, ax_h / nv)  # aspect "equal": the box shrinks about its centre
            bw, bh = nh * scale, nv * scale
            bx, by = ax_x + (ax_w - bw) / 2, ax_y + (ax_h - bh) / 2
            layers = []
            if id(p) in mask2 and name != "B0 (Hz)":
                layers.append((mask2[id(p)][::-1], cyan, False))
            if id(p) in tube2 and tube2[id(p)].any():
                layers.append((tube2[id(p)][::-1], magenta, True))
            canvas.paint(canvas.box(bx, by, bw, bh), _cmap_rgba(img[::-1], cmap, kw["vmin"], kw["vmax"]), layers)
            if r == 0:
                if id(p) in tube2 and tube2[id(p)].any():
                    for tb in tubes:
                        yy, xx = np.nonzero(cut2d(tb.mask, p))
                        if xx.size:  # label on the side towards the panel centre
                            up = yy.mean() < nv / 2
                            fig.text(
                                bx + (xx.mean() + 0.5) * scale,
                                by + ((yy.max() + 1.0 if up else yy.min() - 1.0) + 0.5) * scale,
                                f"{tb.concentration_mM:g}",
                                transform=tr,
                                color="m",
                                fontsize=6,
                                ha="center",
                                va="bottom" if up else "top",
                            )
                left, right, bottom, top = p.labels  # direction marks and plane names once per column
                for s_, (fx, fy), ha, va in (
                    (left, (0.01, 0.5), "left", "center"),
                    (right, (0.99, 0.5), "right", "center"),
                    (bottom, (0.5, 0.01), "center", "bottom"),
                    (top, (0.5, 0.99), "center", "top"),
                ):
                    fig.text(bx + fx * bw, by + fy * bh, s_, transform=tr, color="y", fontsize=7, ha=ha, va=va, fontweight="bold")
                fig.text(bx + bw / 2, by + bh + 6 * _PT, p.title, transform=tr, fontsize=8, ha="center", va="baseline")
        fig.text(0.3 / fig_w, (y0 - (r + 0.5) * h_panel) / fig_h, name, rotation=90, fontsize=8, ha="center", va="center")
        bar = (0.45 + ncol * w_panel + 0.05, y0 - (r + 1) * h_panel + 0.3, 0.12, h_panel - 0.6)
        _colorbar(fig, canvas, bar, cmap, kw["vmin"], kw["vmax"], ext)
    fig.add_artist(canvas.artist())  # under every artist (the fit axes' patch too)
    if has_fit:
        ax = fig.add_axes((0.75 / fig_w, 0.55 / fig_h, (fig_w * 0.55) / fig_w, (h_fit - 0.9) / fig_h))
        cc = np.asarray(fit.concentrations_mM, dtype=float)
        ss = np.asarray(fit.signals, dtype=float)
        sd = [t.sd for t in tubes] if tubes and len(tubes) == len(cc) else None
        ax.errorbar(cc, ss, yerr=sd, fmt="o", color="k", capsize=3, label="ROI mean ± SD")
        xx = np.linspace(0, max(cc.max(), 1.0) * 1.1, 50)
        ax.plot(xx, fit.slope * xx + fit.intercept, "r-", label=fit_label(fit))
        ax.legend(fontsize=7, loc="upper left")
        _light_axes(fig, ax, "concentration (mM)", "signal", (fig_w * 0.55, h_fit - 0.9), labelsize=7, fontsize=8)
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
        fig.savefig(tmp, format="png", dpi=DPI, pil_kwargs={"compress_level": PNG_LEVEL})
    return dest
