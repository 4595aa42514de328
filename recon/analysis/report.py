"""Study outputs: one CSV per table, PNG figures (matplotlib, Agg) and a Markdown report.

CSV files keep full precision; the Markdown report shows two decimals computed from the
unrounded values (so 22.28 / 27.53 = 0.809 is shown as 0.81, not as the ratio of rounded
numbers), p-values with three significant digits.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from recon.analysis import study as st

FILES = {
    "measurements": "roi_measurements.csv",
    "lesions": "lesion_table.csv",
    "summary": "baseline_summary.csv",
    "ttests": "paired_ttests.csv",
    "timecourse": "tumour_timecourse.csv",
    "rebound": "tumour_rebound.csv",
    "volumes": "tumour_volumes.csv",
    "counts": "sessions_per_timepoint.csv",
}

EMPTY_COLUMNS = {
    "ttests": [
        "test",
        "measure",
        "unit",
        "timepoint",
        "a",
        "b",
        "n_pairs",
        "n_missing",
        "mean_a",
        "mean_b",
        "mean_diff",
        "sd_diff",
        "t",
        "df",
        "p",
        "cohen_dz",
        "p_holm",
        "p_bh",
    ],
    "summary": ["timepoint", "tissue", "measure", "unit", "n", "mean", "sd", "min", "max"],
    "counts": ["timepoint", "lesions_expected", "sessions_measured", "missing"],
}


def fmt(v, nd: int = 2) -> str:
    """Two decimals (or ``nd``) for floats, '' for NaN/None, str otherwise."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{nd}f}"
    return str(v)


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def write_csv(rows: list[dict], path: Path, columns: list[str] | None = None) -> None:
    cols = columns or (list(rows[0].keys()) if rows else [])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})


def md_table(rows: list[dict], columns: list[str], formats: dict | None = None) -> str:
    formats = formats or {}
    if not rows:
        return "_(no rows)_\n"
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(formats.get(c, fmt)(r.get(c)) for c in columns) + " |")
    return "\n".join(out) + "\n"


def time_axis(timepoints: list[str]) -> tuple[dict[str, float], str, bool]:
    """x positions of the time points for the time-course figures: days after treatment from the
    labels (pre = 0, 48h = 2, 1w = 7, 1m = 30.4, 3m = 91.3; :func:`recon.analysis.stats.timepoint_hours`),
    or, when a label has no time (e.g. "visit2"), evenly spaced categories. Returns
    (positions, x label, whether it is a real time axis)."""
    from recon.analysis.stats import timepoint_hours

    hours = [timepoint_hours(tp) for tp in timepoints]
    if all(h is not None for h in hours):
        return {tp: h / 24.0 for tp, h in zip(timepoints, hours)}, "days after treatment (pre = 0)", True
    return {tp: float(i) for i, tp in enumerate(timepoints)}, "time point (labels without a time: evenly spaced)", False


def _label_time_axis(ax, timepoints, xpos, xlabel, on_time_axis) -> None:
    ax.set_xlabel(xlabel)
    if not on_time_axis:
        ax.set_xticks([xpos[tp] for tp in timepoints], timepoints)
        return
    top = ax.secondary_xaxis("top")  # the labels where they are on the time axis
    top.set_xticks([xpos[tp] for tp in timepoints], timepoints, fontsize=7, rotation=90)


