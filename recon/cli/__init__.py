"""The ``narecon`` command line.

Subcommands live in their own modules in this package; each defines
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code. Modules are discovered automatically, so a new
stage adds its command without touching this file. Heavy imports belong inside ``func``.

User errors (:class:`recon.errors.NareconError`) are printed as one line, ``narecon: error:
...``, without a traceback, and the exit code is 2; ``-v`` adds debug logging and, for errors,
the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from recon import __version__
from recon.errors import NareconError
from recon.log import setup_logging

log = logging.getLogger("recon.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="narecon",
        description="Sodium (23Na) MRI reconstruction: Siemens raw data to calibrated TSC maps in mM.",
    )
    parser.add_argument("--version", action="version", version=f"narecon {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging (and tracebacks)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        if hasattr(module, "register"):
            module.register(sub)
    # -v / -q are accepted after the command name too (``narecon run ... -v``): each subparser gets
    # them under other names (a subparser's defaults would otherwise overwrite the main parser's)
    _add_log_flags(sub)
    return parser


def _add_log_flags(sub: argparse._SubParsersAction) -> None:
    """Add -v/-q to every (nested) subcommand parser, stored as ``verbose_cmd``/``quiet_cmd``."""
    for sp in set(sub.choices.values()):
        nested = [a for a in sp._actions if isinstance(a, argparse._SubParsersAction)]
        for a in nested:
            _add_log_flags(a)
        if nested:
            continue
        sp.add_argument("-v", "--verbose", dest="verbose_cmd", action="count", default=0, help="debug logging (and tracebacks)")
        sp.add_argument("-q", "--quiet", dest="quiet_cmd", action="store_true", help="warnings and errors only")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``narecon`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = int(args.verbose) + int(getattr(args, "verbose_cmd", 0) or 0)
    args.quiet = bool(args.quiet or getattr(args, "quiet_cmd", False))
    setup_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args) or 0)
    except NareconError as e:
        if args.verbose:
            log.exception("details")
        print(f"narecon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("narecon: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`: not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
