"""``narecon cache info|clear [--json]``: the on-disk caches of density weights and trajectory designs.

See :mod:`recon.trajectory.dcf_cache` (directory ``$NARECON_CACHE_DIR/dcf``, else the user cache
directory; size bound ``NARECON_CACHE_MAX_MB``) and :mod:`recon.trajectory.design_cache`
(``.../trajectory``). JSON keys of ``info``: ``directory``, ``enabled``, ``entries``,
``size_bytes``, ``max_bytes`` (the DCF cache) and ``trajectory`` (the same keys for the design
cache); of ``clear``: ``removed`` (both).
"""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("cache", help="show or clear the disk caches of density weights (Pipe-Menon) and trajectory designs")
    p.add_argument("action", choices=["info", "clear"], help="info: where and how big; clear: remove every entry")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recon.trajectory import dcf_cache, design_cache

    if args.action == "clear":
        out = {"removed": dcf_cache.clear() + design_cache.clear(), "directory": dcf_cache.info()["directory"]}
        print(json.dumps(out) if args.json else f"removed {out['removed']} cached file(s) (density weights, trajectory designs)")
        return 0
    i = dcf_cache.info()
    t = design_cache.info()
    if args.json:
        print(json.dumps({**i, "trajectory": t}))
        return 0
    for what, c in (("density weight cache", i), ("trajectory design cache", t)):
        if not c["enabled"]:
            print(f"{what}: off (NARECON_CACHE_DIR)")
        else:
            print(
                f"{what}: {c['directory']}: {c['entries']} entr{'y' if c['entries'] == 1 else 'ies'}, "
                f"{c['size_bytes'] / 1e6:.1f} MB of {c['max_bytes'] / 1e6:.0f} MB"
            )
    return 0
