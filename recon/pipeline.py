"""The one place that composes the stages: :func:`reconstruct` (in memory) and :func:`run` (to a folder).

``recon.reconstruct(source, options)`` reads raw data (or takes an :class:`~recon.io.Acquisition`),
builds or reads the trajectory, density weights and NUFFT plan, grids both echoes, estimates the
field map and corrects off-resonance, calibrates the echo-1 image into TSC (mM) and returns a
:class:`ReconResult` with every array in memory: it writes nothing. :func:`recon.outputs.write_run`
puts a result on disk atomically; :func:`run` is the two together (``narecon run``, batch).

The body of :func:`reconstruct` is a short chain of named stage functions, each taking and
returning plain data (arrays, dataclasses), so a notebook, a benchmark or a validation loop can
call any of them alone. Plans (trajectory, density weights, NUFFT) come from the caller's
:class:`recon.plans.Plans`; a batch worker passes a persistent one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from recon.errors import ConfigError, InputError, NareconError, TrajectoryError
from recon.log import StageTimer
from recon.options import RunOptions, load_config  # noqa: F401  (load_config: re-exported for callers)
from recon.plans import Plans, plans_or_default

log = logging.getLogger("recon.pipeline")

SAME_TE_S = 1e-6
"""Two contrasts whose echo times differ by less than this (s) are separate images, not an echo pair."""

Source = "str | os.PathLike | Sequence[str | os.PathLike] | Acquisition"


@dataclasses.dataclass
class KSpace:
    """Prepared k-space of one scan: what the gridding and B0 stages consume.

    data : complex64 (n_echo, n_coil, n_proj, n_samp), projections in trajectory order, prewhitened
        (unit noise variance per channel) when there are several coils with noise scans.
    k : (n_proj, n_samp, 3) sample positions in cycles/m of the acquired projections.
    dcf : (n_proj, n_samp) density weights in 1/m^3. t_s : sample times from the first sample, s.
    projections : indices of the acquired projections into the trajectory.
    """

    data: np.ndarray
    k: np.ndarray
    dcf: np.ndarray
    t_s: np.ndarray
    projections: np.ndarray
    prewhitened: bool = False
    noise_cov: np.ndarray | None = None  # (coil, coil) covariance the data were whitened with
    points: Any = None  # recon.nufft.NufftPoints of k made beforehand (a cached design's), or None


@dataclasses.dataclass
class FieldMap:
    """Off-resonance field map in Hz (DESIGN.md sign) and how it was obtained."""

    hz: np.ndarray
    info: dict[str, Any]
    mask: np.ndarray | None = None  # the signal support the map was estimated in (coil-combined echo 1)


@dataclasses.dataclass
class ReconResult:
    """Everything a reconstruction produced, in memory.

    echoes : complex (n_echo, N0, N1, N2), B0-corrected and coil-combined, in the unit chain's
        signal units. fieldmap_hz : (N0, N1, N2) Hz. dcf : density weights (1/m^3) used.
    tsc_mM : TSC map in mM (None with ``calibration = none``). ratio : TSC / mean TSC in the
    ratio region, or None. calibration : :class:`recon.calibrate.Calibration` or None.
    affine : voxel -> scanner RAS+ mm. provenance : inputs, options, versions, timings.
    input_sha256 : SHA-256 of each raw file (``acquisition.sources``), computed on a helper thread
    from the moment the files are read (:func:`hash_inputs`), for the writer's provenance.
    model_echoes : the echo images (same shape and signal units as ``echoes``) that the calibration's tube
        model and the regional system model (``regions``) were fitted on: None when those are ``echoes``;
        in an iterative run with the model calibration, the B0-corrected gridding images (tb-cpr), whose
        point response the templates describe, while ``echoes`` and ``tsc_mM`` are the iterative image.
    """

    echoes: np.ndarray
    fieldmap_hz: np.ndarray
    dcf: np.ndarray
    affine: np.ndarray
    acquisition: Any
    trajectory: Any
    options: RunOptions
    b0_method: str
    tsc_mM: np.ndarray | None = None
    ratio: np.ndarray | None = None
    calibration: Any = None
    mask: np.ndarray | None = None
    background: dict[str, Any] | None = None
    relaxation_info: dict[str, Any] | None = None
    fieldmap_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    iterative_info: dict[str, Any] | None = None
    regions: Any = None  # recon.calibrate.regions.RegionalResult with options.regions
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    timings_s: dict[str, float] = dataclasses.field(default_factory=dict)
    input_sha256: tuple[str, ...] | None = None  # one per acquisition.sources, hashed while the reconstruction ran
    model_echoes: np.ndarray | None = None  # the images the tube and regional models describe, when not ``echoes``
    receive: Any = None  # recon.receive.ReceiveProfile divided out of the images (receive_reference), or None

    @property
    def matrix(self) -> tuple[int, int, int]:
        return tuple(self.echoes.shape[-3:])

    def calibration_dict(self) -> dict[str, Any]:
        """calibration.json's content (``{"method": "none"}`` for images-only runs)."""
        if self.calibration is None:
            return {"method": "none", "tubes": [], "warnings": []}
        d = self.calibration.result.to_dict()
        if self.relaxation_info is not None:
            d["relaxation_map"] = self.relaxation_info
        if self.background is not None:
            d["background_outside_mask_mM"] = self.background
        if self.regions is not None:  # the regional record (values also in regions.tsv) with its settings and warnings
            d["regional"] = self.regions.to_dict()
        if self.receive is not None:
            d["receive_profile"] = dict(self.receive.info)
        elif self.acquisition is not None and getattr(self.acquisition, "n_coils", 1) > 1:
            from recon.receive import array_warning

            d["warnings"] = list(d.get("warnings", [])) + [array_warning(self.acquisition.n_coils)]
        return d

    def summary(self) -> dict[str, Any]:
        """Short JSON-able summary: calibration, B0 method, timings."""
        return {
            "calibration": self.calibration_dict(),
            "b0_method": self.b0_method,
            "timings_s": dict(self.timings_s),
            "total_s": float(sum(self.timings_s.values())),
        }

    def __repr__(self) -> str:
        cal = "none" if self.calibration is None else self.calibration.result.method
        return (
            f"ReconResult(echoes={self.echoes.shape} {self.echoes.dtype}, b0={self.b0_method!r}, "
            f"calibration={cal!r}, total {sum(self.timings_s.values()):.1f} s)"
        )


