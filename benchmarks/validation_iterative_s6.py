"""Session 6: `--b0 iterative` against gridding on the re-simulated seed-1 validation family.

Reads the records that ``narecon validate --seed 1 --indices ... --iterative all --out DIR`` wrote
(DIR/cases.json, or DIR.partial/case_*.json of an unfinished chunk), in case order, and writes

* ``benchmarks/validation_iterative.csv``: every row of every case and mode (recon.validate.report.write_csv);
* ``benchmarks/validation_iterative_s6.md``: the per-case tables (default vs iterative per compartment, the
  scored ``regional-fine-echo`` measure and the eroded voxel means), pass counts, and every compartment where
  the iterative value is farther from the truth than gridding (|iterative bias| > |default bias|).

Usage: ``python benchmarks/validation_iterative_s6.py DIR [DIR ...]``. Values are relative biases (%), tube
deviations from the line in mM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recon.validate.compare import COMPARTMENTS, compartment_tables, load, pair, pct, value, worst_tube
from recon.validate.report import write_csv
from recon.validate.run import summarise

HERE = Path(__file__).resolve().parent
MEASURES = ("regional-fine-echo", "eroded")
"""The measures session 6 tabulated (the helpers and the compartment list are recon.validate.compare's)."""


def demo_records() -> list[dict[str, Any]]:
    """Two synthetic case records in the layout of ``narecon validate`` (for a smoke run of the report)."""
    recs = []
    for i, (d, it) in enumerate(((0.01, -0.05), (-0.02, 0.01))):
        rows = [
            {
                "quantity": q,
                "class": "fluid"
                if "csf" in q or q == "vitreous"
                else "lesion"
                if q in ("oedema", "tumour_rim", "necrotic_core")
                else "tissue",
                "measure": m,
                "value": v,
                "bound": 0.05,
                "passed": abs(v) <= 0.05,
                "n_voxels": 10,
            }
            for q, _ in COMPARTMENTS
            for m in MEASURES
            for v in [d]
        ]
        rows += [
            {
                "quantity": "tube 1",
                "class": "tube_mM",
                "measure": "line",
                "value": 0.2,
                "bound": 1.5,
                "passed": True,
                "n_voxels": 9,
            },
            {
                "quantity": "sphere",
                "class": "sphere",
                "measure": "voxels",
                "value": 0.03,
                "bound": 0.1,
                "passed": True,
                "n_voxels": 1,
            },
        ]
        it_rows = [dict(r, value=it if r["class"] not in ("tube_mM", "sphere") else r["value"]) for r in rows]
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


def main(dirs: list[str], out_dir: Path = HERE, recs: list[dict[str, Any]] | None = None) -> str:
    recs = load(dirs) if recs is None else recs
    recs = [r for r in recs if "iterative" in r["modes"]]
    write_csv(recs, out_dir / "validation_iterative.csv")
    out, worse, scored = compartment_tables(recs, MEASURES)  # (compartment, measure, case, default, iterative)
    out += [
        "#### Tubes, 2 mm sphere, pass, time",
        "",
        "| case | worst tube (mM) default / iterative | 2 mm sphere (%) default / iterative | pass regional-fine-echo "
        "default / iterative | pass eroded default / iterative | s default / iterative (sim) |",
        "|---|---|---|---|---|---|",
    ]
    npass = {(m, k): 0 for m in ("default", "iterative") for k in ("_regional_fine_echo", "")}
    for rec in recs:
        c = rec["case"]
        ta, tb = worst_tube(rec, "default"), worst_tube(rec, "iterative")
        sa = value(rec, "default", "2 mm sphere at lesion centre", "voxels")
        sb = value(rec, "iterative", "2 mm sphere at lesion centre", "voxels")
        for name, a, b in (("tubes (mM)", ta, tb), ("2 mm sphere", sa, sb)):
            if a is not None and b is not None:
                scored[name, "-"] = scored.get((name, "-"), 0) + 1
                if abs(b) > abs(a):
                    worse.append((name, "-", c["index"], a, b))
        s = {m: summarise(rec, m) for m in ("default", "iterative")}

        def yn(m: str, k: str, s=s) -> str:
            p = s[m].get("passed" + k)
            if s[m]["error"]:
                return "error"
            if p:
                npass[m, k] += 1
            return "yes" if p else f"no ({s[m]['n_failed' + k]})"

        t = rec["modes"]
        out.append(
            f"| {c['index']} | {ta:+.2f} / {tb:+.2f}{' **↑**' if abs(tb) > abs(ta) else ''} | {pair(sa, sb)} | "
            f"{yn('default', '_regional_fine_echo')} / {yn('iterative', '_regional_fine_echo')} | "
            f"{yn('default', '')} / {yn('iterative', '')} | "
            f"{t['default']['seconds']:.0f} / {t['iterative']['seconds']:.0f} ({rec['simulation_s']:.0f}) |"
        )
    n = len(recs)
    out += [
        "",
        f"- cases: {n} ({', '.join(str(r['case']['index']) for r in recs)})",
        f"- regional-fine-echo: default passes every bound in {npass['default', '_regional_fine_echo']} of {n}, "
        f"iterative in {npass['iterative', '_regional_fine_echo']} of {n}",
        f"- eroded: default passes every bound in {npass['default', '']} of {n}, iterative in {npass['iterative', '']} of {n}",
        "",
        "#### Where iterative is farther from the truth than gridding (|iterative| > |default|)",
        "",
        "| compartment | measure | worse / scored | cases (default → iterative, Δ|bias| in points) |",
        "|---|---|---|---|",
    ]
    keys = [(name, m) for m in MEASURES for _, name in COMPARTMENTS] + [("tubes (mM)", "-"), ("2 mm sphere", "-")]
    for name, m in keys:
        if (name, m) not in scored:
            continue
        ws = [w for w in worse if w[0] == name and w[1] == m]
        if name == "tubes (mM)":
            txt = "; ".join(f"{i}: {a:+.2f} → {b:+.2f} ({abs(b) - abs(a):+.2f} mM)" for _, _, i, a, b in ws)
        else:
            txt = "; ".join(f"{i}: {pct(a)} → {pct(b)} ({100 * (abs(b) - abs(a)):+.1f})" for _, _, i, a, b in ws)
        out.append(f"| {name} | {m} | {len(ws)} / {scored[name, m]} | {txt or '-'} |")
    text = "\n".join(out) + "\n"
    (out_dir / "validation_iterative_s6.md").write_text(text)
    return text


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", help="narecon validate output folders")
    ap.add_argument("--out-dir", type=Path, default=HERE, help="where the CSV and the Markdown go (default: benchmarks/)")
    ap.add_argument("--demo", action="store_true", help="two synthetic records instead of DIRs (a smoke run)")
    a = ap.parse_args()
    print(main(a.dirs, a.out_dir, demo_records() if a.demo else None))
