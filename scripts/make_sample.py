#!/usr/bin/env python
"""Regenerate ``data_samples/`` (the shipped sodium sample) exactly, or check it.

    python scripts/make_sample.py            # rewrite data_samples/ and its SHA256SUMS
    python scripts/make_sample.py --check    # regenerate into a temporary folder and compare

The sample is a simulated 7T 23Na dual-echo TPI acquisition of the digital head phantom
(recon.sim), small enough for the repository: FOV 224 mm, 5.6 mm nominal resolution (40^3),
TPI p = 0.3 at 5 mT/m, angularly undersampled x1.2 (10 us dwell), a head scaled 0.85 and four 26 mm
tubes beside it inside the alias-free sphere,
TE 0.30 / 2.32 ms, TR 174 ms, flip 90 deg, one channel, raw-data SNR 150, seed 0, simulated on
a 160^3 grid (4x: a 2x grid aliases the sharp tube walls into the band by several per cent at high
k). The NUFFT runs single-threaded so the output is bit-reproducible on a given
platform (FFTW/finufft may round differently on other CPUs; ``--check`` then reports the
largest difference instead of byte identity).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE = {
    "fov_mm": 224.0,
    "matrix": 40,
    "p": 0.3,
    "gmax_mt_m": 5.0,
    "undersampling": 1.2,
    "dwell_us": 10.0,
    "te_ms": (0.30, 2.32),
    "tr_ms": 174.0,
    "flip_deg": 90.0,
    "field_t": 7.0,
    "snr": 150.0,
    "seed": 0,
    "oversampling": 4.0,
    "coils": 1,
    "tumour": "rim-core",
    "marker": False,
    "b0_scale": 1.0,
    "head_scale": 0.85,
    # tubes beside the head, inside the alias-free sphere (radius 102 mm at undersampling 1.2): LPS x, y, z,
    # radius, length (mm) and mM; 30/60 mM on the patient's right (anterior/posterior), 90/120 mM on the left
    "tubes_lps_mm": (
        (-84.0, -22.0, 0.0, 13.0, 36.0, 30.0),
        (-84.0, 22.0, 0.0, 13.0, 36.0, 60.0),
        (84.0, -22.0, 0.0, 13.0, 36.0, 90.0),
        (84.0, 22.0, 0.0, 13.0, 36.0, 120.0),
    ),
}
CLI_EQUIVALENT = (
    "narecon simulate --out data_samples --matrix 40 --traj-undersampling 1.2 --traj-gmax-mt-m 5 --snr 150 --seed 0 "
    "--threads 1 --oversampling 4 --head-scale 0.85 --tube 84,22,0,13,36,30 --tube 84,-22,0,13,36,60 --tube -84,22,0,13,36,90 "
    "--tube -84,-22,0,13,36,120"
)
MANIFEST = "SHA256SUMS"
DATA_FILES = (
    "raw.dat",
    "truth.json",
    "truth_b0_hz.nii.gz",
    "truth_labels.nii.gz",
    "truth_labels_fine.nii.gz",
    "truth_tsc_mM.nii.gz",
)


def generate(out: Path) -> None:
    """Simulate the sample and write it (atomically) into ``out``, with its manifest."""
    from recon.sim import HeadPhantom, Tube, simulate, write_simulation
    from recon.trajectory import tpi

    s = SAMPLE
    traj = tpi(
        fov_m=s["fov_mm"] * 1e-3,
        res_m=s["fov_mm"] * 1e-3 / s["matrix"],
        p=s["p"],
        gmax_t_per_m=s["gmax_mt_m"] * 1e-3,
        undersampling=s["undersampling"],
        dwell_s=s["dwell_us"] * 1e-6,
    )
    tubes = tuple(
        Tube(f"tube_{c:g}mM", (x * 1e-3, y * 1e-3, z * 1e-3), r * 1e-3, ln * 1e-3, c) for x, y, z, r, ln, c in s["tubes_lps_mm"]
    )
    phantom = HeadPhantom(tumour=s["tumour"], marker=s["marker"], b0_scale=s["b0_scale"], head_scale=s["head_scale"], tubes=tubes)
    res = simulate(
        phantom,
        traj,
        te_s=[t * 1e-3 for t in s["te_ms"]],
        tr_s=s["tr_ms"] * 1e-3,
        flip_deg=s["flip_deg"],
        field_t=s["field_t"],
        snr=s["snr"],
        n_coils=s["coils"],
        oversampling=s["oversampling"],
        seed=s["seed"],
        n_threads=1,
    )
    write_simulation(
        res,
        traj,
        out,
        overwrite=True,
        phantom=phantom,
        extra_info={
            "sample": {
                "made_by": "scripts/make_sample.py",
                "cli_equivalent": CLI_EQUIVALENT,
                "parameters": dict(s),
            }
        },
    )
    write_manifest(out)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    lines = [f"{sha256(folder / n)}  {n}" for n in DATA_FILES]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")


def read_manifest(folder: Path) -> dict[str, str]:
    out = {}
    for line in (folder / MANIFEST).read_text().splitlines():
        digest, name = line.split()
        out[name] = digest
    return out


ROUNDING_RTOL = 1e-9
"""Largest relative difference that :func:`compare` calls rounding (another CPU's FFTW/finufft/libm
rounds differently: 3e-11 on the raw data, 1e-15 in truth.json, measured on a second machine)."""


def _json_numbers_close(a, b, rtol: float) -> bool:
    import math

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_json_numbers_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_json_numbers_close(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=rtol, abs_tol=1e-300)
    return a == b


def compare(ref: Path, new: Path, rtol: float | None = None) -> list[str]:
    """Differences between two sample folders: [] when byte-identical; otherwise one line per
    differing file with the largest data difference (raw data and NIfTI volumes).

    With ``rtol`` (e.g. :data:`ROUNDING_RTOL`), files that differ only by rounding are not listed:
    raw data and float volumes within ``rtol`` of their largest value, truth.json with every number
    within ``rtol`` and everything else equal. Label volumes must still be identical.
    """
    import json

    import numpy as np

    diffs = []
    for name in DATA_FILES:
        if sha256(ref / name) == sha256(new / name):
            continue
        if name == "raw.dat":
            from recon.io import read_raw

            a, b = read_raw(ref / name), read_raw(new / name)
            d = float(np.abs(a.data - b.data).max() / np.abs(a.data).max())
            if rtol is None or not d <= rtol:
                diffs.append(f"{name}: bytes differ; max |data difference| / max |data| = {d:.3g}")
        elif name.endswith(".nii.gz"):
            import nibabel as nib

            a, b = (np.asarray(nib.load(p).dataobj, dtype=np.float64) for p in (ref / name, new / name))
            d = float(np.abs(a - b).max())
            tol = -1.0 if rtol is None or "labels" in name else rtol * float(np.abs(a).max())
            if not d <= tol:
                diffs.append(f"{name}: bytes differ; max |difference| = {d:.3g}")
        elif name.endswith(".json") and rtol is not None:
            if not _json_numbers_close(json.loads((ref / name).read_text()), json.loads((new / name).read_text()), rtol):
                diffs.append(f"{name}: differs beyond rounding (relative {rtol:g})")
        else:
            diffs.append(f"{name}: bytes differ")
    return diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "data_samples"), help="sample folder (data_samples)")
    ap.add_argument("--check", action="store_true", help="regenerate into a temporary folder and compare")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not args.check:
        readme = out / "README.md"
        keep = readme.read_text() if readme.exists() else None
        generate(out)
        if keep is not None:
            readme.write_text(keep)
        print(f"wrote {out}: " + ", ".join(f"{n} ({(out / n).stat().st_size / 1e6:.2f} MB)" for n in DATA_FILES))
        return 0
    manifest = read_manifest(out)
    bad = [n for n in DATA_FILES if sha256(out / n) != manifest.get(n)]
    if bad:
        print(f"{out}: files do not match {MANIFEST}: {', '.join(bad)}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / "sample"
        generate(new)
        diffs = compare(out, new)
        beyond = compare(out, new, ROUNDING_RTOL)
    if beyond:
        print("regenerated sample differs:\n  " + "\n  ".join(beyond))
        return 1
    if diffs:
        print(
            f"{out}: regenerated sample equals the shipped one to rounding (relative {ROUNDING_RTOL:g}); bytes differ:\n  "
            + "\n  ".join(diffs)
        )
        return 0
    print(f"{out}: regenerated sample is byte-identical ({len(DATA_FILES)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
