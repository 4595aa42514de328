"""``narecon cache info|clear [--json]``: the on-disk cache of density weights.

See :mod:`recon.trajectory.dcf_cache` (directory ``$NARECON_CACHE_DIR/dcf``, else the user cache
directory; size bound ``NARECON_CACHE_MAX_MB``). JSON keys of ``info``: ``directory``,
``enabled``, ``entries``, ``size_bytes``, ``max_bytes``; of ``clear``: ``removed``.
"""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("cache", help="show or clear the disk cache of density weights (Pipe-Menon)")
    p.add_argument("action", choices=["info", "clear"], help="info: where and how big; clear: remove every entry")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recon.trajectory import dcf_cache

    if args.action == "clear":
        out = {"removed": dcf_cache.clear(), "directory": dcf_cache.info()["directory"]}
        print(json.dumps(out) if args.json else f"removed {out['removed']} cached density weight file(s) from {out['directory']}")
        return 0
    i = dcf_cache.info()
    if args.json:
        print(json.dumps(i))
    elif not i["enabled"]:
        print("density weight cache: off (NARECON_CACHE_DIR)")
    else:
        print(
            f"density weight cache: {i['directory']}: {i['entries']} entr{'y' if i['entries'] == 1 else 'ies'}, "
            f"{i['size_bytes'] / 1e6:.1f} MB of {i['max_bytes'] / 1e6:.0f} MB"
        )
    return 0
