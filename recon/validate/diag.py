"""One validation case reconstructed with model terms of the iterative path taken out: where its voxel map's bias comes from.

The case is simulated exactly as :func:`recon.validate.run.run_case` does (same draw, noise seed, grid), then
reconstructed with gridding, the iterative defaults, and variants that each change one term of the iterative model
(regularisation off, another decay model, the B0 model off). Each is measured by the eroded voxel means of
:func:`recon.validate.run.measure` (no regional fit: seconds per variant). The variants explain a bias; they are
not proposed settings.

Usage: ``python -m recon.validate.diag INDEX [--seed 1] [--variants a,b] [--out FILE.json]``;
``python -m recon.validate.diag --summary FILE.json ...`` tabulates several cases against gridding.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS: dict[str, dict[str, Any]] = {
    "gridding": {},
    "iterative": {"b0": "iterative"},
    "iter-lamda0": {"b0": "iterative", "iter_lamda": 0.0},
    "iter-lamda0.03": {"b0": "iterative", "iter_lamda": 0.03},
    "iter-lamda0.3": {"b0": "iterative", "iter_lamda": 0.3},
    "iter-decay-none": {"b0": "iterative", "iter_decay": "none"},
    "iter-decay-tissue": {"b0": "iterative", "iter_decay": "tissue"},
    "iter-two-pool": {"b0": "iterative", "iter_decay": "two-pool"},
    "iter-no-b0": {"b0": "iterative", "fieldmap": "ZERO"},
    "iter-hamming": {"b0": "iterative", "iter_window": "hamming"},
    "iter-hann": {"b0": "iterative", "iter_window": "hann"},
    "iter-tube-decay": {"b0": "iterative", "iter_window": "tube-decay"},
    "iter-tv": {"b0": "iterative", "iter_regulariser": "tv"},
    "iter-tv0.01": {"b0": "iterative", "iter_regulariser": "tv", "iter_lamda": 0.01},
    "iter-tv0.04": {"b0": "iterative", "iter_regulariser": "tv", "iter_lamda": 0.04},
}
"""Options of each variant on top of the validation's (tubes file, tube edge). ``fieldmap: ZERO``: a 0 Hz map file."""