def _figures(data: st.StudyData, tc: list[dict], vols: list[dict], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    xpos, xlabel, on_time_axis = time_axis(data.timepoints)
    lesions = sorted({(r["subject"], r["lesion"]) for r in tc})
    if tc:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for subj, les in lesions:
            rr = [r for r in tc if (r["subject"], r["lesion"]) == (subj, les)]
            x = [xpos[r["timepoint"]] for r in rr]
            axes[0].plot(x, [r["tsc_mM"] for r in rr], "o-", label=f"{subj}/{les}")
            axes[1].plot(x, [r["ratio"] for r in rr], "o-", label=f"{subj}/{les}")
        for ax, yl in zip(axes, ("tumour TSC (mM)", f"tumour TSC / {data.ref}")):
            _label_time_axis(ax, data.timepoints, xpos, xlabel, on_time_axis)
            ax.set_ylabel(yl)
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, ncol=2)
        fig.suptitle("Tumour time course per lesion")
        fig.tight_layout()
        fig.savefig(out / "timecourse_tumour.png", dpi=110)
        plt.close(fig)
        figs.append(("Tumour TSC and ratio per lesion over time", "timecourse_tumour.png"))
    if vols:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for subj, les in sorted({(r["subject"], r["lesion"]) for r in vols}):
            rr = [r for r in vols if (r["subject"], r["lesion"]) == (subj, les)]
            ax.plot([xpos[r["timepoint"]] for r in rr], [r["volume_mL"] for r in rr], "o-", label=f"{subj}/{les}")
        _label_time_axis(ax, data.timepoints, xpos, xlabel, on_time_axis)
        ax.set_ylabel("tumour volume (mL)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "timecourse_volume.png", dpi=110)
        plt.close(fig)
        figs.append(("Tumour volume (pi/6 a b m c) per lesion", "timecourse_volume.png"))
    # box plots per tissue, one panel per measure, tissues x time points
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for ax, measure, yl in ((axes[0], "tsc", "TSC (mM)"), (axes[1], "ratio", f"TSC / {data.ref}")):
        tissues = [t for t in data.tissues if not (measure == "ratio" and t == data.ref)]
        groups, labels, positions = [], [], []
        ntp = len(data.timepoints)
        width = 0.8 / max(ntp, 1)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ti, t in enumerate(tissues):
            for k, tp in enumerate(data.timepoints):
                vals = [v for v in st.unit_values(data, t, tp, measure).values() if math.isfinite(v)]
                if vals:
                    groups.append(vals)
                    positions.append(ti + (k - (ntp - 1) / 2) * width)
                    labels.append(k)
        if groups:
            bp = ax.boxplot(groups, positions=positions, widths=width * 0.85, patch_artist=True, showfliers=True)
            for patch, k in zip(bp["boxes"], labels):
                patch.set_facecolor(colors[k % len(colors)])
                patch.set_alpha(0.6)
        ax.set_xticks(range(len(tissues)), tissues)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3, axis="y")
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k % len(colors)], alpha=0.6) for k in range(ntp)]
        ax.legend(handles, data.timepoints, fontsize=7, title="time point", title_fontsize=7)
    fig.suptitle("Per-tissue distributions (lesion tissues per lesion, CSF/WM/GM per subject)")
    fig.tight_layout()
    fig.savefig(out / "boxplot_tissues.png", dpi=110)
    plt.close(fig)
    figs.append(("Box plots per tissue and time point", "boxplot_tissues.png"))
    return figs


def write_study_outputs(
    data: st.StudyData, out: str | os.PathLike, rise_threshold_mM: float = 0.0, sessions_path: str = ""
) -> dict[str, str]:
    """Write all tables, figures and ``report.md`` into the (already created, empty) folder ``out``."""
    out = Path(out)
    tables = {
        "measurements": data.roi_rows,
        "lesions": st.lesion_table(data),
        "summary": st.summary_table(data),
        "ttests": st.ttest_table(data),
        "timecourse": st.timecourse_table(data) if "tumour" in data.tissues else [],
        "rebound": st.rebound_table(data, threshold_mM=rise_threshold_mM) if "tumour" in data.tissues else [],
        "volumes": st.volume_table(data),
        "counts": st.counts_table(data),
    }
    written = {}
    for key, rows in tables.items():
        if rows or key in ("ttests", "summary", "counts"):
            cols = None if rows else EMPTY_COLUMNS.get(key)
            write_csv(rows, out / FILES[key], cols)
            written[key] = FILES[key]
    figs = _figures(data, tables["timecourse"], tables["volumes"], out)
    (out / "report.md").write_text(_markdown(data, tables, written, figs, rise_threshold_mM, sessions_path))
    written["report"] = "report.md"
    return written


