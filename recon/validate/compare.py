"""Default against ``--b0 iterative`` on validation records: per-case tables, pass counts, where iterative is worse.

Reads the records that ``narecon validate ... --iterative all --out DIR`` wrote (DIR/cases.json, or
DIR.partial/case_*.json of an unfinished chunk) and writes a Markdown report and every row as CSV
(:func:`recon.validate.report.write_csv`). Values are relative biases (%), tube deviations from the line in mM.

In an iterative run the regional measures (``regional*``) are the gridding model's by design: the pipeline fits
the tubes and measures regions on the tb-cpr gridding images (``ReconResult.model_echoes``), and so does
:func:`recon.validate.run.fine_regional`. The iterative image itself is scored by the eroded voxel means and the
2 mm sphere.

Usage: ``python -m recon.validate.compare DIR [DIR ...] --csv FILE --md FILE`` (``--demo``: two synthetic records).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recon.validate.run import summarise

COMPARTMENTS = (
    ("csf_sulcal", "sulcal CSF"),
    ("csf_ventricles", "ventricles"),
    ("vitreous", "vitreous"),
    ("oedema", "oedema"),
    ("tumour_rim", "tumour rim"),
    ("necrotic_core", "necrotic core"),
    ("grey_matter", "GM"),
    ("white_matter", "WM"),
)
"""(truth name, column title) of the compartments, in table order."""
TABLE_MEASURES = ("regional-fine-echo", "regional-fine-echo-t1", "eroded")
"""The measures tabulated per compartment (recon.validate.run.MEASURES)."""
PASS_KEYS = (("regional-fine-echo", "_regional_fine_echo"), ("regional-fine-echo-t1", "_regional_fine_echo_t1"), ("eroded", ""))
"""(measure, summarise() key suffix) of the pass counts."""
SPHERE = "2 mm sphere at lesion centre"


def load(dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Every case record in the given output folders (or their .partial folders), sorted by case index."""
    recs: dict[int, dict[str, Any]] = {}
    for d in map(Path, dirs):
        if (d / "cases.json").exists():
            for r in json.loads((d / "cases.json").read_text()):
                recs[int(r["case"]["index"])] = r
        part = d.parent / (d.name + ".partial")
        for f in sorted(part.glob("case_*.json")) if part.exists() else ():
            r = json.loads(f.read_text())
            recs.setdefault(int(r["case"]["index"]), r)
    return [recs[i] for i in sorted(recs)]


def value(rec: dict[str, Any], mode: str, quantity: str, measure: str) -> float | None:
    """A scored row's value (None when the row is absent or not scored)."""
    for r in rec["modes"].get(mode, {}).get("rows", []):
        if r["quantity"] == quantity and r.get("measure") == measure and r.get("passed") is not None:
            return float(r["value"])
    return None


def worst_tube(rec: dict[str, Any], mode: str) -> float | None:
    """The tube deviation from the line with the largest magnitude (mM)."""
    vals = [r["value"] for r in rec["modes"].get(mode, {}).get("rows", []) if r["class"] == "tube_mM"]
    return max(vals, key=abs) if vals else None


def pct(v: float | None) -> str:
    """A relative bias as signed percent with one decimal ("-" when absent)."""
    return "-" if v is None else f"{100 * v:+.1f}"


def pair(a: float | None, b: float | None) -> str:
    """ "default / iterative" percents, marked ↑ where iterative is farther from the truth."""
    if a is None and b is None:
        return "-"
    mark = " **↑**" if a is not None and b is not None and abs(b) > abs(a) else ""
    return f"{pct(a)} / {pct(b)}{mark}"


def compartment_tables(
    recs: list[dict[str, Any]], measures: tuple[str, ...] = TABLE_MEASURES
) -> tuple[list[str], list[tuple[str, str, int, float, float]], dict[tuple[str, str], int]]:
    """Markdown lines of one default / iterative table per measure (a row per case, a column per
    compartment), the (compartment, measure, case, default, iterative) entries where |iterative| >
    |default|, and how many values were scored per (compartment, measure)."""
    out: list[str] = []
    worse: list[tuple[str, str, int, float, float]] = []
    scored: dict[tuple[str, str], int] = {}
    for measure in measures:
        out += [
            f"#### {measure}: default / iterative bias (%), per compartment (↑: iterative farther from the truth)",
            "",
            "| case | traj | matrix | min r (vox) | " + " | ".join(n for _, n in COMPARTMENTS) + " |",
            "|---|---|---|---|" + "---|" * len(COMPARTMENTS),
        ]
        for rec in recs:
            c = rec["case"]
            cells = []
            for q, name in COMPARTMENTS:
                a, b = value(rec, "default", q, measure), value(rec, "iterative", q, measure)
                cells.append(pair(a, b))
                if a is not None and b is not None:
                    scored[name, measure] = scored.get((name, measure), 0) + 1
                    if abs(b) > abs(a):
                        worse.append((name, measure, c["index"], a, b))
            rmin = min(t["radius_vox"] for t in c["tubes"])
            out.append(f"| {c['index']} | {c['trajectory']} | {c['matrix']} | {rmin:.2f} | " + " | ".join(cells) + " |")
        out.append("")
    return out, worse, scored


