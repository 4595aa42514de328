"""QA figure (qa.png): mid slices of the echoes, field map and TSC with tube ROIs, and the calibration line.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so it is
safe in batch workers without a display. Slices are shown in array-index orientation (axis 0
horizontal, axis 1 vertical, origin lower left); the panel titles name the array axis cut.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recon.atomic import atomic_file


def _cuts(shape, tubes) -> list[tuple[int, int, str]]:
    """(axis, index, label) of the slices to show: three mid slices, plus one through the tubes."""
    cuts = [(a, shape[a] // 2, f"axis {a} = {shape[a] // 2} (mid)") for a in (2, 1, 0)]
    if tubes:
        k = int(round(float(np.mean([t.centre_vox[2] for t in tubes]))))
        k = min(max(k, 0), shape[2] - 1)
        if k != shape[2] // 2:
            cuts.append((2, k, f"axis 2 = {k} (tubes)"))
    return cuts


def _take(vol: np.ndarray, axis: int, idx: int) -> np.ndarray:
    return np.take(vol, idx, axis=axis).T


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
) -> Path:
    """Write the QA PNG to ``path`` atomically and return the path.

    echoes : echo images (complex or magnitude; magnitudes are shown). tsc : TSC map in mM.
    b0_hz : field map in Hz. tubes : :class:`recon.calibrate.tubes.Tube` list (ROI outlines).
    fit : :class:`recon.calibrate.fit.LinearFit` for the calibration-line panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    echoes = [np.abs(np.asarray(e)) for e in echoes]
    rows: list[tuple[str, np.ndarray, dict]] = []
    for i, e in enumerate(echoes):
        rows.append(
            (f"echo {i + 1} |S|", e, {"cmap": "gray", "vmin": 0, "vmax": float(np.percentile(e, 99.9))})
        )
    if b0_hz is not None:
        b0 = np.asarray(b0_hz, dtype=float)
        lim = float(np.percentile(np.abs(b0[np.isfinite(b0)]), 99)) or 1.0
        rows.append(("B0 (Hz)", b0, {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}))
    if tsc is not None:
        t = np.asarray(tsc, dtype=float)
        vmax = tsc_max_mM or max(float(np.percentile(t, 99.9)), 1.0)
        rows.append(("TSC (mM)", t, {"cmap": "viridis", "vmin": 0, "vmax": vmax}))
    shape = (echoes[0] if echoes else np.asarray(tsc)).shape
    cuts = _cuts(shape, tubes)
    nrow = len(rows) + (1 if fit is not None else 0)
    ncol = len(cuts)
    fig = Figure(figsize=(3.0 * ncol + 1.0, 2.8 * nrow), dpi=90)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(nrow, ncol + 1, width_ratios=[1] * ncol + [0.06])
    for r, (name, vol, kw) in enumerate(rows):
        im = None
        for c, (axis, idx, lab) in enumerate(cuts):
            ax = fig.add_subplot(gs[r, c])
            im = ax.imshow(_take(vol, axis, idx), origin="lower", interpolation="nearest", **kw)
            if tubes:
                for tb in tubes:
                    m = _take(tb.mask, axis, idx)
                    if m.any():
                        ax.contour(m.astype(float), levels=[0.5], colors="r", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(lab, fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
        fig.colorbar(im, cax=fig.add_subplot(gs[r, ncol]))
    if fit is not None:
        ax = fig.add_subplot(gs[nrow - 1, :ncol])
        cc = np.asarray(fit.concentrations_mM, dtype=float)
        ss = np.asarray(fit.signals, dtype=float)
        sd = [t.sd for t in tubes] if tubes and len(tubes) == len(cc) else None
        ax.errorbar(cc, ss, yerr=sd, fmt="o", color="k", capsize=3, label="ROI mean +/- SD")
        xx = np.linspace(0, max(cc.max(), 1.0) * 1.1, 50)
        r2 = "" if fit.r2 is None else f", R$^2$ = {fit.r2:.4f}"
        ax.plot(
            xx, fit.slope * xx + fit.intercept, "r-", label=f"S = {fit.slope:.4g} C + {fit.intercept:.3g}{r2}"
        )
        ax.set_xlabel("concentration (mM)")
        ax.set_ylabel("signal")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    dest = Path(path)
    with atomic_file(dest) as tmp:
        fig.savefig(tmp, format="png")
    return dest
