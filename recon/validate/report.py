"""Validation outputs: every row as CSV, a Markdown table per case, plots of bias against the case parameters."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from recon.validate.run import BOUNDS, MEASURES, fmt, summarise

SUFFIXES = tuple("" if m == "eroded" else "_" + m.replace("-", "_") for m in MEASURES)
"""summarise()'s key suffix of each measure, in MEASURES order."""

COLUMNS = (
    "case",
    "mode",
    "trajectory",
    "matrix",
    "snr",
    "min_tube_radius_vox",
    "quantity",
    "class",
    "measure",
    "n_voxels",
    "value",
    "bound",
    "passed",
)


def write_csv(records: list[dict[str, Any]], path: Path) -> None:
    """One row per case, mode and measured quantity (value: relative bias, or mM for tubes)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for rec in records:
            c = rec["case"]
            rmin = min(t["radius_vox"] for t in c["tubes"])
            for mode, m in rec["modes"].items():
                head = (c["index"], mode, c["trajectory"], c["matrix"], c["snr"], f"{rmin:.2f}")
                if m.get("error"):
                    w.writerow(
                        head
                        + (
                            "error",
                            m["error"],
                            "",
                            "",
                            "",
                            "",
                            False,
                        )
                    )
                for r in m["rows"]:
                    w.writerow(
                        head
                        + (
                            r["quantity"],
                            r["class"],
                            r.get("measure", "eroded"),
                            "" if r["n_voxels"] is None else r["n_voxels"],
                            "" if r["value"] is None else f"{r['value']:.5g}",
                            "" if r["bound"] is None else r["bound"],
                            "" if r["passed"] is None else bool(r["passed"]),
                        )
                    )


def _pass(s: dict[str, Any], suffix: str = "") -> str:
    p = s.get("passed" + suffix)
    if s["error"]:
        return "error"
    if p is None:
        return "-"
    return "yes" if p else f"no ({s['n_failed' + suffix]})"


def markdown(records: list[dict[str, Any]], seed: int) -> str:
    """Summary table (one line per case and mode, each compartment class measured four ways) and every scored quantity."""
    lines = [
        f"Seed {seed}, {len(records)} cases. Each compartment class is given as {' / '.join(MEASURES)}: "
        f"eroded = reconstructed / true mean TSC - 1 in the truth's labels eroded by the point response; regional = the "
        f"system-model regional value (recon.calibrate.regions, default echo-ratio refinement) over the truth.json labels "
        f"/ the compartment's TSC - 1; "
        f"regional-fine = over the phantom's labels sampled 4x finer, class priors unrefined; regional-fine-echo = fine "
        f"labels with the tissue short-T2* fraction refined from the echo ratio; regional-fine-echo-t1 = the same with the "
        f"error of the T1 priors (true vs prior T1 of the region and the tubes, at the protocol's TR) divided out. "
        f"Tubes: deviation from the calibration line "
        f"in mM. Bounds: tubes {BOUNDS['tube_mM']} mM, fluids {100 * BOUNDS['fluid']:.0f} %, lesions "
        f"{100 * BOUNDS['lesion']:.0f} %, GM/WM {100 * BOUNDS['tissue']:.0f} %, 2 mm sphere {100 * BOUNDS['sphere']:.0f} % "
        f"(twice these for cases with a tube below 2 voxels). Pass: every scored bound of that measure (with the tubes "
        f"and the 2 mm sphere).",
        "",
        "| case | mode | traj | matrix | SNR | tubes | min r (vox) | worst tube (mM) | worst fluid | worst lesion "
        "| worst GM/WM | 2 mm sphere | pass " + " / ".join(MEASURES) + " |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    n_pass: dict[str, list[int]] = {}
    sfx = SUFFIXES
    for rec in records:
        for mode in rec["modes"]:
            s = summarise(rec, mode)
            for x in sfx:
                n_pass.setdefault(mode + x, [0, 0])
                if s.get("passed" + x) is not None:
                    n_pass[mode + x][1] += 1
                    n_pass[mode + x][0] += int(s["passed" + x])

            def three(cls: str, s=s) -> str:
                return " / ".join(fmt(s.get(f"worst_{cls}{x}")) for x in sfx)

            lines.append(
                f"| {s['case']} | {mode} | {s['trajectory']} | {s['matrix']} | {s['snr']:g} | {s['n_tubes']} | "
                f"{s['min_tube_radius_vox']:.2f} | {fmt(s['worst_tube_mM'], False)} | {three('fluid')} | "
                f"{three('lesion')} | {three('tissue')} | {fmt(s['worst_sphere'])} | "
                + (f"error: {s['error'][:60]}" if s["error"] else " / ".join(_pass(s, x) for x in sfx))
                + " |"
            )
    lines.append("")
    for key, (p, n) in n_pass.items():
        if n:
            mode, _, x = key.partition("_")
            name = mode + (" " + MEASURES[SUFFIXES.index("_" + x)] if x else "")
            lines.append(f"- {name}: {p} of {n} cases pass every scored bound.")
    lines += ["", "### Every scored quantity", ""]
    for rec in records:
        c = rec["case"]
        for mode, m in rec["modes"].items():
            cells = []
            for r in m["rows"]:
                v = (
                    "n/a"
                    if r["value"] is None
                    else (fmt(r["value"], False) + " mM" if r["class"] == "tube_mM" else fmt(r["value"]))
                )
                mark = "" if r["passed"] is None else ("" if r["passed"] else " **FAIL**")
                meas = r.get("measure", "eroded")
                tag = f" [{meas}]" if meas not in ("line", "voxels") else ""
                cells.append(f"{r['quantity']}{tag} {v}{mark}")
            lines.append(f"- case {c['index']} {mode} ({c['trajectory']} {c['matrix']}^3): " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def plots(records: list[dict[str, Any]], path: Path) -> None:
    """Bias against tube radius, tissue T2* (short), SNR and matrix (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    marks = {"tube_mM": "o", "fluid": "s", "lesion": "^", "tissue": "D", "sphere": "x"}
    for rec in records:
        c = rec["case"]
        for mode, m in rec["modes"].items():
            for r in m["rows"]:
                if r["value"] is None or r["class"] not in marks or r.get("measure", "eroded") not in ("eroded", "line", "voxels"):
                    continue
                if r["class"] == "tube_mM":
                    y = 100 * r["value"] / float(r["quantity"].split()[1])
                else:
                    y = 100 * r["value"]
                xs = (
                    min(t["radius_vox"] for t in c["tubes"]),
                    1e3 * c["relaxation"]["white_matter"]["t2s_short_s"],
                    c["snr"],
                    c["matrix"],
                )
                for ax, x in zip(axes.ravel(), xs):
                    ax.scatter(x, y, marker=marks[r["class"]], s=14, alpha=0.6, c="C0" if mode == "default" else "C3")
    for ax, lab in zip(axes.ravel(), ("smallest tube radius (voxels)", "WM short T2* (ms)", "raw-data SNR", "matrix")):
        ax.set_xlabel(lab)
        ax.set_ylabel("bias (%)")
        ax.axhline(0, color="k", lw=0.5)
        for b in (5, -5):
            ax.axhline(b, color="grey", lw=0.5, ls="--")
    axes[0, 0].set_title("o tubes, s fluids, ^ lesions, D GM/WM, x 2 mm sphere; blue default, red iterative", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_all(records: list[dict[str, Any]], out: Path, seed: int) -> None:
    write_csv(records, out / "validation.csv")
    (out / "validation.md").write_text(markdown(records, seed))
    (out / "cases.json").write_text(json.dumps(records, indent=1, default=float) + "\n")
    plots(records, out / "bias.png")