# ---------------------------------------------------------------- stages
def load_acquisition(source: Any, opts: RunOptions, timer: StageTimer | None = None):
    """Stage 1: the :class:`~recon.io.Acquisition` of ``source`` (paths or an Acquisition), checked."""
    from recon.io import Acquisition, read_raw

    timer = timer or StageTimer()
    if isinstance(source, Acquisition):
        acq = source
    else:
        paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        with timer.stage("read raw data"):
            acq = read_raw(paths, echo_from=opts.echo_from, nucleus=opts.nucleus)
    where = acq.sources[0] if acq.sources else None
    want = opts.nucleus_expected
    if want is not None and acq.nucleus != want:
        raise InputError(
            f"nucleus is {acq.nucleus!r}, expected {want!r} (use --nucleus-check off to reconstruct other nuclei)", where
        )
    log.info(
        "%s: %s, %d echo(es) TE %s ms, %d coil(s), %d readouts x %d samples",
        ", ".join(str(s) for s in acq.sources) or "acquisition",
        acq.nucleus,
        acq.n_echoes,
        [round(t * 1e3, 3) for t in acq.te_s],
        acq.n_coils,
        acq.n_projections,
        acq.n_samples,
    )
    if acq.n_echoes >= 2 and not echo_pair(acq):  # logged once here; the stages only ask echo_pair()
        log.info("contrasts 1 and 2 share TE %.3f ms: separate images, no dual-echo field map", acq.te_s[0] * 1e3)
    from recon import limits

    data = np.asarray(acq.data)
    # largest |real| or |imag| by max/min of the float view (no temporaries); NaN propagates, inf is inf
    f = np.ascontiguousarray(data).view(data.real.dtype) if np.iscomplexobj(data) else data
    peak = max(float(np.max(f)), -float(np.min(f))) if data.size else 0.0
    if not np.isfinite(peak):
        raise InputError("raw data contain NaN or infinite samples", where)
    if peak > limits.get("raw_abs"):
        raise InputError(
            f"raw samples reach {peak:.3g}, beyond the plausible {limits.get('raw_abs'):g} (corrupt data; gridding would overflow)",
            where,
        )
    if opts.skip_projections or opts.drop_projections:
        from recon.trajectory.importers import drop_readouts, parse_index_list

        acq = drop_readouts(acq, opts.skip_projections, parse_index_list(opts.drop_projections))
    return acq


def load_trajectory(acq, opts: RunOptions, plans: Plans | None = None, timer: StageTimer | None = None):
    """Stage 2: the trajectory (from ``opts.traj`` or built from the header by the profile), checked.

    Returns (trajectory, description of its source).
    """
    from recon.io import build_trajectory, load_profile
    from recon.io.profile import trajectory_params
    from recon.trajectory.importers import detect_format, trajectory_for_acquisition

    plans = plans_or_default(plans)
    timer = timer or StageTimer()
    with timer.stage("trajectory"):
        if opts.traj:
            st = os.stat(opts.traj)
            # other formats than narecon's .h5 take dwell/FOV/matrix/echoes from the data: part of the key
            fill = () if detect_format(opts.traj) == "narecon" else (acq.dwell_s, acq.fov_m, acq.matrix, acq.n_echoes, acq.nucleus)
            key = lambda: ("file", os.path.realpath(opts.traj), st.st_mtime_ns, st.st_size, fill)  # noqa: E731
            traj = plans.trajectory(key, lambda: trajectory_for_acquisition(opts.traj, acq))
            source = f"file {opts.traj}"
        else:
            profile = load_profile(opts.profile)

            def key():
                import json

                prof = ("default",) if not opts.profile else (os.path.realpath(opts.profile), os.stat(opts.profile).st_mtime_ns)
                return ("profile", *prof, json.dumps(trajectory_params(acq, profile), sort_keys=True, default=str))

            def design():
                import json

                from recon.trajectory.dcf_cache import file_digest
                from recon.trajectory.design_cache import cached_design

                try:
                    params = json.loads(json.dumps(trajectory_params(acq, profile), default=str))
                except NareconError:  # the builder names the file and the problem
                    return build_trajectory(acq, profile)
                prof = file_digest(opts.profile) if opts.profile else "default"
                built, how = cached_design({"profile": prof, "params": params}, lambda: build_trajectory(acq, profile))
                log.debug("trajectory design: %s", how)
                return built

            traj = plans.trajectory(key, design)
            source = f"profile {opts.profile or 'default'} ({traj.params.get('generator')})"
        check_trajectory(acq, traj, source)
        if opts.traj:  # a file's NUFFT points: converted once per file content (a design's come with it)
            from recon.trajectory.design_cache import cached_points

            log.debug("NUFFT points of the trajectory file: %s", cached_points(traj))
    log.info(
        "trajectory from %s: %d projections x %d samples, readout %.2f ms",
        source,
        traj.n_projections,
        traj.n_samples,
        traj.readout_s * 1e3,
    )
    return traj, source


def check_trajectory(acq, traj, source: str) -> None:
    """The trajectory fits the data (samples per readout, projections, dwell)."""
    from recon.io import check_match

    try:
        check_match(acq, traj)
    except TrajectoryError as e:
        raise TrajectoryError(
            f"trajectory ({source}) does not match the data: {e.message}", acq.sources[0] if acq.sources else None
        ) from e
    from recon.trajectory.units import check_trajectory_units

    check_trajectory_units(traj, acq)  # k in cycles/m for this header and these data (both directions)


def density_weights(traj, opts: RunOptions, plans: Plans | None = None, timer: StageTimer | None = None) -> tuple[np.ndarray, str]:
    """Stage 3: density weights (n_proj, n_samp) in 1/m^3 and the method's name."""
    from recon.trajectory.dcf_cache import cached_dcf, resolve_method

    if opts.dcf == "auto" and traj.dcf is not None:
        return traj.dcf, "from trajectory file"
    method = resolve_method(traj, opts.dcf)
    timer = timer or StageTimer()
    with timer.stage(f"density compensation ({method})"):
        dcf, how = cached_dcf(traj, method, plans=plans)  # Pipe-Menon weights: disk cache by content
    log.info("density weights: %s", how)
    return dcf, method