def _markdown(data, tables, written, figs, thr, sessions_path) -> str:
    L = []
    L.append("# Sodium MRI study report\n")
    n_les = len({(s.subject, s.lesion) for s in data.sessions})
    n_sub = len({s.subject for s in data.sessions})
    L.append(
        f"Sessions table: `{sessions_path}`. {n_sub} subject(s), {n_les} lesion(s), time points "
        f"{', '.join(data.timepoints)} (baseline **{data.baseline}**). {len(data.tsc)} session(s) measured. "
        f"TSC in mM (ROI weighted means); ratios are TSC / {data.ref} in the same session, computed from "
        "unrounded values and shown with two decimals.\n"
    )
    L.append("Files: " + ", ".join(f"[{v}]({v})" for k, v in written.items() if k != "report") + ".\n")
    L.append("## Sessions per time point\n")
    L.append(md_table(tables["counts"], ["timepoint", "lesions_expected", "sessions_measured", "missing"]))
    L.append(f"\n## Baseline ({data.baseline}): per-tissue summary\n")
    L.append("Lesion tissues (tumour, contralateral, oedema) are counted per lesion; CSF, WM and GM per subject.\n")
    L.append(md_table(tables["summary"], ["tissue", "measure", "unit", "n", "mean", "sd", "min", "max"]))
    L.append("\n## Per-session values (the study's table)\n")
    cols = (
        ["subject", "lesion", "timepoint"]
        + [f"{t}_mM" for t in data.tissues]
        + [f"{t}_ratio" for t in data.tissues if t != data.ref]
    )
    L.append(md_table(tables["lesions"], cols))
    L.append("\n## Paired t-tests\n")
    L.append(
        "Two-sided paired t-tests (scipy.stats.ttest_rel) on complete pairs only; n = pairs used, "
        "missing = units with only one side. Effect size Cohen's d_z = mean(diff) / SD(diff). "
        f"Means in the measure's unit (mM for TSC, 1 for ratios). The {sum(1 for r in tables['ttests'] if math.isfinite(r['p']))} "
        "tests with a p-value form one family: p_holm is Holm's step-down adjustment (family-wise error "
        "rate), p_bh Benjamini-Hochberg's (false discovery rate); judge significance by these, not by "
        "the raw p.\n"
    )
    L.append(
        md_table(
            tables["ttests"],
            [
                "test",
                "measure",
                "timepoint",
                "n_pairs",
                "n_missing",
                "mean_a",
                "mean_b",
                "mean_diff",
                "t",
                "df",
                "p",
                "p_holm",
                "p_bh",
                "cohen_dz",
            ],
            {"p": fmt_p, "p_holm": fmt_p, "p_bh": fmt_p, "t": lambda v: fmt(v, 3), "cohen_dz": lambda v: fmt(v, 3)},
        )
    )
    if tables["timecourse"]:
        L.append("\n## Tumour time courses (change from each lesion's baseline)\n")
        L.append(
            md_table(
                tables["timecourse"],
                [
                    "subject",
                    "lesion",
                    "timepoint",
                    "tsc_mM",
                    "change_mM",
                    "change_pct",
                    "ratio",
                    "ratio_change",
                ],
                {"change_pct": lambda v: fmt(v, 1)},
            )
        )
        L.append(f"\n## Rise at the last time point ({data.timepoints[-1]})\n")
        flagged = [f"{r['subject']}/{r['lesion']}" for r in tables["rebound"] if r["rises_at_last"] == "yes"]
        L.append(
            f"Flagged (TSC at {data.timepoints[-1]} exceeds the previous measured time point by more than "
            f"{thr:g} mM): **{', '.join(flagged) if flagged else 'none'}**.\n"
        )
        L.append(
            md_table(
                tables["rebound"],
                [
                    "subject",
                    "lesion",
                    "n_timepoints",
                    "missing",
                    "baseline_mM",
                    "previous_timepoint",
                    "last_mM",
                    "rise_mM",
                    "rises_at_last",
                    "fell_before",
                ],
            )
        )
    if tables["volumes"]:
        L.append("\n## Tumour volumes\n")
        L.append(
            "V = pi/6 * a * b * m * c with a, b the largest perpendicular diameters (mm), m the slice "
            "thickness (mm) and c the number of slices: mm^3; mL = mm^3 / 1000. "
            "Change from each lesion's baseline.\n"
        )
        L.append(
            md_table(
                tables["volumes"],
                [
                    "subject",
                    "lesion",
                    "timepoint",
                    "a_mm",
                    "b_mm",
                    "m_mm",
                    "c",
                    "volume_mL",
                    "change_mL",
                    "change_pct",
                ],
                {
                    "volume_mL": lambda v: fmt(v, 3),
                    "change_mL": lambda v: fmt(v, 3),
                    "change_pct": lambda v: fmt(v, 1),
                    "c": lambda v: fmt(v, 0),
                },
            )
        )
    L.append("\n## Figures\n")
    for title, fn in figs:
        L.append(f"**{title}**\n\n![{title}]({fn})\n")
    return "\n".join(L)
