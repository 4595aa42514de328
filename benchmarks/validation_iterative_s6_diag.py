"""Session 6 diagnosis: why `--b0 iterative` reads farther from the truth than gridding on a validation case.

One seed-1 case (by index), simulated once, reconstructed in memory with

* ``gridding``: the default options (tb-cpr), the reference;
* ``iterative``: ``--b0 iterative`` with its defaults (gradient regulariser, lamda 0.1, decay r2star-map);
* ``iter-lamda0``: the same with ``iter_lamda = 0`` (no regularisation: its effect);
* ``iter-nodecay``: the same with ``iter_decay = none`` (no decay model: the effect of the R2* map);

and measured two ways that do not depend on each other: the scored ``regional-fine-echo`` value
(:func:`recon.validate.run.fine_regional`: the echo images through the *gridding* templates of the system
model) and the mean TSC in each compartment's truth label eroded by the point response (tubes included),
as a ratio to gridding's. Nothing here changes a parameter of the validation; the variants only take a
model term out to see its share. Usage: ``python benchmarks/validation_iterative_s6_diag.py CASE`` (writes
``benchmarks/validation_iterative_s6_diag_<case>.json`` and prints a table).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from recon.pipeline import reconstruct
from recon.validate.cases import phantom_for
from recon.validate.ranges import draw_case
from recon.validate.run import MODES, _eroded, fine_regional, simulate_case, tubes_csv

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "gridding": {},
    "iterative": {**MODES["iterative"]},
    "iter-lamda0": {**MODES["iterative"], "iter_lamda": 0.0},
    "iter-nodecay": {**MODES["iterative"], "iter_decay": "none"},
}


def main(index: int) -> dict:
    case = draw_case(1, index)
    t0 = time.perf_counter()
    res, traj = simulate_case(case)
    print(f"case {index}: simulated in {time.perf_counter() - t0:.0f} s", flush=True)
    info = res.truth.info
    comps = {c["name"]: c for c in info["compartments"]}
    lab = res.truth.labels
    truth_tsc = res.truth.tsc_mM.astype(np.float64)
    edge_mm = float(info["phantom"]["edge_mm"])
    out: dict = {"case": index, "variants": {}}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        csv = tubes_csv(case, Path(tmp) / "tubes.csv")
        for name, extra in VARIANTS.items():
            t1 = time.perf_counter()
            r = reconstruct(res.acquisition, {"calibration": str(csv), "tube_edge_mm": edge_mm, **extra}, trajectory=traj)
            fine = fine_regional(r, phantom_for(case), res.truth)
            byname = fine.by_name()
            tsc = np.asarray(r.tsc_mM, dtype=np.float64)
            rec = {"slope": r.calibration.result.fit.slope, "intercept": r.calibration.result.fit.intercept}
            rec["line_dev_mM"] = [float(d) for d in r.calibration.result.fit.deviations_mM]
            rec["regional_fine_echo"] = {
                k: float(v.model_mM / float(comps[k]["tsc_mM"]) - 1.0) for k, v in byname.items() if v.model_mM is not None
            }
            rec["eroded_mean_mM"] = {}
            rec["eroded_bias"] = {}
            for k, c in comps.items():
                m = _eroded(lab, c["label"])
                if m.sum() >= 3:
                    rec["eroded_mean_mM"][k] = float(tsc[m].mean())
                    rec["eroded_bias"][k] = float(tsc[m].mean() / truth_tsc[m].mean() - 1.0)
            rec["seconds"] = time.perf_counter() - t1
            out["variants"][name] = rec
            print(f"  {name}: {rec['seconds']:.0f} s", flush=True)
    (HERE / f"validation_iterative_s6_diag_{index}.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def table(out: dict) -> str:
    names = list(out["variants"])
    g = out["variants"]["gridding"]
    keys = sorted(g["regional_fine_echo"])
    lines = [
        f"case {out['case']}: regional-fine-echo bias (%) | eroded mean TSC / gridding's - 1 (%)",
        "| compartment | " + " | ".join(names) + " | " + " | ".join(f"{n} eroded" for n in names[1:]) + " |",
        "|---|" + "---|" * (2 * len(names) - 1),
    ]
    for k in keys:
        reg = [out["variants"][n]["regional_fine_echo"].get(k) for n in names]
        ero = []
        for n in names[1:]:
            a, b = out["variants"][n]["eroded_mean_mM"].get(k), g["eroded_mean_mM"].get(k)
            ero.append("-" if a is None or b is None else f"{100 * (a / b - 1):+.1f}")
        lines.append(
            f"| {k} | " + " | ".join("-" if v is None else f"{100 * v:+.1f}" for v in reg) + " | " + " | ".join(ero) + " |"
        )
    lines.append("| line slope | " + " | ".join(f"{out['variants'][n]['slope']:.4g}" for n in names) + " |")
    lines.append(
        "| worst tube (mM) | " + " | ".join(f"{max(out['variants'][n]['line_dev_mM'], key=abs):+.2f}" for n in names) + " |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    # python benchmarks/validation_iterative_s6_diag.py INDEX | --table-only RESULTS.json (re-render saved results)
    if len(sys.argv) == 3 and sys.argv[1] == "--table-only":
        print(table(json.loads(Path(sys.argv[2]).read_text())))
    else:
        print(table(main(int(sys.argv[1]))))