def prepare_kspace(acq, traj, dcf: np.ndarray, timer: StageTimer | None = None) -> KSpace:
    """Stage 4: projections in trajectory order (one ordering for all echoes), prewhitened coils."""
    from recon.io.coils import noise_covariance, prewhiten

    timer = timer or StageTimer()
    where = acq.sources[0] if acq.sources else None
    pidx = np.asarray(acq.projection_index)
    if not all(np.array_equal(pidx[0], p) for p in pidx[1:]):
        order = [np.argsort(p) for p in pidx]
        data = np.stack([acq.data[e][:, order[e]] for e in range(acq.n_echoes)])
        common = np.sort(pidx[0])
        if not all(np.array_equal(np.sort(p), common) for p in pidx):
            raise InputError("echoes contain different sets of projections", where)
    else:
        data, common = acq.data, pidx[0]
    if common.max() >= traj.n_projections:
        raise TrajectoryError(f"projection index {common.max()} beyond the trajectory's {traj.n_projections} projections", where)
    if len(common) < traj.n_projections:
        log.warning(
            "%d of %d projections acquired: density weights of the full trajectory are used", len(common), traj.n_projections
        )
    prewhitened, cov = False, None
    if acq.n_coils > 1 and acq.noise is not None:
        with timer.stage("noise prewhitening"):
            cov = noise_covariance(acq.noise)
            data = prewhiten(data, cov=cov)
        prewhitened = True
    sub = traj.subset(common) if len(common) < traj.n_projections else traj
    return KSpace(
        data=np.ascontiguousarray(data, dtype=np.complex64),
        k=traj.k[common] if len(common) < traj.n_projections else traj.k,
        dcf=dcf[common] if len(common) < traj.n_projections else dcf,
        t_s=sub.t,
        projections=common,
        prewhitened=prewhitened,
        noise_cov=cov,
        points=traj.nufft_points(traj.matrix, traj.fov_m) if len(common) == traj.n_projections else None,
    )


def to_compute_device(ks: KSpace, opts: RunOptions) -> KSpace:
    """The one device boundary: with ``device = gpu`` the k-space data and weights move to the GPU once.

    Gridding, field map, B0 correction and the iterative solver then run on the device (their
    array module follows their input); images come back once, in :func:`combine`.
    """
    if opts.device != "gpu":
        return ks
    from recon.device import to_device

    return dataclasses.replace(ks, data=to_device(ks.data), dcf=to_device(ks.dcf, dtype=np.float32))


def memory_estimate(acq, traj, matrix, opts: RunOptions):
    """The :class:`recon.limits.MemoryEstimate` of this run (what :func:`check_memory` checks).

    The default run (:func:`one_pass`) grids into time bins through one shared plan re-pointed to
    each bin: it counts the bins' images (bins x echoes x coils, the count of :func:`grid_bins`,
    ``b0_segments`` or the first-pass rule) and one more plan, not one plan per bin (which put the
    128^3 protocol with 24 bins at 22 GiB against 3.6 GiB measured, benchmarks/README.md).
    """
    from recon import limits

    method = choose_b0_method(acq, opts)
    bins = one_pass(acq, opts, method)
    est = limits.estimate_recon_memory(
        matrix,
        traj.n_projections,
        traj.n_samples,
        n_coils=acq.n_coils,
        n_echoes=acq.n_echoes,
        b0_method="none" if bins else method,
        n_segments=opts.b0_segments or 1,
        iterative=opts.b0 == "iterative",
        tube_model=model_calibration(opts),
    )
    if bins:
        from recon.b0 import DEFAULT_TOL_RAD, n_time_bins
        from recon.b0.segments import FIRST_PASS_FIELD_HZ

        n = (
            int(opts.b0_segments)
            if opts.b0_segments
            else n_time_bins(FIRST_PASS_FIELD_HZ, (traj.n_samples - 1) * traj.dwell_s, DEFAULT_TOL_RAD)
        )
        m = (int(matrix),) * 3 if isinstance(matrix, (int, float)) else tuple(int(v) for v in matrix)
        vox = float(m[0]) * m[1] * m[2]
        est.parts[f"time-bin images ({n} bins)"] = n * acq.n_echoes * max(1, acq.n_coils) * vox * 8.0
        est.parts["time-bin plan (one, re-pointed per bin)"] = vox * 8.0 * 8.0 + float(traj.n_projections) * traj.n_samples * 16.0
    return est


def check_memory(acq, traj, matrix, opts: RunOptions) -> None:
    """Refuse, before any grid is allocated, a reconstruction above the memory limit (:mod:`recon.limits`)."""
    from recon import limits

    src = ", ".join(acq.sources) if getattr(acq, "sources", None) else None
    limits.check_matrix(matrix, "matrix", src)
    est = memory_estimate(acq, traj, matrix, opts)
    import contextlib

    raised = limits.override(memory=opts.max_memory_gb * 2**30) if opts.max_memory_gb else contextlib.nullcontext()
    with raised:
        limits.check_recon_memory(est, f"the reconstruction at matrix {'x'.join(map(str, matrix))}", src)


def plan_nufft(ks: KSpace, matrix, fov_m, opts: RunOptions, plans: Plans | None = None, timer: StageTimer | None = None):
    """Stage 5: the NUFFT operator of the acquired samples (from the caller's plans)."""
    timer = timer or StageTimer()
    with timer.stage("NUFFT plan"):
        return plans_or_default(plans).nufft(ks.k, matrix, fov_m, points=ks.points, device=opts.device, eps=opts.eps)


def grid(op, ks: KSpace, te_s, timer: StageTimer | None = None) -> np.ndarray:
    """Stage 6: density-compensated gridding of every echo and coil -> (echo, coil, N0, N1, N2)."""
    from recon.b0 import correct

    timer = timer or StageTimer()
    with timer.stage("gridding (both echoes, all coils)"):
        return correct("none", op, ks.data, ks.dcf, te_s, ks.t_s, np.zeros(op.shape))


def one_pass(acq, opts: RunOptions, method: str) -> bool:
    """Whether the run grids once into time bins that serve the field map and tb-cpr (the default run).

    True for tb-cpr gridding runs whose field map comes from the echo pair without refinement; the
    iterative model, an external map, a refined map and fs-cpr/mfi grid plainly first (:func:`grid`).
    """
    passes = opts.b0_refine is not None and int(opts.b0_refine) > 0
    return method == "tb-cpr" and opts.recon != "iterative" and echo_pair(acq) and not opts.fieldmap and not passes


def grid_bins(op, ks: KSpace, opts: RunOptions, plans: Plans | None = None, timer: StageTimer | None = None):
    """Stage 6 of the default run: every echo and coil gridded into readout-time bins, not demodulated.

    Returns the :class:`recon.b0.TimeBins`; their sum is the plain gridding (the field map's input),
    their combination the tb-cpr images (:func:`correct_b0`). The bin count is ``b0_segments`` or
    :func:`recon.b0.first_time_bins` (the rule for |df| up to :data:`recon.b0.segments.FIRST_PASS_FIELD_HZ`).
    """
    from recon.b0 import first_time_bins, grid_time_bins

    timer = timer or StageTimer()
    n_bins = int(opts.b0_segments) if opts.b0_segments else first_time_bins(op, ks.t_s)
    with timer.stage(f"gridding into {n_bins} time bins (both echoes, all coils)"):
        return grid_time_bins(op, ks.data, ks.dcf, ks.t_s, n_bins, plans=plans)


