#!/usr/bin/env python
"""Iterative vs gridding reconstructions on the digital phantom: NRMSE and ROI bias vs iterations.

    python benchmarks/iterative_bench.py [--matrix 32] [--iters 1,3,5,10,20] [--out benchmarks/iterative_results.json]
    python benchmarks/iterative_bench.py --cost [--matrix 64] [--max-iter 30] [--normals toeplitz nufft]
                                         [--regularisers gradient tv]

    python benchmarks/iterative_bench.py --run RAW [--tree BEFORE] [--rounds 3] [--out JSON]

``--run``: the whole ``narecon run RAW --b0 iterative`` under ``/usr/bin/time -v`` (wall, maximum
resident set), one fresh process per run, against the floor of run_floor.py (read the raw bytes
+ one two-echo finufft adjoint, measured in this process in every round); with ``--tree`` the same
run of another checkout (an export of ``main``) in the same rounds, interleaved, and the outputs
compared (TSC map inside the object mask, echo images, calibration line). Medians and ranges with
the load average; the iterative stage's time and iterations come from the run's log.

``--cost``: the time and peak memory of the iterative solve at the study protocol (TPI, 64^3,
3920 x 1238 samples, two echoes, a smooth +-60 Hz field and an R2* map, gradient regulariser or
TV with its default weight: 30 ADMM iterations of 4 CG steps each) with each normal operator,
every configuration in a fresh subprocess (peak RSS), against the
floor measured in each: plain gridding of both echoes (plan + adjoint).

Simulates (or reuses, --sim DIR) a dual-echo TPI acquisition of the head phantom with B0 and
bi-exponential decay (raw SNR 150), reconstructs it with gridding (no B0 correction), FS-CPR,
tb-cpr and the iterative joint model (B0 + R2* map, gradient regulariser) for several
iteration counts and lamda values, calibrates each with the tubes (as `narecon run` does) and
reports the NRMSE of the TSC map against the truth inside the head, the ROI bias of tubes,
GM, WM, CSF and tumour (true compartments eroded by one PSF width) and the time per
iteration. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def plot(rows, path) -> None:
    """NRMSE and white-matter bias vs iterations (iterative lines; gridding methods as horizontal lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({r[0] for r in rows if r[0].startswith("iterative")}):
        its = [(r[1], r[3], r[4].get("white_matter", np.nan)) for r in rows if r[0] == name]
        its.sort()
        ax[0].plot([i for i, _, _ in its], [n for _, n, _ in its], "o-", label=name)
        ax[1].plot([i for i, _, _ in its], [b for _, _, b in its], "o-", label=name)
    for r in rows:
        if not r[0].startswith("iterative"):
            ax[0].axhline(r[3], ls="--", lw=1, color="gray")
            ax[0].text(0.5, r[3], r[0], fontsize=7, va="bottom")
            ax[1].axhline(r[4].get("white_matter", np.nan), ls="--", lw=1, color="gray")
    ax[0].set(xlabel="iterations", ylabel="NRMSE of TSC vs truth", title="NRMSE")
    ax[1].set(xlabel="iterations", ylabel="white matter bias (%)", title="ROI bias")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _cost_child(matrix: int, normal: str, max_iter: int, decay: str, regulariser: str = "gradient") -> dict:
    """One configuration (run in a fresh process): seconds of each phase and the peak RSS."""
    import resource

    from recon.iterative import reconstruct_iterative
    from recon.nufft import NUFFT, gridding
    from recon.trajectory import compute_dcf, tpi

    n, fov = matrix, 0.224
    tr = tpi(fov_m=fov, res_m=fov / n, p=0.3, gmax_t_per_m=4e-3)
    w = compute_dcf(tr, "analytic")
    rng = np.random.default_rng(0)
    shp = (2,) + tr.k.shape[:2]
    y = (rng.standard_normal(shp) + 1j * rng.standard_normal(shp)).astype(np.complex64)
    ax = np.linspace(-1, 1, n)
    fmap = 60.0 * (0.6 * ax[:, None, None] + 0.4 * ax[None, :, None] ** 2) * np.ones((n,) * 3)
    r2 = 50.0 + 30.0 * (ax[None, None, :] > 0) * np.ones((n,) * 3)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    op = NUFFT(tr.k, (n,) * 3, fov, eps=1e-4)
    g = gridding(op, y, w)
    t_floor = time.perf_counter() - t0
    stamps = []
    t0 = time.perf_counter()
    res = reconstruct_iterative(
        op,
        y,
        w,
        (0.3e-3, 2.32e-3),
        tr.t,
        fmap,
        decay=decay,
        r2star_hz=r2 if decay == "r2star-map" else None,
        regulariser=regulariser,
        max_iter=max_iter,
        tol=0,
        x0=g[0],
        normal=normal,
        progress=False,
        callback=lambda it, x, obj: stamps.append(time.perf_counter()),
    )
    total = time.perf_counter() - t0
    per_it = float(np.median(np.diff([t0] + stamps)[1:])) if len(stamps) > 1 else float("nan")
    return dict(
        normal=normal,
        decay=decay,
        regulariser=regulariser,
        iterations=res.iterations,
        segments=res.settings["segments"],
        floor_s=t_floor,
        setup_s=stamps[0] - t0 - per_it if stamps else float("nan"),
        per_iteration_s=per_it,
        total_s=total,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        rss_before_mb=rss0 / 1024,
    )


def cost(matrix: int, normals, max_iter: int, decay: str, regularisers=("gradient",)) -> list:
    import os
    import subprocess

    rows = []
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "| normal | regulariser | decay | segments | floor (2-echo gridding) s | set-up s | s / iteration | iterations "
        "| total s | total / floor | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for normal, reg in [(n, g) for g in regularisers for n in normals]:
        root, here = str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)
        code = (
            f"import json, sys; sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r}); import iterative_bench as b; "
            f"print(json.dumps(b._cost_child({matrix}, {normal!r}, {max_iter}, {decay!r}, {reg!r})))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"| {normal} | {reg} | {decay} | {r['segments']} | {r['floor_s']:.2f} | {r['setup_s']:.1f} | "
            f"{r['per_iteration_s']:.2f} | "
            f"{r['iterations']} | {r['total_s']:.1f} | {r['total_s'] / r['floor_s']:.1f} | {r['peak_rss_mb']:.0f} |",
            flush=True,
        )
    return rows


