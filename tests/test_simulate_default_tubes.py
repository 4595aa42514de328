"""The default tubes of `narecon simulate` at coarse matrices (recon.cli.simulate.make_phantom).

At 32^3 (7 mm voxels) the default tubes scaled to 2 voxels do not separate from the head when they
sit beside it (`narecon run` found 3 of 4: session 5, h20s), so they go to the FOV's corners there;
at 40^3 and finer they stay beside the head. The slow test runs the newcomer's path end to end.
"""

from __future__ import annotations

import numpy as np
import pytest

from recon.cli import build_parser
from recon.cli.simulate import make_phantom, make_trajectory
from recon.sim.phantom import default_tubes


def _phantom(matrix: int, tmp_path):
    args = build_parser().parse_args(["simulate", "--matrix", str(matrix), "--out", str(tmp_path / "s")])
    traj = make_trajectory(args)
    return make_phantom(args, traj), 0.224 / matrix


def test_default_tubes_at_32_go_to_the_corners_at_2_voxels_and_stay_beside_the_head_at_40(tmp_path):
    ph, vox = _phantom(32, tmp_path)
    corners = default_tubes(layout="corners")
    for t, c in zip(ph.tubes, corners):
        assert np.allclose(t.centre_m, c.centre_m) and t.radius_m >= 1.99 * vox
    ph40, _ = _phantom(40, tmp_path)
    for t, d in zip(ph40.tubes, default_tubes()):
        assert np.allclose(t.centre_m, d.centre_m) and t.radius_m == d.radius_m


@pytest.mark.slow
def test_a_default_32_cubed_simulation_reconstructs_with_its_four_tubes(tmp_path):
    from recon.cli import main

    assert main(["simulate", "--matrix", "32", "--out", str(tmp_path / "s"), "-q"]) == 0
    assert main(["run", str(tmp_path / "s" / "raw.dat"), "--out", str(tmp_path / "o"), "-q"]) == 0
