"""``narecon validate --cases N --seed S --out DIR``: the validation family, simulated, reconstructed, measured."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="draw N simulated cases from the fixed validation ranges, reconstruct and measure them against the truth",
        description="Draw N cases from the validation family (ranges fixed in recon/validate/ranges.py: tube radius "
        "1.5-5 voxels inside the alias-free sphere, TPI and radial, 40^3 and 64^3, literature relaxation, several SNRs), "
        "simulate each, reconstruct it in memory (default options; --iterative also with --b0 iterative), and measure "
        "every compartment, the tubes and a 2 mm lesion sphere against the truth. Writes DIR/validation.csv, "
        "DIR/validation.md, DIR/bias.png and DIR/cases.json atomically; finished cases are kept in DIR.partial/ so an "
        "interrupted run resumes.",
    )
    p.add_argument("--cases", type=int, default=24, help="number of cases (24)")
    p.add_argument("--seed", type=int, default=1, help="seed of the draw (1)")
    p.add_argument("--first", type=int, default=0, help="index of the first case (0)")
    p.add_argument("--indices", default=None, help="explicit comma list of case indices (instead of --first/--cases)")
    p.add_argument("--out", required=True, help="output directory (created atomically)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument(
        "--iterative",
        default="none",
        help="cases also reconstructed with --b0 iterative: none, all, or a comma list of case indices",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    import sys
    from pathlib import Path

    from recon.atomic import atomic_dir
    from recon.errors import ConfigError, OutputError
    from recon.plans import Plans
    from recon.validate import draw_case
    from recon.validate.report import write_all
    from recon.validate.run import run_case, summarise

    log = logging.getLogger("recon.validate")
    if args.cases < 1:
        raise ConfigError(f"--cases must be >= 1, got {args.cases}")
    out = Path(args.out)
    if out.exists() and not args.force and (not out.is_dir() or any(out.iterdir())):
        raise OutputError("output directory exists and is not empty (use --force to overwrite)", out)
    idx = list(range(args.first, args.first + args.cases))
    if args.indices:
        try:
            idx = [int(v) for v in args.indices.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--indices must be a comma list of integers, got {args.indices!r}") from None
    if args.iterative == "all":
        it = set(idx)
    elif args.iterative == "none":
        it = set()
    else:
        try:
            it = {int(v) for v in args.iterative.split(",") if v.strip()}
        except ValueError:
            raise ConfigError(f"--iterative must be none, all or case indices, got {args.iterative!r}") from None
    partial = out.parent / (out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    plans = Plans()
    records = []
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(idx), desc="validation cases", unit="case")
    for i in idx:
        f = partial / f"case_{args.seed}_{i}.json"
        modes = ("default", "iterative") if i in it else ("default",)
        if f.exists():
            rec = json.loads(f.read_text())
            if all(m in rec["modes"] for m in modes):
                records.append(rec)
                if bar:
                    bar.update(1)
                continue
        case = draw_case(args.seed, i)
        rec = run_case(case, modes, plans=plans)
        f.write_text(json.dumps(rec, default=float) + "\n")
        records.append(rec)
        s = summarise(rec, "default")
        log.info(
            "case %d (%s %d^3, %d tubes): %s in %.0f s",
            i,
            case["trajectory"],
            case["matrix"],
            len(case["tubes"]),
            _verdicts(s),
            rec["simulation_s"] + sum(m["seconds"] for m in rec["modes"].values()),
        )
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    with atomic_dir(out, overwrite=args.force) as tmp:
        write_all(records, tmp, args.seed)
    sums = [summarise(r, "default") for r in records]
    counts = []
    for key, label in _MEASURE_LABELS:
        scored = [x[key] for x in sums if x.get(key) is not None]
        if scored:
            counts.append(f"{sum(scored)} of {len(scored)} pass in the {label}")
    print(f"wrote {out}/validation.md, validation.csv, bias.png; default options: " + "; ".join(counts))
    return 0


_MEASURE_LABELS = (
    ("passed", "eroded voxel means (the voxel map)"),
    ("passed_regional_fine_echo", "regional model (fine labels, echo-ratio refinement)"),
)
"""The two measures a case's log line and the final count name (every measure is in validation.md)."""


def _verdicts(s: dict) -> str:
    """'voxel map: pass, regional model: 2 bound(s) missed' for one case's :func:`summarise` line."""
    out = []
    for key, label in _MEASURE_LABELS:
        if s.get(key) is None:
            continue
        n = s.get("n_failed" + key[len("passed") :])
        out.append(f"{label.split(' (')[0]}: " + ("pass" if s[key] else f"{n} bound(s) missed"))
    return ", ".join(out) or "not scored"