def combine(images: np.ndarray, noise_cov: np.ndarray | None = None, sens: np.ndarray | None = None) -> np.ndarray:
    """(echo, coil, N0, N1, N2) -> (echo, N0, N1, N2): adaptive (Walsh) combination of coils; with the
    covariance the data were whitened with, back in the data's signal units (recon.io.coils).

    ``sens``: the scan's coil sensitivities (:func:`coil_sensitivities`), the same for every echo and
    every reconstruction of the scan; None estimates them from each echo (one coil: not used).
    """
    from recon.device import to_host
    from recon.io.coils import combine_coils

    images = to_host(images)  # the device boundary back: coil combination and calibration run on the host
    if images.shape[1] == 1:
        return images[:, 0]
    pw = noise_cov is not None
    return np.stack([combine_coils(im, "adaptive", noise_cov=noise_cov, prewhitened=pw, sens=sens) for im in images])


def coil_sensitivities(plain: np.ndarray) -> np.ndarray | None:
    """The scan's coil sensitivities (coil, N0, N1, N2) from the plain echo-1 gridding images (echo, coil, ...),
    in the (whitened) space of the data; None for one coil. Estimated once per scan and used by every
    :func:`combine` of it, so that the echoes and the gridding and iterative images are combined with the same
    weights (their echo ratios, from which the decay models and the relaxation map are made, are then not
    changed by the combination)."""
    from recon.device import to_host
    from recon.io.coils import coil_sensitivities as walsh

    if plain.shape[1] == 1:
        return None
    return walsh(to_host(plain[0]))


GRIDDING_B0 = "tb-cpr"
"""The B0 correction of a gridding run (``b0 = auto`` with an echo pair or a field map)."""


def choose_b0_method(acq, opts: RunOptions) -> str:
    """The B0 correction to run: ``auto`` = tb-cpr with an echo pair or an external map, else none."""
    pair = echo_pair(acq)
    if opts.b0 != "auto":
        if opts.b0 != "none" and not pair and not opts.fieldmap:
            why = "contrasts with the same TE" if acq.n_echoes >= 2 else "one echo"
            raise InputError(
                f"--b0 {opts.b0} needs two echoes at different TEs or --fieldmap; the data have {why}",
                acq.sources[0] if acq.sources else None,
            )
        return opts.b0
    return GRIDDING_B0 if pair or opts.fieldmap else "none"


def echo_pair(acq) -> bool:
    """Whether the first two contrasts are an echo pair (different TEs) that gives a field map."""
    if acq.n_echoes < 2:
        return False
    return abs(acq.te_s[1] - acq.te_s[0]) >= SAME_TE_S


def field_map(
    op,
    ks: KSpace,
    acq,
    plain: np.ndarray,
    combined_plain: np.ndarray,
    affine: np.ndarray,
    method: str,
    opts: RunOptions,
    plans: Plans | None = None,
    timer: StageTimer | None = None,
) -> FieldMap:
    """Stage 7: the field map in Hz: external file, dual-echo estimate (optionally refined), or zeros."""
    from recon.b0 import estimate_fieldmap, load_fieldmap_nifti, refine_fieldmap, support_mask

    timer = timer or StageTimer()
    matrix = op.shape
    if opts.fieldmap:
        with timer.stage("external field map"):
            hz = load_fieldmap_nifti(opts.fieldmap, affine, matrix, nucleus=opts.fieldmap_nucleus)
        return FieldMap(hz, {"source": f"file {opts.fieldmap}", "nucleus": opts.fieldmap_nucleus})
    if method == "none" or not echo_pair(acq):
        return FieldMap(np.zeros(matrix), {"source": "none"})
    with timer.stage("field map (dual echo)"):
        # one support per run (coil-combined echo 1): the map's and the correction's (it was computed twice)
        mask = support_mask(np.abs(combined_plain[0]))
        hz = estimate_fieldmap(plain[0], plain[1], acq.te_s[0], acq.te_s[1], mask)
    # refinement costs one corrected reconstruction per pass: by default only for the model-based
    # correction, whose gain it unlocks (3.3x vs 2.9x NRMSE reduction on the phantom)
    passes = (1 if method == "iterative" else 0) if opts.b0_refine is None else int(opts.b0_refine)
    if passes > 0:
        with timer.stage(f"field map refinement ({passes} pass)"):
            hz = refine_fieldmap(op, ks.data, ks.dcf, acq.te_s, ks.t_s, hz, mask=mask, passes=passes, plans=plans)
    return FieldMap(
        hz,
        {
            "source": "dual echo",
            "refinement_passes": passes,
            "te_s": [acq.te_s[0], acq.te_s[1]],
            "unaliased_range_hz": 0.5 / abs(acq.te_s[1] - acq.te_s[0]),
        },
        mask,
    )