def variants(seed: int, index: int, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Eroded-mean and 2 mm sphere biases (dimensionless) of case ``index`` of ``seed`` per variant; line slope."""
    from recon.io.geometry import nifti_affine
    from recon.pipeline import reconstruct
    from recon.sim.output import _nifti_bytes
    from recon.validate import draw_case
    from recon.validate.run import measure, simulate_case, tubes_csv

    case = draw_case(seed, index)
    t0 = time.perf_counter()
    res, traj = simulate_case(case)
    out: dict[str, Any] = {"seed": seed, "case": index, "simulation_s": time.perf_counter() - t0, "variants": {}}
    edge_mm = float(res.truth.info["phantom"]["edge_mm"])
    acq = res.acquisition
    with tempfile.TemporaryDirectory() as tmp:
        csv = tubes_csv(case, Path(tmp) / "tubes.csv")
        zero = Path(tmp) / "zero_hz.nii.gz"
        zero.write_bytes(_nifti_bytes(np.zeros(acq.matrix, np.float32), nifti_affine(acq.geometry, acq.fov_m, acq.matrix)))
        for name in names or tuple(VARIANTS):
            extra = {k: (str(zero) if v == "ZERO" else v) for k, v in VARIANTS[name].items()}
            t1 = time.perf_counter()
            try:
                r = reconstruct(acq, {"calibration": str(csv), "tube_edge_mm": edge_mm, "qa": False, **extra}, trajectory=traj)
            except Exception as e:  # a variant the pipeline refuses is a result, not the end of the diagnosis
                out["variants"][name] = {"options": extra, "error": f"{type(e).__name__}: {e}"}
                continue
            rows = measure(case, res.truth, r, None)
            fit = r.calibration.result.fit
            out["variants"][name] = {
                "options": extra,
                "slope": float(fit.slope),
                "intercept": float(fit.intercept),
                "bias": {r_["quantity"]: r_["value"] for r_ in rows if r_["measure"] in ("eroded", "voxels", "line")},
                "seconds": time.perf_counter() - t1,
            }
    return out


def table(out: dict[str, Any]) -> str:
    """Markdown: one row per measured quantity, one column per variant (%, tubes in mM from the line)."""
    names = [n for n, v in out["variants"].items() if "error" not in v]
    qs = [q for q, v in out["variants"][names[0]]["bias"].items() if v is not None]
    lines = ["| quantity | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for q in qs:
        cells = []
        for n in names:
            v = out["variants"][n]["bias"].get(q)
            cells.append("-" if v is None else (f"{v:+.2f}" if q.startswith("tube") else f"{100 * v:+.1f}"))
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    lines.append("| line slope | " + " | ".join(f"{out['variants'][n]['slope']:.4f}" for n in names) + " |")
    lines += [f"\n{n}: {v['error']}" for n, v in out["variants"].items() if "error" in v]
    return "\n".join(lines) + "\n"


def summary(records: list[dict[str, Any]], reference: str = "gridding", tol: float = 0.005) -> str:
    """Markdown over several cases' records: every non-tube value per variant, and per variant the
    count of values farther from the truth than ``reference`` by more than ``tol`` (dimensionless;
    0.005 = 0.5 points) and by any amount, the mean |bias| and the largest excess (points)."""
    names = [n for n in records[0]["variants"] if n != reference]
    head = "| case | quantity | " + " | ".join([reference] + names) + " |"
    lines = [head, "|---|---|" + "---|" * (len(names) + 1)]
    stats = {n: {"worse_tol": 0, "worse": 0, "abs": [], "excess": []} for n in names}
    ref_abs: list[float] = []
    for rec in records:
        v = rec["variants"]
        for q, g in v[reference]["bias"].items():
            if g is None or q.startswith("tube"):
                continue
            cells = [f"{100 * g:+.1f}"]
            ref_abs.append(abs(g))
            for n in names:
                b = v[n]["bias"].get(q)
                if b is None:
                    cells.append("-")
                    continue
                ex = abs(b) - abs(g)
                st = stats[n]
                st["abs"].append(abs(b))
                st["excess"].append(ex)
                st["worse"] += ex > 0
                st["worse_tol"] += ex > tol
                cells.append(f"{100 * b:+.1f}" + (" **↑**" if ex > tol else ""))
            lines.append(f"| {rec['case']} | {q} | " + " | ".join(cells) + " |")
    lines.append("")
    cols = ["variant", "values", f"worse than {reference} by > {100 * tol:.1f} points", "worse by any amount"]
    lines.append("| " + " | ".join(cols + ["mean abs bias (%)", "largest excess (points)"]) + " |")
    lines.append("|---|---|---|---|---|---|")
    lines.append(f"| {reference} | {len(ref_abs)} | - | - | {100 * np.mean(ref_abs):.2f} | - |")
    for n, st in stats.items():
        mean, worst = 100 * np.mean(st["abs"]), 100 * max(st["excess"])
        lines.append(f"| {n} | {len(st['abs'])} | {st['worse_tol']} | {st['worse']} | {mean:.2f} | {worst:+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m recon.validate.diag", description=__doc__.split("\n\n")[0])
    ap.add_argument("index", type=int, nargs="?", help="case index")
    ap.add_argument(
        "--summary", nargs="+", type=Path, default=None, help="tabulate these records (JSON of --out, or lists) instead of running"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--variants", default=None, help="comma list of " + ", ".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=None, help="write the record as JSON here")
    a = ap.parse_args(argv)
    if a.summary:
        recs = [json.loads(p.read_text()) for p in a.summary]  # a file holds one record or a list of them
        print(summary([r for rec in recs for r in (rec if isinstance(rec, list) else [rec])]))
        return 0
    if a.index is None:
        ap.error("give a case index (or --summary FILES)")
    names = tuple(v.strip() for v in a.variants.split(",")) if a.variants else None
    out = variants(a.seed, a.index, names)
    if a.out:
        a.out.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(table(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
