"""A drawn case (:func:`recon.validate.ranges.draw_case`) as simulator inputs: phantom, trajectory, protocol."""

from __future__ import annotations

import dataclasses
from typing import Any

from recon.sim.phantom import DEFAULT_COMPARTMENTS, HeadPhantom, Tube


def phantom_for(case: dict[str, Any]) -> HeadPhantom:
    """The :class:`HeadPhantom` of a case (tubes, head size and position, relaxation, tumour, B0 scale)."""
    relax = case["relaxation"]
    comps = {}
    for name, c in DEFAULT_COMPARTMENTS.items():
        r = relax.get(name)
        comps[name] = dataclasses.replace(c, **r) if r else c
    tr = relax["tubes"]
    tubes = tuple(
        Tube(
            f"tube_{i + 1}_{t['concentration_mM']:.0f}mM",
            tuple(t["centre_m"]),
            t["radius_m"],
            t["length_m"],
            t["concentration_mM"],
            axis=tuple(t["axis"]),
            t1_s=tr["t1_s"],
            t2s_s=tr["t2s_long_s"],
        )
        for i, t in enumerate(case["tubes"])
    )
    return HeadPhantom(
        tumour=case["tumour"],
        tubes=tubes,
        b0_scale=case["b0_scale"],
        centre_m=tuple(v * 1e-3 for v in case["head_centre_mm"]),
        head_scale=case["head_scale"],
        compartments=comps,
    )


def trajectory_for(case: dict[str, Any]):
    """The trajectory of a case (TPI or density-adapted radial)."""
    from recon.trajectory import design_trajectory

    fov = case["fov_mm"] * 1e-3
    kw = dict(
        fov_m=fov,
        res_m=fov / case["matrix"],
        p=case["tpi_p"],
        gmax_t_per_m=case["gmax_mt_m"] * 1e-3,
        dwell_s=10e-6,
        undersampling=case["undersampling"],
    )
    return design_trajectory(case["trajectory"], **kw)
