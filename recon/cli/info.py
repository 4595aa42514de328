"""``narecon info RAW [RAW2] [--json] [--profile P]``: what a raw data file holds.

JSON keys (units in the key names; null where unknown):

``files`` (list), ``format`` ("VB", "VD/VE", "XA", "ISMRMRD"), ``software``, ``protocol``,
``sequence``, ``nucleus``, ``frequency_hz``, ``field_t``, ``n_echoes``, ``te_s`` (list), ``tr_s``,
``flip_deg``, ``dwell_s``, ``readouts_per_echo``, ``n_samples``, ``n_channels``,
``n_noise_scans``, ``n_noise_samples``, ``dropped_adcs``, ``truncated``, ``fov_m`` (list),
``matrix`` (list), ``position_m`` (list, LPS), ``patient_position``, ``wip_long`` and
``wip_double`` ({index: value}), ``trajectory`` (what the profile would build: ``profile``,
``generator``, ``params``, ``n_projections``, ``n_samples``, ``matches`` and ``mismatch``
(the reason), or ``error``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def register(sub) -> None:
    p = sub.add_parser("info", help="show what a raw data file (twix .dat or ISMRMRD .h5) holds")
    p.add_argument("raw", nargs="+", metavar="RAW", help="raw data file(s); two twix files = two echoes")
    p.add_argument("--json", action="store_true", help="print one JSON object (documented keys)")
    p.add_argument("--profile", default=None, help="sequence profile TOML (default: the shipped default)")
    p.add_argument(
        "--echo-from",
        choices=["eco", "order"],
        default="eco",
        help="echo from the Eco counter (default) or from the ADC order within each TR",
    )
    p.add_argument("--echoes", type=int, default=None, help="echoes per file (default: from the header)")
    p.add_argument("--nucleus", default=None, help="nucleus, e.g. 23Na (ISMRMRD files carry none)")
    p.add_argument("--no-trajectory", action="store_true", help="do not generate the profile's trajectory")
    p.set_defaults(func=run)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "tolist"):
        return _clean(v.tolist())
    return v


def predicted_projections(prm: dict) -> int | None:
    """Projections of the design that ``prm`` (:func:`recon.io.profile.trajectory_params`) describes,
    from the closed-form cone count (TPI) or the radial rule, without generating it; None if unknown."""
    from recon.trajectory.tpi import tpi_cones

    try:
        kmax = 1.0 / (2.0 * float(prm.get("res_m", 0.0035)))
        fov = float(prm.get("fov_m", 0.224))
        us = float(prm.get("undersampling") or 1.0)
        if prm.get("generator", "tpi") == "radial":
            if prm.get("n_projections") is not None:
                return int(prm["n_projections"])
            return int(round(4 * math.pi * (kmax * fov) ** 2 / us))
        return int(tpi_cones(kmax, fov, float(prm.get("p", 0.3)), us)[1].sum())
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def summarize(acq, profile_path: str | None = None, trajectory: bool = True) -> dict:
    """The ``info`` summary of an Acquisition as a JSON-ready dict."""
    from recon.errors import NareconError

    h = acq.header
    g = acq.geometry or {}
    out = {
        "files": list(acq.sources),
        "format": h.get("format"),
        "software": h.get("software"),
        "protocol": h.get("protocol"),
        "sequence": h.get("sequence"),
        "nucleus": acq.nucleus,
        "frequency_hz": acq.frequency_hz,
        "field_t": acq.field_t,
        "n_echoes": acq.n_echoes,
        "te_s": list(acq.te_s),
        "tr_s": acq.tr_s,
        "flip_deg": acq.flip_deg,
        "dwell_s": acq.dwell_s,
        "readouts_per_echo": acq.n_projections,
        "n_samples": acq.n_samples,
        "n_channels": acq.n_coils,
        "n_noise_scans": h.get("n_noise_scans", 0),
        "n_noise_samples": 0 if acq.noise is None else int(acq.noise.shape[1]),
        "dropped_adcs": h.get("dropped_adcs", 0),
        "truncated": h.get("truncated", False),
        "fov_m": acq.fov_m,
        "matrix": acq.matrix,
        "position_m": g.get("position_m"),
        "patient_position": g.get("patient_position"),
        "wip_long": h.get("wip_long", {}),
        "wip_double": h.get("wip_double", {}),
    }
    if trajectory:
        from recon.io.profile import check_match, generate_trajectory, load_profile, trajectory_params

        t: dict = {"profile": profile_path or "default"}
        try:
            prof = load_profile(profile_path)
            prm = trajectory_params(acq, prof)
            t["generator"] = prm["generator"]
            t["params"] = prm
            n_pred = predicted_projections(prm)
            if n_pred is not None and n_pred != acq.n_projections:
                # generating e.g. the 3920-projection TPI takes seconds: not for a file it cannot match
                t["n_projections"] = n_pred
                t["n_samples"] = None
                t["matches"] = False
                t["mismatch"] = (
                    f"projections: data {acq.n_projections} readouts per echo, the profile's design "
                    f"{n_pred} (trajectory not generated)"
                )
                out["trajectory"] = t
                return _clean(out)
            traj = generate_trajectory(acq, prof)
            t["n_projections"] = traj.n_projections
            t["n_samples"] = traj.n_samples
            t["cones"] = traj.params.get("n_cones")
            try:
                check_match(acq, traj)
                t["matches"], t["mismatch"] = True, None
            except NareconError as e:
                t["matches"], t["mismatch"] = False, e.message
        except NareconError as e:
            t["error"] = e.message
        out["trajectory"] = t
    return _clean(out)


def _fmt_t(v, scale, unit, nd=4):
    return "?" if v is None else f"{v * scale:.{nd}g} {unit}"


def run(args: argparse.Namespace) -> int:
    from recon.io import read_raw

    acq = read_raw(args.raw, echo_from=args.echo_from, n_echoes=args.echoes, nucleus=args.nucleus)
    s = summarize(acq, args.profile, trajectory=not args.no_trajectory)
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        print()
        return 0
    w = sys.stdout.write
    w(f"file(s)             {', '.join(s['files'])}\n")
    w(f"format              {s['format']}  (software {s['software'] or '?'})\n")
    w(f"protocol / sequence {s['protocol'] or '?'} / {s['sequence'] or '?'}\n")
    w(
        f"nucleus             {s['nucleus'] or '?'}  at {_fmt_t(s['frequency_hz'], 1e-6, 'MHz', 9)}, "
        f"B0 {_fmt_t(s['field_t'], 1, 'T')}\n"
    )
    tes = ", ".join(_fmt_t(t, 1e3, "ms") for t in s["te_s"])
    w(f"echoes              {s['n_echoes']}  (TE {tes})\n")
    w(f"TR / flip           {_fmt_t(s['tr_s'], 1e3, 'ms')} / {_fmt_t(s['flip_deg'], 1, 'deg')}\n")
    w(f"dwell               {_fmt_t(s['dwell_s'], 1e6, 'us')}\n")
    w(f"readouts per echo   {s['readouts_per_echo']}\n")
    w(f"samples per readout {s['n_samples']}\n")
    w(f"channels            {s['n_channels']}\n")
    w(f"noise scans         {s['n_noise_scans']}  ({s['n_noise_samples']} samples per channel)\n")
    if s["dropped_adcs"]:
        w(f"dropped readouts    {s['dropped_adcs']} (other sample/channel count)\n")
    if s["truncated"]:
        w("truncated           yes: only the complete readouts were read\n")
    if s["fov_m"]:
        w(
            f"FOV                 {' x '.join(f'{f * 1e3:g}' for f in s['fov_m'])} mm, matrix "
            f"{' x '.join(str(m) for m in s['matrix'] or [])}\n"
        )
    if s["wip_long"] or s["wip_double"]:
        w(f"free parameters     alFree {s['wip_long']}\n                    adFree {s['wip_double']}\n")
    t = s.get("trajectory")
    if t:
        if "error" in t:
            w(f"trajectory          profile {t['profile']}: {t['error']}\n")
        else:
            p = t["params"]
            if t.get("n_samples") is None:
                t["n_samples"] = "?"
            desc = f"{t['generator']} p={p.get('p')}, FOV {p.get('fov_m', 0) * 1e3:g} mm, res {p.get('res_m', 0) * 1e3:g} mm"
            w(f"trajectory          profile {t['profile']}: {desc}: {t['n_projections']} projections x {t['n_samples']} samples\n")
            w("                    " + ("matches the data" if t["matches"] else "DOES NOT MATCH: " + t["mismatch"]) + "\n")
    return 0