def _one_run(tree: Path, raw: Path, out: Path) -> dict:
    """``narecon run RAW --b0 iterative`` from ``tree`` under /usr/bin/time -v: wall, max RSS, stage log."""
    import re
    import subprocess

    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "recon", "run", str(raw.resolve()), "--b0", "iterative"]
    cmd += ["--out", str(out), "--force"]
    p = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"run from {tree} failed:\n{p.stderr[-3000:]}")
    log = p.stderr + p.stdout

    def grab(pattern, cast=float):
        m = re.search(pattern, log)
        return cast(m.group(1)) if m else None

    h, mnt, sec = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", log).groups()
    return {
        "wall_s": int(h or 0) * 3600 + int(mnt) * 60 + float(sec),
        "max_rss_mb": grab(r"Maximum resident set size \(kbytes\): (\d+)") * 1024 / 1e6,
        "cpu_s": grab(r"User time \(seconds\): ([\d.]+)") + grab(r"System time \(seconds\): ([\d.]+)"),
        "iterative_s": grab(r"iterative reconstruction \([^)]*\): ([\d.]+) s"),
        "iterations": grab(r"iterative reconstruction: (\d+) iterations", int),
    }


def compare_outputs(a: Path, b: Path) -> dict:
    """Relative differences of two run folders: TSC and echo magnitudes inside a's object mask, calibration line."""
    import nibabel as nib

    mask = nib.load(a / "mask.nii.gz").get_fdata() > 0
    out = {}
    for name in ("tsc_mM", "echo1", "echo2"):
        x, y = (nib.load(d / f"{name}.nii.gz").get_fdata()[mask] for d in (a, b))
        out[f"{name}_rel_l2"] = float(np.linalg.norm(x - y) / np.linalg.norm(x))
    ca, cb = (json.loads((d / "calibration.json").read_text()) for d in (a, b))

    def line(c):
        fit = c.get("fit", c)
        return float(fit["slope"]), float(fit["intercept"])

    (sa, ia), (sb, ib) = line(ca), line(cb)
    out.update(slope_rel=abs(sb - sa) / abs(sa), slope_before=sa, slope_after=sb, intercept_before=ia, intercept_after=ib)
    return out