def compare(recs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(Markdown, numbers) of default against iterative over the records that have both modes.

    numbers: ``cases`` (indices), ``passes`` {(mode, measure): count}, ``worse`` [(compartment, measure, case,
    default, iterative)] wherever |iterative| > |default|, ``scored`` {(compartment, measure): n}.
    """
    recs = [r for r in recs if "iterative" in r["modes"] and "default" in r["modes"]]
    out, worse, scored = compartment_tables(recs)
    out += [
        "#### Tubes, 2 mm sphere, pass, time",
        "",
        "| case | worst tube (mM) default / iterative | 2 mm sphere (%) default / iterative | pass regional-fine-echo "
        "default / iterative | pass -t1 default / iterative | pass eroded default / iterative | s default / iterative (sim) |",
        "|---|---|---|---|---|---|---|",
    ]
    passes = {(m, meas): 0 for m in ("default", "iterative") for meas, _ in PASS_KEYS}
    for rec in recs:
        c = rec["case"]
        ta, tb = worst_tube(rec, "default"), worst_tube(rec, "iterative")
        sa, sb = value(rec, "default", SPHERE, "voxels"), value(rec, "iterative", SPHERE, "voxels")
        for name, a, b in (("tubes (mM)", ta, tb), ("2 mm sphere", sa, sb)):
            if a is not None and b is not None:
                scored[name, "-"] = scored.get((name, "-"), 0) + 1
                if abs(b) > abs(a):
                    worse.append((name, "-", c["index"], a, b))
        s = {m: summarise(rec, m) for m in ("default", "iterative")}
        cells = []
        for meas, k in PASS_KEYS:
            verdicts = []
            for m in ("default", "iterative"):
                p = s[m].get("passed" + k)
                if s[m]["error"]:
                    verdicts.append("error")
                    continue
                passes[m, meas] += bool(p)
                verdicts.append("yes" if p else ("-" if p is None else f"no ({s[m]['n_failed' + k]})"))
            cells.append(" / ".join(verdicts))
        t = rec["modes"]
        tube = "-" if ta is None or tb is None else f"{ta:+.2f} / {tb:+.2f}{' **↑**' if abs(tb) > abs(ta) else ''}"
        out.append(
            f"| {c['index']} | {tube} | {pair(sa, sb)} | " + " | ".join(cells) + " | "
            f"{t['default']['seconds']:.0f} / {t['iterative']['seconds']:.0f} ({rec['simulation_s']:.0f}) |"
        )
    n = len(recs)
    out += ["", f"- cases: {n} ({', '.join(str(r['case']['index']) for r in recs)})"]
    for meas, _ in PASS_KEYS:
        pd, pi = passes["default", meas], passes["iterative", meas]
        out.append(f"- {meas}: default passes every bound in {pd} of {n}, iterative in {pi} of {n}")
    out += [
        "",
        "#### Where iterative is farther from the truth than gridding (|iterative| > |default|)",
        "",
        "| compartment | measure | worse / scored | cases (default → iterative, Δ|bias| in points) |",
        "|---|---|---|---|",
    ]
    keys = [(name, m) for m in TABLE_MEASURES for _, name in COMPARTMENTS] + [("tubes (mM)", "-"), ("2 mm sphere", "-")]
    for name, m in keys:
        if (name, m) not in scored:
            continue
        ws = [w for w in worse if w[0] == name and w[1] == m]
        if name == "tubes (mM)":
            txt = "; ".join(f"{i}: {a:+.2f} → {b:+.2f} ({abs(b) - abs(a):+.2f} mM)" for _, _, i, a, b in ws)
        else:
            txt = "; ".join(f"{i}: {pct(a)} → {pct(b)} ({100 * (abs(b) - abs(a)):+.1f})" for _, _, i, a, b in ws)
        out.append(f"| {name} | {m} | {len(ws)} / {scored[name, m]} | {txt or '-'} |")
    numbers = {"cases": [r["case"]["index"] for r in recs], "passes": passes, "worse": worse, "scored": scored}
    return "\n".join(out) + "\n", numbers


def demo_records() -> list[dict[str, Any]]:
    """Two synthetic case records in the layout of ``narecon validate`` (for a smoke run of the report)."""
    recs = []
    for i, (d, it) in enumerate(((0.01, -0.05), (-0.02, 0.01))):
        rows = [
            {"quantity": q, "class": "fluid", "measure": m, "value": d, "bound": 0.05, "passed": abs(d) <= 0.05, "n_voxels": 10}
            for q, _ in COMPARTMENTS
            for m in TABLE_MEASURES
        ]
        rows += [
            {"quantity": "tube 1", "class": "tube_mM", "measure": "line", "value": 0.2, "bound": 1.5, "passed": True},
            {"quantity": SPHERE, "class": "sphere", "measure": "voxels", "value": 0.03, "bound": 0.1, "passed": True},
        ]
        it_rows = [
            dict(r, value=it, passed=abs(it) <= 0.03) if r["class"] == "fluid" else dict(r) for r in rows
        ]  # iterative: fluids at `it` against a 3 % bound
        case = {
            "index": i,
            "trajectory": "tpi",
            "matrix": 40,
            "snr": 150.0,
            "tubes": [{"radius_vox": 2.1}],
            "relaxation": {"white_matter": {"t2s_short_s": 0.003}},
        }
        recs.append(
            {
                "case": case,
                "simulation_s": 3.0,
                "modes": {"default": {"rows": rows, "seconds": 1.0}, "iterative": {"rows": it_rows, "seconds": 2.0}},
            }
        )
    return recs


def main(argv: list[str] | None = None) -> int:
    import argparse

    from recon.validate.report import write_csv

    ap = argparse.ArgumentParser(prog="python -m recon.validate.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", help="narecon validate output folders")
    ap.add_argument("--csv", type=Path, default=None, help="write every row of the compared records here")
    ap.add_argument("--md", type=Path, default=None, help="write the Markdown report here")
    ap.add_argument("--demo", action="store_true", help="two synthetic records instead of DIRs")
    a = ap.parse_args(argv)
    recs = demo_records() if a.demo else load(a.dirs)
    text, _ = compare(recs)
    if a.csv:
        write_csv([r for r in recs if "iterative" in r["modes"]], a.csv)
    if a.md:
        a.md.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