def correct_b0(
    op,
    ks: KSpace,
    acq,
    plain: np.ndarray,
    combined_plain: np.ndarray,
    fmap: FieldMap,
    method: str,
    opts: RunOptions,
    plans: Plans | None = None,
    timer: StageTimer | None = None,
    label: str | None = None,
    bins: Any = None,
    sens: np.ndarray | None = None,
) -> tuple[np.ndarray, str, dict[str, Any] | None]:
    """Stage 8: B0-corrected, coil-combined echo images (echo, N0, N1, N2); iterative when asked.

    ``label``: the stage's name in the log and timings (default ``B0 correction (<method>)``).
    ``bins``: the run's :class:`recon.b0.TimeBins` (:func:`grid_bins`): tb-cpr combines them when
    they are as many as the field map needs (or ``b0_segments`` set them), else regrids.
    ``sens``: the scan's coil sensitivities (:func:`coil_sensitivities`) for every combination.
    The iterative model of several coils is one per scan: the decay model (tissue fraction or R2*)
    comes from the coil-combined gridding echoes, and the Toeplitz kernels are built once.
    Returns (images, the method that ran, the iterative record or None).
    """
    from recon.b0 import correct, support_mask

    timer = timer or StageTimer()
    if method == "iterative" or opts.recon == "iterative":
        from recon.device import to_host
        from recon.iterative import reconstruct_iterative

        win = "" if opts.iter_window == "none" else f", window {opts.iter_window}"
        with timer.stage(f"iterative reconstruction ({opts.iter_regulariser}, decay {opts.iter_decay}{win})"):
            fm = fmap.hz if method != "none" else None
            mask = fmap.mask if fmap.mask is not None else support_mask(np.abs(combined_plain[0]))
            from recon.iterative import decay_map

            # one decay model per scan, from the combination's SNR (not per coil from that coil's echoes)
            model = decay_map(opts.iter_decay, combined_plain, acq.te_s, fm, mask) if echo_pair(acq) else {}
            shared: dict = {}  # the Toeplitz kernels of the first coil, reused by the others
            per_coil, iters, res = [], [], None
            for c in range(ks.data.shape[1]):
                res = reconstruct_iterative(
                    op,
                    ks.data[:, c],
                    ks.dcf,
                    acq.te_s,
                    ks.t_s,
                    fm,
                    decay=opts.iter_decay,
                    window=opts.iter_window,
                    regulariser=opts.iter_regulariser,
                    lamda=opts.iter_lamda,
                    max_iter=int(opts.iter_max),
                    mask=mask,
                    plans=plans,
                    gridded=plain[:, c],
                    shared=shared,
                    **model,
                    # no cache keeps op: its plan may go once the last coil's right-hand side is made
                    release_nufft=plans_or_default(plans).cache is None and c == ks.data.shape[1] - 1,
                )
                per_coil.append(to_host(res.echoes))
                iters.append(res.iterations)
            images = combine(np.stack(per_coil, axis=1), ks.noise_cov, sens)
        info = {
            "iterations": iters,
            "objective_last": res.objective[-1] if res.objective else None,
            "residual_last": res.residual[-1] if res.residual else None,
            **res.settings,
        }
        return images, ("iterative" if method != "none" else "none (iterative decay model)"), info
    if method == "none":
        return combined_plain, "none", None
    mask = fmap.mask if fmap.mask is not None else support_mask(np.abs(combined_plain[0]))
    if bins is not None and method == "tb-cpr":
        need = bins.bins_needed(fmap.hz, mask)
        if opts.b0_segments or need <= bins.n_bins:
            with timer.stage(label or f"B0 correction ({method}, {bins.n_bins} bins of the gridding)"):
                corr = bins.combine(acq.te_s, fmap.hz)
            return combine(corr, ks.noise_cov, sens), method, None
        log.info("field map needs %d time bins (> %d gridded): regridding, demodulated at its centre", need, bins.n_bins)
    with timer.stage(label or f"B0 correction ({method})"):
        corr = correct(
            method,
            op,
            ks.data,
            ks.dcf,
            acq.te_s,
            ks.t_s,
            fmap.hz,
            n_segments=opts.b0_segments,
            mask=mask,
            plans=plans,
        )
    return combine(corr, ks.noise_cov, sens), method, None


def model_calibration(opts: RunOptions) -> bool:
    """True when the tubes are fitted through the system model (``tube_values = model``, tube calibration)."""
    return opts.tube_values == "model" and opts.calibration not in ("none", "internal")


def gridding_for_calibration(
    op,
    ks: KSpace,
    acq,
    plain: np.ndarray,
    combined_plain: np.ndarray,
    fmap: FieldMap,
    method: str,
    opts: RunOptions,
    plans: Plans | None = None,
    timer: StageTimer | None = None,
    sens: np.ndarray | None = None,
) -> np.ndarray:
    """The B0-corrected gridding images the tube model is fitted on in an iterative run.

    tb-cpr with the run's field map when the iterative model corrected B0 (the gridding correction
    of a default run), the plain gridding images otherwise.
    """
    if not method.startswith("iterative"):
        return combined_plain
    grid_opts = opts.replace(recon="gridding")
    label = f"{GRIDDING_B0} image for the tube calibration"
    return correct_b0(op, ks, acq, plain, combined_plain, fmap, GRIDDING_B0, grid_opts, plans, timer, label, sens=sens)[0]


def tube_t1_s(opts: RunOptions) -> float | None:
    """The tubes' measured T1 in s (``tube_t1_ms``), or None for the saline prior."""
    return None if opts.tube_t1_ms is None else opts.tube_t1_ms * 1e-3


def tube_reference(opts: RunOptions):
    """The tubes' relaxation model: the saline prior, with the measured T1 when ``tube_t1_ms`` is given."""
    from recon.calibrate import SALINE_TUBE
    from recon.calibrate.regions import with_t1

    return with_t1(SALINE_TUBE, tube_t1_s(opts))


