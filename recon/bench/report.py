"""Outputs of ``narecon bench-traj``: results.csv, results.md and the plots."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recon.bench.variants import RECON_METHODS, ROIS


# ----------------------------------------------------------------------------------- output
def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of the result rows (union of the columns, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _fmt_csv(r.get(c)) for c in cols})
    return buf.getvalue()


def _fmt_csv(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _f(v, nd=1):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def rows_to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown tables: design + PSF + SNR, then accuracy per reconstruction method."""
    out = ["## Design, PSF and SNR", ""]
    hdr = [
        "variant",
        "proj",
        "samples",
        "readout ms",
        "scan min",
        "in budget",
        "Gpk mT/m",
        "slew T/m/s",
        "FWHM none mm",
        "FWHM tissue mm",
        "peak tissue",
        "FWHM CSF mm",
        "peak CSF",
        "SNR tissue",
        "SNR/sqrt(s)",
        "SNR in budget",
    ]
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "---|" * len(hdr))
    for r in rows:
        slew = _f(r["peak_slew_T_m_s"], 0) + (" ⚠" if r.get("exceeds_slew_limit") else "")
        if r.get("averages_in_budget") == 0:
            in_budget = "– (over budget)"
        else:
            in_budget = _f(r.get("snr_in_budget"), 1)
        cells = [
            r["name"],
            str(r["projections"]),
            str(r["samples"]),
            _f(r["readout_ms"], 2),
            _f(r["scan_time_min"], 1),
            _f(r.get("within_budget")),
            _f(r["peak_gradient_mT_m"], 1),
            slew,
            _f(r["psf_fwhm_none_mm"], 2),
            _f(r["psf_fwhm_tissue_mm"], 2),
            _f(r["psf_peak_tissue"], 3),
            _f(r["psf_fwhm_csf_mm"], 2),
            _f(r["psf_peak_csf"], 3),
            _f(r.get("snr_tissue"), 1),
            _f(r.get("snr_efficiency_per_sqrt_s"), 2),
            in_budget,
        ]
        out.append("| " + " | ".join(cells) + " |")
    notes = []
    over_slew = [r["name"] for r in rows if r.get("exceeds_slew_limit")]
    if over_slew:
        lim = rows[0].get("slew_limit_T_m_s")
        notes.append(
            f"⚠ {', '.join(over_slew)}: peak slew above the limit of {_f(lim, 0)} T/m/s ([settings] slew_limit_t_m_s). "
            "These are ideal designs (the gradient switches on instantly), not realisable as they are; "
            "give smax_t_m_s for the slew-limited design."
        )
    over_budget = [r["name"] for r in rows if r.get("averages_in_budget") == 0]
    if over_budget:
        notes.append(
            f"Over budget: {', '.join(over_budget)}: one acquisition takes longer than scan_budget_min, so no complete "
            "acquisition fits and there is no SNR in the budget (SNR in budget = tissue SNR x sqrt(whole acquisitions "
            "that fit))."
        )
    if notes:
        out += [""] + notes
    methods = [m for m in RECON_METHODS if any(f"nrmse_{m}" in r for r in rows)]
    if methods:
        out += ["", "## Accuracy on the phantom (echo 1; bias in % of the ideal image)", ""]
        hdr = ["variant", "recon", "NRMSE"] + [f"{roi} %" for roi in ROIS] + ["time s", "peak MiB"]
        out.append("| " + " | ".join(hdr) + " |")
        out.append("|" + "---|" * len(hdr))
        for r in rows:
            for m in methods:
                if f"nrmse_{m}" not in r:
                    continue
                cells = [r["name"], m, _f(r[f"nrmse_{m}"], 3)]
                cells += [_f(r[f"bias_{roi}_{m}_pct"], 1) for roi in ROIS]
                cells += [_f(r[f"recon_time_{m}_s"], 2), _f(r[f"peak_mem_{m}_MiB"], 0)]
                out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _label(c: dict[str, Any]) -> str:
    """A variant's name in the plots, with ⚠ when its design exceeds the slew limit."""
    return c["name"] + (" ⚠" if c.get("exceeds_slew_limit") else "")


def write_plots(curves: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> list[str]:
    """PSF profiles, bias versus readout length and SNR versus scan time as PNG files in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out_dir = Path(out_dir)
    names = []
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for c in curves:
        for ax, d in zip(axs, ("none", "tissue", "csf")):
            r, prof = c[f"psf_{d}"]
            ax.plot(r, prof, label=_label(c))
    for ax, d in zip(axs, ("no decay", "tissue 0.6x3.5 / 0.4x23 ms", "CSF 54 ms")):
        ax.set_title(f"PSF, {d}")
        ax.set_xlabel("radius (mm)")
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
    axs[0].set_ylabel("PSF (relative to the no-decay peak)")
    if any(c.get("exceeds_slew_limit") for c in curves):
        fig.text(0.01, 0.01, "⚠ = design exceeds the slew limit (ideal design)", fontsize=7)
    axs[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "psf_profiles.png", dpi=110)
    plt.close(fig)
    names.append("psf_profiles.png")

    withb = [c for c in curves if "bias" in c]
    if withb:
        methods = [m for m in RECON_METHODS if any(m in c["bias"] for c in withb)]
        fig, axs = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4.5), sharey=True, squeeze=False)
        for ax, m in zip(axs[0], methods):
            for roi, mk in zip(ROIS, "osD^v"):
                pts = sorted((c["readout_ms"], c["bias"][m][roi]) for c in withb if m in c["bias"])
                ax.plot([a for a, _ in pts], [b for _, b in pts], marker=mk, ls="none", label=roi)
            for c in withb:  # which variant each column of points is
                if m in c["bias"]:
                    top = max(v for v in c["bias"][m].values() if math.isfinite(v)) if c["bias"][m] else 0.0
                    ax.annotate(
                        _label(c),
                        (c["readout_ms"], top),
                        fontsize=6,
                        rotation=90,
                        xytext=(0, 4),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                    )
            ax.set_title(f"ROI bias, {m}")
            ax.set_xlabel("readout (ms)")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xticks([1, 2, 5, 10, 20, 50])
            ax.axhline(0, color="k", lw=0.5)
            ax.grid(alpha=0.3)
        axs[0][0].set_ylabel("bias vs ideal echo-1 image (%)")
        axs[0][-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "bias_vs_readout.png", dpi=110)
        plt.close(fig)
        names.append("bias_vs_readout.png")

        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for c in withb:
            flagged = c.get("exceeds_slew_limit")
            ax.scatter(
                c["scan_time_min"], c["snr_tissue"], facecolors="none" if flagged else None, edgecolors="C3" if flagged else None
            )
            ax.annotate(_label(c), (c["scan_time_min"], c["snr_tissue"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        times = [c["scan_time_min"] for c in withb]
        t = np.linspace(min(times) * 0.8, max(times) * 1.1, 50)
        best = max(c["snr_tissue"] / math.sqrt(c["scan_time_min"]) for c in withb)
        ax.plot(t, best * np.sqrt(t), "k:", lw=0.8, label="best efficiency x sqrt(time)")
        ax.set_xlabel("scan time (min)")
        ax.set_ylabel("tissue SNR (pseudo-replica)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "snr_vs_scan_time.png", dpi=110)
        plt.close(fig)
        names.append("snr_vs_scan_time.png")
    return names
