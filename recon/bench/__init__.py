"""Trajectory-variant benchmarking (``narecon bench-traj``): which design is best for 23Na at 7T?

A variants file (TOML) lists trajectory designs, each with a protocol and reconstruction
settings; every variant is simulated on the digital head phantom and reconstructed, and the
figures of merit below are measured (never guessed). Variants run one after the other (a plain
sequential loop; the batch engine's per-scan model does not fit here and two shared cores gain
nothing from it).

Figures of merit per variant (SI inside, mm / ms / mT/m in the tables):

* design: projections, samples per projection, readout duration, scan time
  (projections x TR x echoes), peak gradient and slew of the design waveforms
  (:meth:`recon.trajectory.Trajectory.checks`), and whether the scan fits the time budget;
* PSF with T2* decay, measured from the simulated point response: a unit delta at the isocentre
  gives data y_m = decay(TE1 + t_m) for every sample; its density-compensated gridding
  x(r) = sum_m w_m y_m exp(+i 2 pi k_m . r) is evaluated exactly (finufft type 3, no grid) on
  radial lines in ``psf_directions`` directions and averaged into a radial profile. FWHM (mm)
  is twice the first half-maximum radius (linear interpolation); peak is relative to the same
  trajectory without decay. Decays: tissue 0.6 exp(-t/3.5 ms) + 0.4 exp(-t/23 ms), CSF
  exp(-t/54 ms), and none;
* SNR by pseudo-replica: ``replicas`` gridding reconstructions of pure white complex noise
  (E|n|^2 = sigma^2 per sample, sigma from the raw-data SNR of :func:`recon.sim.simulate`,
  scaled by sqrt(10 us / dwell) so longer dwells have less noise per sample) give the noise SD per
  voxel; SNR = RMS tissue signal (grey + white matter, noise power subtracted) / mean SD, and the
  efficiency SNR / sqrt(scan time in s). The analytic check is SD = sigma sqrt(sum_m w_m^2);
* accuracy on the phantom (matrix and FOV of the variant, simulated on a 2x finer grid with B0
  and the tissue relaxation): for every reconstruction method (``gridding`` = no B0 correction,
  ``tb-cpr``, ``fs-cpr``, ``mfi`` with the dual-echo field map; ``iterative`` = the pipeline's
  SigPy model with B0 and an R2* map from the echo ratio, its echo-1 image), the NRMSE of
  |echo-1 image| against the ideal echo-1 image (voxel-averaged TSC x T1 saturation x
  decay(TE1), no readout blur) and the ROI bias (mean |x| / mean ideal - 1, in %) for tubes,
  GM, WM, CSF and tumour;
* reconstruction time (NUFFT planning included) and peak Python/NumPy memory (tracemalloc; the
  C allocations inside finufft are not seen).

Written here because no library benchmarks sodium trajectory designs; every number comes from
the project's own stages (recon.trajectory, recon.sim, recon.nufft, recon.b0).

Package layout: :mod:`recon.bench.variants` (the variants file and the designs),
:mod:`recon.bench.psf` (point response with decay), :mod:`recon.bench.noise` (pseudo-replica
SNR), :mod:`recon.bench.metrics` (ideal image, bias, NRMSE, cost), :mod:`recon.bench.run` (one
variant: simulate with :func:`recon.sim.simulate`, reconstruct with :func:`recon.reconstruct`,
measure; the loop over variants) and :mod:`recon.bench.report` (CSV, Markdown, plots).
"""

from recon.bench.metrics import ideal_image, nrmse, roi_bias
from recon.bench.noise import analytic_noise_sd, pseudo_replica_sd
from recon.bench.psf import PSF_DECAYS, ball_psf, decay_csf, decay_none, decay_tissue, fwhm, point_response, radial_psf
from recon.bench.report import rows_to_csv, rows_to_markdown, write_plots
from recon.bench.run import run_bench, run_variant
from recon.bench.variants import RECON_METHODS, ROIS, BenchConfig, Variant, build_trajectory, load_variants

__all__ = [
    "BenchConfig",
    "PSF_DECAYS",
    "RECON_METHODS",
    "ROIS",
    "Variant",
    "analytic_noise_sd",
    "ball_psf",
    "build_trajectory",
    "decay_csf",
    "decay_none",
    "decay_tissue",
    "fwhm",
    "ideal_image",
    "load_variants",
    "nrmse",
    "point_response",
    "pseudo_replica_sd",
    "radial_psf",
    "roi_bias",
    "rows_to_csv",
    "rows_to_markdown",
    "run_bench",
    "run_variant",
    "write_plots",
]