def run_bench(raw: Path, before: Path | None, rounds: int) -> dict:
    """Interleaved rounds: floor, this tree's run, the before tree's run (see the module docstring)."""
    import os
    import statistics

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_floor import floor_adjoint

    from recon.io import build_trajectory, load_profile, read_raw

    acq = read_raw(raw)
    traj = build_trajectory(acq, load_profile(None))
    here = Path(__file__).resolve().parents[1]
    trees = {"after": here} if before is None else {"before": before.resolve(), "after": here}
    res: dict = {"floor_s": [], "floor_cpu_s": [], "load": [], **{k: [] for k in trees}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            res["load"].append(os.getloadavg()[0])
            t0, c0 = time.perf_counter(), time.process_time()
            raw.read_bytes()
            t_read = time.perf_counter() - t0
            res["floor_s"].append(t_read + floor_adjoint(acq, traj))
            res["floor_cpu_s"].append(time.process_time() - c0)  # includes the adjoint's set-up outside its timing
            for name, tree in trees.items():
                res[name].append(_one_run(tree, raw, Path(tmp) / name))
                print(f"round {r + 1} {name}: {res[name][-1]}", flush=True)
        if before is not None:
            res["outputs"] = compare_outputs(Path(tmp) / "before", Path(tmp) / "after")
    f = statistics.median(res["floor_s"])
    res["summary"] = {
        name: {
            key: [statistics.median(v[key] for v in res[name]), min(v[key] for v in res[name]), max(v[key] for v in res[name])]
            for key in ("wall_s", "cpu_s", "max_rss_mb", "iterative_s", "iterations")
        }
        for name in trees
    }
    for name in trees:
        res["summary"][name]["run_over_floor"] = res["summary"][name]["wall_s"][0] / f
    res["floor_median_s"] = f
    return res


def render_run(res: dict) -> str:
    """The markdown table of :func:`run_bench`."""
    rng = lambda v, fmt: f"{v[0]:{fmt}} ({v[1]:{fmt}}-{v[2]:{fmt}})"  # noqa: E731
    loads = res["load"]
    lines = [
        f"load average {min(loads):.1f}-{max(loads):.1f}; {len(res['floor_s'])} interleaved rounds; "
        f"floor (read bytes + two-echo finufft adjoint) {res['floor_median_s']:.2f} s "
        f"({min(res['floor_s']):.2f}-{max(res['floor_s']):.2f})",
        "",
        "| | iterative stage s | iterations | whole run s | whole run CPU s (user + sys) | peak RSS MB | run / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in res["summary"].items():
        lines.append(
            f"| {name} | {rng(v['iterative_s'], '.1f')} | {v['iterations'][0]:.0f} | {rng(v['wall_s'], '.1f')} | "
            f"{rng(v['cpu_s'], '.1f')} | {rng(v['max_rss_mb'], '.0f')} | {v['run_over_floor']:.1f} |"
        )
    if "outputs" in res:
        o = res["outputs"]
        lines += [
            "",
            f"outputs after vs before: TSC {o['tsc_mM_rel_l2']:.1e}, echo 1 {o['echo1_rel_l2']:.1e}, echo 2 "
            f"{o['echo2_rel_l2']:.1e} (relative L2 inside the object mask); calibration a {o['slope_before']:.4f} vs "
            f"{o['slope_after']:.4f} per mM (relative {o['slope_rel']:.1e})",
        ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cost", action="store_true", help="time and memory of the solver per normal operator")
    ap.add_argument("--run", type=Path, help="RAW: the whole narecon run --b0 iterative against its floor")
    ap.add_argument("--tree", type=Path, help="with --run: a second checkout (before) run in the same rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--normals", nargs="+", default=["toeplitz", "nufft"])
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--decay", default="r2star-map")
    ap.add_argument(
        "--regularisers",
        nargs="+",
        default=["gradient"],
        help="with --cost: regularisers at their default weights (gradient, tv, ...)",
    )
    ap.add_argument("--matrix", type=int, default=32)
    ap.add_argument("--sim", help="existing narecon simulate output directory")
    ap.add_argument("--iters", default="1,3,5,10,20")
    ap.add_argument("--lamdas", default="0.01,0.1")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None, help="PNG: NRMSE and white-matter bias vs iterations")
    args = ap.parse_args()
    if args.run:
        res = run_bench(args.run, args.tree, args.rounds)
        print(render_run(res))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return 0
    if args.cost:
        rows = cost(args.matrix if args.matrix != 32 else 64, args.normals, args.max_iter, args.decay, args.regularisers)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1))
        return 0

    import nibabel as nib
    from scipy import ndimage

    from recon.b0 import correct, estimate_fieldmap, support_mask
    from recon.calibrate import calibrate
    from recon.io import build_trajectory, load_profile, nifti_affine, read_raw
    from recon.iterative import reconstruct_iterative
    from recon.nufft import NUFFT, gridding
    from recon.trajectory import compute_dcf

    sim = Path(args.sim) if args.sim else Path(tempfile.mkdtemp()) / "sim"
    if not args.sim:
        from recon.sim import HeadPhantom, simulate, write_simulation
        from recon.trajectory import tpi

        traj = tpi(fov_m=0.224, res_m=0.224 / args.matrix, p=0.3, gmax_t_per_m=4e-3)
        write_simulation(simulate(HeadPhantom(), traj, snr=150.0, seed=2), traj, sim)
    acq = read_raw(sim / "raw.dat")
    traj = build_trajectory(acq, load_profile(None))
    w = compute_dcf(traj)
    op = NUFFT(traj.k, traj.matrix, traj.fov_m, eps=1e-4)
    affine = nifti_affine(acq.geometry, traj.fov_m, traj.matrix)
    d = acq.data[:, 0].astype(np.complex64)
    labels = nib.load(sim / "truth_labels.nii.gz").get_fdata()
    truth = nib.load(sim / "truth_tsc_mM.nii.gz").get_fdata()
    info = json.loads((sim / "truth.json").read_text())
    head = ndimage.binary_dilation(truth > 0, iterations=1)
    rois = {c["name"]: (ndimage.distance_transform_edt(labels == c["label"]) >= 1.6, c["tsc_mM"]) for c in info["compartments"]}
    rois = {k: v for k, v in rois.items() if v[0].sum() >= 3}

    # the tubes file a user writes (RAS mm): sharp 2-voxel tubes beside a head at 32^3 do not always
    # separate from it at a threshold, and detection is not what this benchmark measures
    tubes_csv = sim / "tubes.csv"
    tubes_csv.write_text(
        "x_mm,y_mm,z_mm,radius_mm,concentration_mM,length_mm,ax,ay,az\n"
        + "".join(
            ",".join(
                f"{v:.6g}" for v in (*t["centre_mm_ras"], t["radius_mm"], t["concentration_mM"], t["length_mm"], *t["axis_ras"])
            )
            + "\n"
            for t in info["tubes"]
        )
    )

    def score(echo1):
        cal = calibrate(echo1, affine, tubes_file=tubes_csv, concentrations_mM=[t["concentration_mM"] for t in info["tubes"]])
        t = cal.tsc
        nrmse = float(np.linalg.norm((t - truth)[head]) / np.linalg.norm(truth[head]))
        bias = {k: float(100 * (t[m].mean() / v - 1)) for k, (m, v) in rois.items()}
        return nrmse, bias

    rows = []
    t0 = time.perf_counter()
    g = gridding(op, d, w)
    t_grid = time.perf_counter() - t0
    rows.append(("gridding (no B0 correction)", 0, t_grid, *score(g[0])))
    fmap = estimate_fieldmap(g[0], g[1], *acq.te_s)
    mask = support_mask(np.abs(g[0]))
    for m in ("fs-cpr", "tb-cpr"):
        t0 = time.perf_counter()
        x = correct(m, op, d, w, acq.te_s, traj.t, fmap, mask=mask)
        rows.append((m, 0, time.perf_counter() - t0, *score(x[0])))
    for lam in [float(v) for v in args.lamdas.split(",")]:
        for it in [int(v) for v in args.iters.split(",")]:
            t0 = time.perf_counter()
            r = reconstruct_iterative(
                op,
                d,
                w,
                acq.te_s,
                traj.t,
                fmap,
                decay="r2star-map",
                regulariser="gradient",
                lamda=lam,
                max_iter=it,
                tol=0,
                mask=mask,
            )
            dt = time.perf_counter() - t0
            rows.append((f"iterative lamda {lam:g}", r.iterations, dt / max(r.iterations, 1), *score(r.echoes[0])))
    names = [
        n
        for n in (
            "tube_30mM",
            "tube_120mM",
            "grey_matter",
            "white_matter",
            "csf_ventricles",
            "vitreous",
            "oedema",
            "necrotic_core",
        )
        if n in rois
    ]
    print(
        f"\nphantom {traj.matrix[0]}^3, TPI {traj.n_projections} x {traj.n_samples}, readout "
        f"{traj.readout_s * 1e3:.1f} ms, raw SNR 150, B0 and decay simulated; time = s (per iteration for iterative)\n"
    )
    print("| method | iterations | time (s) | NRMSE | " + " | ".join(f"{n} bias %" for n in names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    for name, it, dt, nrmse, bias in rows:
        print(f"| {name} | {it} | {dt:.2f} | {nrmse:.4f} | " + " | ".join(f"{bias[n]:+.1f}" for n in names) + " |")
    if args.plot:
        plot(rows, args.plot)
    if args.out:
        Path(args.out).write_text(
            json.dumps([dict(method=r[0], iterations=r[1], seconds=r[2], nrmse=r[3], bias_pct=r[4]) for r in rows], indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
