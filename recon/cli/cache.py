"""``narecon cache info|clear [--json]``: the on-disk caches of density weights, trajectory designs
and the calibration's point-response kernels.

See :mod:`recon.trajectory.dcf_cache` (directory ``$NARECON_CACHE_DIR/dcf``, else the user cache
directory; size bound ``NARECON_CACHE_MAX_MB``), :mod:`recon.trajectory.design_cache`
(``.../trajectory``) and :mod:`recon.calibrate.kernel_cache` (``.../psf``). JSON keys of ``info``:
``directory``, ``enabled``, ``entries``, ``size_bytes``, ``max_bytes`` (the DCF cache),
``trajectory`` and ``psf`` (the same keys for the design and kernel caches); of ``clear``:
``removed`` (all three).
"""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "cache",
        help="show or clear the disk caches of density weights (Pipe-Menon), trajectory designs and calibration kernels",
    )
    p.add_argument("action", choices=["info", "clear"], help="info: where and how big; clear: remove every entry")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recon.calibrate import kernel_cache
    from recon.trajectory import dcf_cache, design_cache

    if args.action == "clear":
        n = dcf_cache.clear() + design_cache.clear() + kernel_cache.clear()
        out = {"removed": n, "directory": dcf_cache.info()["directory"]}
        what = "density weights, trajectory designs, point-response kernels"
        print(json.dumps(out) if args.json else f"removed {out['removed']} cached file(s) ({what})")
        return 0
    i = dcf_cache.info()
    t = design_cache.info()
    k = kernel_cache.info()
    if args.json:
        print(json.dumps({**i, "trajectory": t, "psf": k}))
        return 0
    for what, c in (("density weight cache", i), ("trajectory design cache", t), ("point-response kernel cache", k)):
        if not c["enabled"]:
            print(f"{what}: off (NARECON_CACHE_DIR)")
        else:
            print(
                f"{what}: {c['directory']}: {c['entries']} entr{'y' if c['entries'] == 1 else 'ies'}, "
                f"{c['size_bytes'] / 1e6:.1f} MB of {c['max_bytes'] / 1e6:.0f} MB"
            )
    return 0