def relaxation_map(acq, traj, dcf, images, smooth_vox: float = 1.0, reference=None) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-voxel relative relaxation weighting r(x) of the echo-1 signal vs the tube model.

    Tissue (bi-exponential, fast decay) and fluid (CSF, mono-exponential) are told apart by the
    measured echo ratio q = |x2| / |x1| (smoothed): the models predict q_t and q_f over the
    readout (recon.calibrate.relax), the tissue fraction is w = clip((q_f - q) / (q_f - q_t), 0, 1),
    and r = w r_tissue + (1 - w) r_fluid, so tissue gets the tissue correction and fluids and tubes
    (nearly) none, instead of one scalar for every voxel. ``reference``: the tubes' model (default
    the saline prior; :func:`tube_reference`). Returns r and a record of the factors.
    """
    from scipy.ndimage import gaussian_filter

    from recon.calibrate import CSF, SALINE_TUBE, TISSUE, ReadoutWeighting, relaxation_factors

    rw = ReadoutWeighting.from_trajectory(traj, dcf)
    te1, te2 = acq.te_s[0], acq.te_s[1]
    ref = SALINE_TUBE if reference is None else reference
    f = {
        (name, i): relaxation_factors(acq.tr_s, acq.flip_deg, te, target=model, reference=ref, readout=rw)
        for name, model in (("tissue", TISSUE), ("fluid", CSF))
        for i, te in ((1, te1), (2, te2))
    }
    q_t = f["tissue", 2].t2star_target / f["tissue", 1].t2star_target
    q_f = f["fluid", 2].t2star_target / f["fluid", 1].t2star_target
    a1 = gaussian_filter(np.abs(images[0]).astype(np.float64), smooth_vox)
    a2 = gaussian_filter(np.abs(images[1]).astype(np.float64), smooth_vox)
    q = a2 / np.maximum(a1, 1e-3 * a1.max())
    w = np.clip((q_f - q) / (q_f - q_t), 0.0, 1.0)
    r_t, r_f = f["tissue", 1].relative, f["fluid", 1].relative
    rmap = w * r_t + (1 - w) * r_f
    info = {
        "model": "per-voxel mix of tissue and fluid weightings by the echo ratio",
        "predicted_echo_ratio_tissue": q_t,
        "predicted_echo_ratio_fluid": q_f,
        "relative_tissue": r_t,
        "relative_fluid": r_f,
        "tissue": f["tissue", 1].to_dict(),
        "fluid": f["fluid", 1].to_dict(),
        "smooth_vox": smooth_vox,
    }
    return rmap.astype(np.float32), info


def spheres_mask(spheres, shape, affine) -> np.ndarray:
    """Union of spheres ((x, y, z, r) in RAS mm) on the image grid."""
    from recon.calibrate.tubes import sphere_mask

    mask = np.zeros(shape, dtype=bool)
    for x, y, z, r in spheres:
        mask |= sphere_mask(shape, affine, (x, y, z), float(r))
    return mask


def calibrate_images(
    images: np.ndarray,
    affine: np.ndarray,
    acq,
    ks: KSpace,
    traj,
    opts: RunOptions,
    timer: StageTimer | None = None,
    plans: Plans | None = None,
    fit_images: np.ndarray | None = None,
) -> tuple[Any, np.ndarray | None, np.ndarray | None, dict[str, Any] | None]:
    """Stage 9: calibration of echo 1 into TSC (mM), relaxation correction, ratio map.

    ``fit_images``: the gridding images on which the tubes are fitted when ``images`` come from
    another reconstruction (the iterative one: the tube model reproduces the gridding point
    response, not the iterative one); the line is then applied to ``images``.
    Returns (calibration, tsc_mM, ratio, relaxation record); all None with ``calibration = none``.
    """
    from recon.calibrate import ReadoutWeighting, calibrate, ratio_map, relaxation_factors

    if opts.calibration == "none":
        return None, None, None, None
    timer = timer or StageTimer()
    where = acq.sources[0] if acq.sources else None
    sub = traj.subset(ks.projections) if len(ks.projections) < traj.n_projections else traj
    relax, relax_map, relax_info = None, None, None
    if opts.relaxation == "tissue":
        relax = relaxation_factors(
            acq.tr_s,
            acq.flip_deg,
            acq.te_s[0],
            reference=tube_reference(opts),
            readout=ReadoutWeighting.from_trajectory(sub, ks.dcf),
        )
    elif opts.relaxation == "echo-ratio":
        if not echo_pair(acq):
            raise ConfigError("relaxation = echo-ratio needs two echoes at different TEs", where)
        with timer.stage("relaxation factor map (echo ratio)"):
            relax_map, relax_info = relaxation_map(acq, sub, ks.dcf, images, reference=tube_reference(opts))
    with timer.stage("calibration"):
        kw: dict[str, Any] = dict(signal=opts.signal, relaxation=relax)
        if opts.calibration == "auto":
            kw.update(method="auto", concentrations_mM=list(opts.tube_mM))
        elif opts.calibration == "internal":
            kw.update(
                method="internal",
                reference_region=[((x, y, z), r) for x, y, z, r in opts.reference_spheres],
                reference_mM=opts.reference_mM,
            )
        else:
            kw.update(method="file", tubes_file=opts.calibration)
        if opts.ratio_spheres:
            kw["ratio_region"] = [((x, y, z), r) for x, y, z, r in opts.ratio_spheres]
        if opts.tube_values == "model" and opts.calibration != "internal":
            from recon.calibrate import SystemModel

            kw["system"] = SystemModel.from_trajectory(
                sub,
                ks.dcf,
                acq.te_s,
                acq.tr_s,
                acq.flip_deg,
                matrix=images.shape[-3:],
                plans=plans,
                eps=max(opts.eps, 1e-4),
                object_edge_m=opts.tube_edge_mm * 1e-3,
            )
        if fit_images is not None:
            cal = calibrate(fit_images[0], affine, apply_to=images[0], **kw)
        else:
            cal = calibrate(images[0], affine, **kw)
    tsc, ratio = cal.tsc, cal.ratio
    if relax_map is not None:  # TSC = (S - b) / (a r(x)) with a per-voxel relative weighting r
        tsc = (cal.tsc / relax_map).astype(np.float32)
        if ratio is not None:
            ratio, _ = ratio_map(tsc, spheres_mask(opts.ratio_spheres, tsc.shape, affine))
    return cal, tsc, ratio, relax_info


def regional_tsc(
    images,
    affine,
    acq,
    ks: KSpace,
    traj,
    opts: RunOptions,
    cal,
    tsc,
    timer: StageTimer | None = None,
    plans=None,
    own_signal: bool = True,
):
    """Stage 9b (``regions = FILE``): regional TSC of the label map through the system model, or None.

    Echo 1 and, with an echo pair, echo 2 of ``images`` (:mod:`recon.calibrate.regions`); the tube
    line of ``cal``. ``own_signal``: ``images`` are the ones ``cal`` calibrated (its echo-1 signal is
    reused); False for the gridding images of an iterative run (the templates model gridding).
    """
    if opts.regions is None or cal is None:
        return None
    from recon.calibrate import SystemModel
    from recon.calibrate.regions import load_regions
    from recon.calibrate.regions import regional_tsc as regional
    from recon.calibrate.tsc import signal_image

    timer = timer or StageTimer()
    with timer.stage("regional TSC (system model)"):
        labels, lab_aff, specs = load_regions(opts.regions)
        sub = traj.subset(ks.projections) if len(ks.projections) < traj.n_projections else traj
        sm = SystemModel.from_trajectory(
            sub, ks.dcf, acq.te_s, acq.tr_s, acq.flip_deg, matrix=images.shape[-3:], plans=plans,
            eps=max(opts.eps, 1e-4), object_edge_m=opts.tube_edge_mm * 1e-3,
        )  # fmt: skip
        mode = cal.result.signal.get("mode", opts.signal)
        first = cal.signal if own_signal else signal_image(images[0], mode)[0]
        signals = [first] + ([signal_image(images[1], mode)[0]] if echo_pair(acq) else [])
        fit = cal.result.fit
        refine = "echo-ratio" if opts.regions_relaxation == "echo-ratio" and len(signals) > 1 else None
        res = regional(
            signals,
            sm,
            fit.slope,
            fit.intercept,
            labels,
            lab_aff,
            specs,
            affine,
            tsc_mM=tsc,
            refine=refine,
            tube_t1_s=tube_t1_s(opts),
        )
    if not own_signal:
        log.info("regions: measured on the %s gridding image (the templates model gridding, as the tubes')", GRIDDING_B0)
    return res


def object_support(images: np.ndarray, affine: np.ndarray, tsc: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Stage 10: the object mask of echo 1 (:func:`recon.calibrate.mask.object_mask`) and TSC statistics outside it."""
    from recon.calibrate.mask import background_stats, object_mask

    mask = object_mask(np.abs(images[0]), affine)
    return mask, (background_stats(tsc, mask) if tsc is not None else None)


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    from recon import __version__

    out = {"narecon": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "finufft", "twixtools", "nibabel", "h5py", "cupy-cuda12x", "cupy-cuda13x"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def provenance(
    acq, opts: RunOptions, op, traj_source: str, dcf_method: str, b0_method: str, fmap: FieldMap, iter_info, timer: StageTimer
) -> dict[str, Any]:
    """The provenance record of a reconstruction (input hashes are added by the writer)."""
    import sys

    return {
        "inputs": [{"path": os.path.abspath(p)} for p in acq.sources],
        "options": opts.to_dict(),
        "versions": _versions(),
        "device": opts.device,
        "nufft_backend": op.backend_name,
        "command": " ".join(sys.argv),
        "trajectory_source": traj_source,
        "dcf_method": dcf_method,
        "b0_method": b0_method,
        "iterative": iter_info,
        "fieldmap": fmap.info,
        "timings_s": dict(timer.timings),
        "acquisition": {
            "nucleus": acq.nucleus,
            "te_s": list(acq.te_s),
            "tr_s": acq.tr_s,
            "flip_deg": acq.flip_deg,
            "dwell_s": acq.dwell_s,
            "frequency_hz": acq.frequency_hz,
            "field_t": acq.field_t,
            "n_coils": acq.n_coils,
            "n_projections": acq.n_projections,
            "n_samples": acq.n_samples,
            "format": acq.header.get("format"),
        },
    }


# ---------------------------------------------------------------- composition
def hash_inputs(
    paths: Sequence[str | os.PathLike], known: Mapping[str, tuple[int, int, str]] | None = None
) -> Callable[[], tuple[str, ...] | None]:
    """Start the SHA-256 of each file on a daemon thread; returns ``wait()`` -> tuple of hex digests.

    ``known``: digests the caller already has, by absolute path, as (bytes, mtime_ns, sha256): a file
    whose size and modification time still match is not read again (a batch driver hashed it for the
    scan's fingerprint; the same rule decides whether a finished scan is redone).

    The provenance hash of the raw data (0.2 s at 64^3, ~1.5 s for the 622 MB of the 128^3 protocol)
    then overlaps the reconstruction (hashlib releases the GIL) instead of delaying the writer, and it
    is the hash of the files as they were read. ``wait()`` gives None when a source is not a regular
    file or cannot be read (an in-memory acquisition's names): the writer then hashes, and reports,
    as before.
    """
    import threading

    from recon.util import sha256_file

    out: dict[str, Any] = {}
    paths = list(paths)

    def digest(p: str | os.PathLike) -> str:
        rec = (known or {}).get(os.path.abspath(p))
        if rec is not None:
            st = os.stat(p)
            if (st.st_size, st.st_mtime_ns) == (int(rec[0]), int(rec[1])):
                return str(rec[2])
        return sha256_file(p)

    def work() -> None:
        try:
            out["digests"] = tuple(digest(p) for p in paths)
        except OSError:
            out["digests"] = None

    if not paths or not all(os.path.isfile(p) for p in paths):
        return lambda: None
    th = threading.Thread(target=work, name="narecon-hash-inputs", daemon=True)
    th.start()

    def wait() -> tuple[str, ...] | None:
        th.join()
        return out.get("digests")

    return wait


def receive_correction(combined_plain, affine, acq, traj, opts: RunOptions, plans=None, timer: StageTimer | None = None):
    """Stage 8b: the array's receive profile from ``receive_reference`` (:mod:`recon.receive`), or None.

    The reference scan is reconstructed with this scan's trajectory, grid and options (plain gridding, no
    calibration); a reference of another geometry is refused. Without a reference, an array of several
    coils is reported: its map is the object times the array's sensitivity, calibrated at the tubes.
    """
    from recon.receive import array_warning, receive_profile

    if not opts.receive_reference:
        if acq.n_coils > 1 and opts.calibration != "none":
            log.warning("%s", array_warning(acq.n_coils))
        return None
    timer = timer or StageTimer()
    ref_opts = dataclasses.replace(
        opts, b0="none", recon="gridding", calibration="none", regions=None, fieldmap=None, receive_reference=None, qa=False
    )
    with timer.stage("receive profile (reference scan)"):
        ref = reconstruct(opts.receive_reference, ref_opts, trajectory=traj, plans=plans)
        if ref.echoes.shape[-3:] != combined_plain.shape[-3:] or not np.allclose(ref.affine, affine, atol=0.1):
            raise InputError(
                "receive reference: its grid or position differs from the scan's (same trajectory, FOV, matrix and "
                "slice position are needed)",
                opts.receive_reference,
            )
        voxel_mm = 1e3 * np.asarray(traj.fov_m, dtype=np.float64) / np.asarray(combined_plain.shape[-3:])
        prof = receive_profile(combined_plain[0], ref.echoes[0], voxel_mm)
    prof.info.update(reference=os.path.abspath(opts.receive_reference), reference_coils=int(ref.acquisition.n_coils))
    if prof.info["reference_coils"] > 1:
        n_ref = prof.info["reference_coils"]
        log.warning("receive reference %s has %d coils: its own profile is taken as uniform", opts.receive_reference, n_ref)
    return prof


def reconstruct(
    source: Any,
    options: RunOptions | dict[str, Any] | None = None,
    *,
    trajectory: Any = None,
    plans: Plans | None = None,
    known_sha256: Mapping[str, tuple[int, int, str]] | None = None,
) -> ReconResult:
    """Reconstruct one scan in memory: raw data -> echo images, field map, calibration, TSC (mM).

    source : a raw file (twix .dat or ISMRMRD .h5), two files (one echo each), or an
        :class:`~recon.io.Acquisition`. options : :class:`RunOptions` or a mapping of its fields.
    trajectory : a :class:`~recon.trajectory.Trajectory` to use instead of ``options.traj`` or the
        profile's design. plans : the plan factory/cache (:class:`recon.plans.Plans`); a batch
        worker passes a persistent one so scans of one protocol share every plan and the DCF.
    known_sha256 : raw files' digests already known, {abspath: (bytes, mtime_ns, sha256)}
        (:func:`hash_inputs`; a batch worker passes its scan's fingerprint).
    Writes nothing; :func:`recon.outputs.write_run` writes a result.
    """
    opts = options if isinstance(options, RunOptions) else RunOptions.from_mapping(options or {})
    opts.validate()
    if opts.regions is not None and opts.calibration not in ("internal", "none"):
        from recon.calibrate.regions import check_regions

        check_regions(opts.regions)  # a bad label map or sidecar is refused before any reconstruction
    plans = plans_or_default(plans)
    timer = StageTimer()
    acq = load_acquisition(source, opts, timer)
    digests = hash_inputs(acq.sources, known_sha256)
    if trajectory is not None:
        traj, traj_source = trajectory, "given"
        check_trajectory(acq, traj, traj_source)
    else:
        traj, traj_source = load_trajectory(acq, opts, plans, timer)
    dcf, dcf_method = density_weights(traj, opts, plans, timer)
    matrix = (int(opts.matrix),) * 3 if opts.matrix else tuple(traj.matrix)
    check_memory(acq, traj, matrix, opts)
    ks = prepare_kspace(acq, traj, dcf, timer)
    op = plan_nufft(ks, matrix, traj.fov_m, opts, plans, timer)
    from recon.io.geometry import nifti_affine

    affine = nifti_affine(acq.geometry, traj.fov_m, matrix)
    dks = to_compute_device(ks, opts)
    method = choose_b0_method(acq, opts)
    own_op = plans.cache is None  # no plan cache keeps op for the next scan: its memory may go once it is done

    def release_op() -> None:  # op's plans and points, and the design's mapped points they came from (58 MB at 64^3)
        op.release()
        ks.points = dks.points = None
        traj.detach_points()

    bins = None
    if one_pass(acq, opts, method):  # one gridding pass: time bins for the field map and tb-cpr
        bins = grid_bins(op, dks, opts, plans, timer)  # the bins' points are cut from op's converted points
        if own_op:
            release_op()  # the bins have their own plans; op transforms only if a regrid is needed
        plain = bins.plain()
    else:
        plain = grid(op, dks, acq.te_s, timer)
    sens = coil_sensitivities(plain)  # one set per scan: every combination below uses it
    combined_plain = combine(plain, ks.noise_cov, sens)
    # the reference scan before the long work: a reference that does not match fails here
    receive = receive_correction(combined_plain, affine, acq, traj, opts, plans, timer)
    fmap = field_map(op, dks, acq, plain, combined_plain, affine, method, opts, plans, timer)
    if own_op and method == "tb-cpr" and opts.recon != "iterative":
        release_op()  # tb-cpr plans its own bins (from op.k) and never transforms through op
    images, method, iter_info = correct_b0(
        op, dks, acq, plain, combined_plain, fmap, method, opts, plans, timer, bins=bins, sens=sens
    )
    del bins
    if own_op:
        release_op()  # the last transform through op is done (calibration plans its own NUFFTs)
    from recon.device import to_host

    fit_images = None
    if iter_info is not None and model_calibration(opts):
        fit_images = gridding_for_calibration(op, dks, acq, plain, combined_plain, fmap, method, opts, plans, timer, sens)
    fmap = FieldMap(to_host(fmap.hz), fmap.info)
    if receive is not None:
        from recon.receive import divide_profile

        images, fit_images = divide_profile(images, receive), divide_profile(fit_images, receive)
    cal, tsc, ratio, relax_info = calibrate_images(images, affine, acq, ks, traj, opts, timer, plans, fit_images)
    if fit_images is not None:  # regional templates model gridding: measure on the gridding image, as the tubes
        regions = regional_tsc(fit_images, affine, acq, ks, traj, opts, cal, tsc, timer, plans, own_signal=False)
    else:
        regions = regional_tsc(images, affine, acq, ks, traj, opts, cal, tsc, timer, plans)
    mask, background = object_support(images, affine, tsc)
    return ReconResult(
        echoes=images,
        fieldmap_hz=fmap.hz,
        dcf=ks.dcf,
        affine=affine,
        acquisition=acq,
        trajectory=traj,
        options=opts,
        b0_method=method,
        tsc_mM=tsc,
        ratio=ratio,
        calibration=cal,
        mask=mask,
        background=background,
        relaxation_info=relax_info,
        fieldmap_info=fmap.info,
        iterative_info=iter_info,
        regions=regions,
        model_echoes=fit_images,  # the gridding images the tubes and regions were measured on (None: echoes)
        receive=receive,
        provenance=provenance(acq, opts, op, traj_source, dcf_method, method, fmap, iter_info, timer),
        timings_s=dict(timer.timings),
        input_sha256=digests(),
    )


def run(
    source: Any,
    out_dir: str | os.PathLike,
    options: RunOptions | dict[str, Any] | None = None,
    *,
    plans: Plans | None = None,
    known_sha256: Mapping[str, tuple[int, int, str]] | None = None,
) -> dict[str, Any]:
    """``narecon run``: :func:`reconstruct`, then :func:`recon.outputs.write_run` into ``out_dir``.

    The output folder is checked before any work (exists without ``force``, parent missing or
    not writable, contains an input). Returns the summary (calibration, timings, ``out``).
    """
    from recon.outputs import check_output_dir, write_run

    opts = options if isinstance(options, RunOptions) else RunOptions.from_mapping(options or {})
    opts.validate()
    inputs = (
        []
        if not isinstance(source, (str, os.PathLike, list, tuple))
        else ([source] if isinstance(source, (str, os.PathLike)) else list(source))
    )
    inputs += [p for p in (opts.traj, opts.profile, opts.fieldmap, opts.regions) if p]
    if opts.calibration not in ("auto", "internal", "none"):
        inputs.append(opts.calibration)
    check_output_dir(out_dir, force=opts.force, inputs=inputs)
    t0 = time.perf_counter()
    result = reconstruct(source, opts, plans=plans, known_sha256=known_sha256)
    timings = write_run(result, out_dir, force=opts.force, qa=opts.qa)
    summary = result.summary()
    summary["timings_s"].update(timings)
    summary["out"] = str(out_dir)
    summary["total_s"] = time.perf_counter() - t0
    log.info("wrote %s in %.1f s", out_dir, summary["total_s"])
    return summary


__all__ = [
    "KSpace",
    "FieldMap",
    "ReconResult",
    "RunOptions",
    "reconstruct",
    "run",
    "load_acquisition",
    "load_trajectory",
    "density_weights",
    "prepare_kspace",
    "to_compute_device",
    "plan_nufft",
    "grid",
    "grid_bins",
    "one_pass",
    "combine",
    "choose_b0_method",
    "field_map",
    "correct_b0",
    "calibrate_images",
    "object_support",
    "regional_tsc",
    "relaxation_map",
]
