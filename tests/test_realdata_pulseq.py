"""Real scanner data: the Pulseq 3-echo GRE (pulseq/tutorials, CC0) with its own ``.seq`` file.

Truth: the sequence file defines the k-space position of every ADC sample exactly, and these
k lie on a Cartesian grid, so the NUFFT reconstruction of each echo must equal a plain FFT of
the same data once the FFT's grid offset (measured from the .seq's k, half a sample along
the readout) is applied as the phase ramp it is.
"""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import TrajectoryError

pytest.importorskip("pypulseq", reason="pypulseq is needed to read .seq files")

DAT = "pulseq_02_GRE_3echoes.dat"
SEQ = "pulseq_02_GRE_3echoes.seq"


@pytest.fixture(scope="module")
def gre(shared_twix):
    from recon.io import read_raw
    from recon.trajectory.importers import import_trajectory

    if not (shared_twix / SEQ).is_file():
        pytest.skip(f"{SEQ} absent from {shared_twix}")
    acq = read_raw(shared_twix / DAT, echo_from="order", n_echoes=3)
    traj = import_trajectory(shared_twix / SEQ, echoes=3)  # matrix inferred from the 1/FOV grid of k
    return acq, traj


def _fft_reference(y_lines: np.ndarray, k_grid: np.ndarray) -> np.ndarray:
    """sum_m y_m exp(+i 2 pi k_m . r_j) by FFT for k = integer grid + a constant offset delta (cycles/FOV)."""
    n0, n1 = y_lines.shape[1], y_lines.shape[0]
    idx0 = np.arange(n0) - n0 // 2
    idx1 = np.arange(n1) - n1 // 2
    delta0 = float(np.mean(k_grid[:, :, 0] - idx0[None, :]))
    delta1 = float(np.mean(k_grid[:, :, 1] - idx1[:, None]))
    kspace = y_lines.T  # (readout sample = axis 0, line = axis 1)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace))) * (n0 * n1)
    ramp0 = np.exp(2j * np.pi * delta0 * idx0 / n0)
    ramp1 = np.exp(2j * np.pi * delta1 * idx1 / n1)
    return img * ramp0[:, None] * ramp1[None, :], (delta0, delta1)


def test_seq_trajectory_is_the_cartesian_grid(gre):
    acq, traj = gre
    assert traj.k.shape == (256, 256, 3) and acq.data.shape == (3, 1, 256, 256)
    assert traj.matrix == (256, 256, 1) and traj.fov_m == pytest.approx((0.256, 0.256, 0.003))
    assert traj.dwell_s == pytest.approx(12.5e-6)  # from the .seq (the twix header says 10 us: a dummy)
    kg = traj.k * np.asarray(traj.fov_m)
    # readout along kx one cycle/FOV per sample, lines along ky one cycle/FOV apart
    np.testing.assert_allclose(np.diff(kg[:, :, 0], axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.diff(kg[:, :, 1], axis=0), 1.0, atol=1e-3)
    assert np.abs(kg[:, :, 2]).max() < 1e-3


def test_echoes_share_k_and_single_echo_import(shared_twix, gre):
    from recon.trajectory.importers import import_trajectory

    _, traj = gre
    t2 = import_trajectory(shared_twix / SEQ, echoes=3, echo=2, matrix=(256, 256, 1))
    assert np.abs((t2.k - traj.k) * np.asarray(traj.fov_m)).max() < 1e-3
    every_adc = import_trajectory(shared_twix / SEQ, matrix=(256, 256, 1))
    assert every_adc.n_projections == 768
    with pytest.raises(TrajectoryError, match="multiple of 5 echoes"):
        import_trajectory(shared_twix / SEQ, echoes=5)


@pytest.mark.parametrize("echo", [0, 1, 2])
def test_nufft_equals_fft_per_echo(gre, echo):
    from recon.nufft import NUFFT

    acq, traj = gre
    y = acq.data[echo, 0]  # (line, sample)
    op = NUFFT(traj.k, (256, 256, 1), traj.fov_m, eps=1e-9, dtype=np.complex128)
    img = op.adjoint(y.astype(np.complex128))[:, :, 0]
    ref, delta = _fft_reference(y, traj.k * np.asarray(traj.fov_m))
    assert abs(delta[0] - 0.5) < 0.01  # pypulseq puts ADC samples at (i + 0.5) dwell: half a cycle/FOV
    nrmse = np.linalg.norm(img - ref) / np.linalg.norm(ref)
    assert nrmse <= 1e-3, nrmse
    # and the image is an image: the object (phantom) fills the centre, not the corners
    mag = np.abs(img)
    assert mag[96:160, 96:160].mean() > 5 * mag[:32, :32].mean()


def test_echo_order_from_adc_order_decays(gre):
    """Echo k of each TR is the k-th ADC: the signal must fall with the echo index (T2* decay)."""
    acq, _ = gre
    energy = [np.linalg.norm(acq.data[e]) for e in range(3)]
    assert energy[0] > energy[1] > energy[2]


def test_units_check_uses_the_trajectory_for_pulseq_dummy_headers(gre):
    from recon.trajectory.units import check_trajectory_units

    acq, traj = gre
    m = check_trajectory_units(traj, acq)
    assert m["reference"] == "trajectory" and m["kmax_ratio"] == pytest.approx(1.0, abs=0.01)
    assert m["centre_sample"] == 128 and m["centre_k_fraction"] < 0.01


def test_run_traj_reader_fills_echoes_from_the_data(shared_twix, gre):
    from recon.trajectory.importers import trajectory_for_acquisition

    acq, traj = gre
    t = trajectory_for_acquisition(shared_twix / SEQ, acq, matrix=(256, 256, 1))
    assert t.n_projections == acq.n_projections == 256
    np.testing.assert_array_equal(t.k, traj.k)
