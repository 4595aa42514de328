#!/usr/bin/env python
"""CPU NUFFT benchmark: narecon's operator against finufft, MRI-NUFFT, SigPy and BART.

The problem is the study protocol's 3D TPI (FOV 224 mm, 3.5 mm, p = 0.3, Gmax 4 mT/m, 10 us
dwell: 3920 projections x 1238 samples = 4.9 M samples) onto a 64^3 grid, complex64; ``--quick``
uses the same design at 7 mm (32^3, 0.6 M samples). Every implementation gets the same
trajectory, the same random image (forward, type 2) and the same random data (adjoint, type 1)
in the same process; repetitions are interleaved (a new random order of the implementations in
every round) so that load from other processes on the machine hits all of them alike, and the
median, minimum and maximum over rounds are reported.

Each peer's output is mapped to narecon's convention (forward y_m = sum_j x_j
exp(-i 2 pi k_m . r_j), adjoint with +i, r_j = (j - floor(N/2)) fov/N) by its documented sign and
scale (``Impl.convention``) outside the timed region, then compared with an exact non-uniform DFT
(recon.nufft.nudft) at random sample indices / voxels. A least-squares complex factor between
the mapped output and the exact DFT is reported too: it is 1 when the stated convention is right.

Peak memory: each implementation runs once more (set-up, one forward, one adjoint) in a fresh
subprocess that first loads the shared inputs (k in 1/m float64, image, data), then resets the
kernel's peak-RSS mark (/proc/self/clear_refs) and reports VmHWM - VmRSS, i.e. the memory the
implementation needed beyond the inputs (plans, converted copies, work arrays, outputs).
BART runs as its own process: its ru_maxrss minus the sizes of its mapped input .cfl files.

Timed region: the execute calls only (plans are made beforehand and their time is reported
separately as set-up), except BART, whose command line tool plans on every call, reads its
input files and writes its output (in /dev/shm): its time is that of the whole ``bart nufft``
process. SigPy has no plan (it grids with numba, one thread).

Usage::

    python benchmarks/nufft_cpu.py [--quick] [--repeats 7] [--slow-repeats 3] [--eps 1e-4]
        [--out results.json] [--impl narecon finufft-default ...] [--no-memory] [--threads N]

Why by hand: no library benchmarks NUFFT peers against each other with a common convention;
the .cfl reader/writer is 10 lines (BART's python helper is not packaged in Debian's bart).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FINUFFT_CONFIGS = {"finufft-default": None, "finufft-uf2": 2.0}
ALL_IMPLS = ["narecon", "finufft-default", "finufft-uf2", "mrinufft", "sigpy", "bart"]
OTHER_IMPLS = ["bart-default"]
SLOW = {"sigpy", "bart", "bart-default"}  # seconds per call: only the first --slow-repeats rounds
BART = shutil.which("bart") or "/usr/bin/bart"


# ----------------------------------------------------------------------------------------------
# implementations: raw calls (timed) and the mapping to narecon's convention (untimed)
# ----------------------------------------------------------------------------------------------
class Impl:
    """One NUFFT implementation on a fixed trajectory.

    ``k`` (M, 3) float64 in 1/m, ``shape`` the grid, ``fov`` in m. ``forward(x)`` and
    ``adjoint(y)`` are the timed raw calls in the implementation's own convention;
    ``fwd_ours`` / ``adj_ours`` map their outputs to narecon's (complex128).
    """

    name = "?"
    convention = ""
    threads_used = ""

    def __init__(self, k, shape, fov, eps, threads):
        self.k, self.shape, self.fov, self.eps, self.threads = k, tuple(shape), fov, eps, threads
        self.n_vox = int(np.prod(shape))

    def setup(self) -> None:
        """Plan (timed separately as set-up; counted in the peak memory)."""

    @property
    def kgrid(self):
        """k in cycles per FOV (pairs with the mode index j - floor(N/2)); a new array each time,
        so that each peer's conversion from 1/m is counted in its own set-up time and memory."""
        return self.k * self.fov

    def fwd_ours(self, raw):
        return np.asarray(raw, dtype=np.complex128).reshape(-1)

    def adj_ours(self, raw):
        return np.asarray(raw, dtype=np.complex128).reshape(self.shape)

    def info(self) -> str:
        return ""


class Narecon(Impl):
    name = "narecon"
    convention = "ours"

    def setup(self):
        from recon.nufft import NUFFT

        self.op = NUFFT(self.k, self.shape, self.fov, eps=self.eps, dtype=np.complex64)
        self.op._plan(1)  # plan now (the operator plans lazily on first use)
        self.threads_used = str(self.threads)

    def forward(self, x):
        return self.op.forward(x)

    def adjoint(self, y):
        return self.op.adjoint(y)

    def info(self):
        return f"upsampfac {self.op._plan(1).upsampfac or 'finufft default'}"


class FinufftDirect(Impl):
    convention = "same as ours (x = 2 pi k fov / N, isign -1 type 2, +1 type 1, modeord 0)"

    def __init__(self, *a, upsampfac=None, **kw):
        super().__init__(*a, **kw)
        self.upsampfac = upsampfac
        self.name = "finufft-default" if upsampfac is None else f"finufft-uf{upsampfac:g}"

    def setup(self):
        import finufft

        n = np.asarray(self.shape, dtype=np.float64)
        kg = self.kgrid
        pts = [np.ascontiguousarray((2 * np.pi * kg[:, d] / n[d]).astype(np.float32)) for d in range(3)]
        del kg
        kw = dict(nthreads=self.threads, modeord=0)
        if self.upsampfac is not None:
            kw["upsampfac"] = self.upsampfac
        self.p2 = finufft.Plan(2, self.shape, 1, self.eps, -1, dtype="complex64", **kw)
        self.p2.setpts(*pts)
        self.p1 = finufft.Plan(1, self.shape, 1, self.eps, +1, dtype="complex64", **kw)
        self.p1.setpts(*pts)
        self.threads_used = str(self.threads)

    def forward(self, x):
        return self.p2.execute(x)

    def adjoint(self, y):
        return self.p1.execute(y)

    def info(self):
        return f"upsampfac {self.upsampfac or 'finufft default (chosen at setpts)'}"


class MriNufft(Impl):
    name = "mrinufft"
    convention = (
        "finufft backend, samples in rad (2 pi k fov / N), signs as ours, outputs divided by "
        "norm_factor sqrt(2^3 N^3): ours = mrinufft * sqrt(8 N^3), both directions"
    )

    def setup(self):
        from mrinufft import get_operator

        n = np.asarray(self.shape, dtype=np.float64)
        samples = (2 * np.pi * self.kgrid / n[None, :]).astype(np.float32)
        self.op = get_operator("finufft")(samples, self.shape, eps=self.eps, nthreads=self.threads)
        self.threads_used = str(self.threads)
        self.scale = float(self.op.norm_factor)

    def fwd_ours(self, raw):
        return super().fwd_ours(raw) * self.scale

    def adj_ours(self, raw):
        return super().adj_ours(raw) * self.scale

    def forward(self, x):
        return self.op.op(x)

    def adjoint(self, y):
        return self.op.adj_op(y)


class Sigpy(Impl):
    name = "sigpy"
    convention = "forward exp(-i 2 pi k.r) / sqrt(N^3) (orthonormal): ours = sigpy * sqrt(N^3), both directions"
    threads_used = "1 (numba, not parallel)"

    def setup(self):
        import sigpy  # noqa: F401  (numba compilation happens on first use: warm-up call)

        self.coord = self.kgrid.astype(np.float32)
        self.scale = np.sqrt(self.n_vox)

    def forward(self, x):
        import sigpy

        return sigpy.nufft(x, self.coord)

    def adjoint(self, y):
        import sigpy

        return sigpy.nufft_adjoint(y, self.coord, oshape=self.shape)

    def fwd_ours(self, raw):
        return super().fwd_ours(raw) * self.scale

    def adj_ours(self, raw):
        return super().adj_ours(raw) * self.scale


def write_cfl(base: Path, arr: np.ndarray, dims: tuple[int, ...]) -> None:
    """BART .cfl/.hdr: complex float32, column-major with dimensions ``dims``.

    ``arr`` must already have the memory layout of ``dims`` in Fortran order (i.e. be a
    C-ordered array of the reversed dims).
    """
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    np.ascontiguousarray(arr, dtype=np.complex64).tofile(base.with_suffix(".cfl"))


def read_cfl(base: Path) -> tuple[np.ndarray, list[int]]:
    """Read a BART .cfl; returns the flat complex64 data (Fortran order) and the dimensions."""
    lines = base.with_suffix(".hdr").read_text().splitlines()
    dims = [int(d) for d in lines[1].split()]
    return np.fromfile(base.with_suffix(".cfl"), dtype=np.complex64), dims


class Bart(Impl):
    """``bart nufft -P`` (periodic k-space, which is what the DFT is); ``bart-default`` without -P.

    Without -P, BART does not wrap the interpolation kernel around the grid edge, so samples
    within ~1 grid unit of |k| = N/2 (TPI reaches kmax = N/2 exactly) come out wrong
    (errors up to 100 % there, ~3 % overall for this trajectory).
    """

    name = "bart"
    convention = (
        "forward exp(-i 2 pi k.r) / sqrt(N^3), traj (3, samples, projections) in cycles/FOV, "
        "image centre at N/2: ours = bart * sqrt(N^3), both directions"
    )

    def __init__(self, *a, periodic=True, **kw):
        super().__init__(*a, **kw)
        self.flags = ["-P"] if periodic else []
        self.name = "bart" if periodic else "bart-default"

    def setup(self):
        if not os.access(BART, os.X_OK):
            raise RuntimeError(f"bart not found at {BART}")
        root = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = Path(tempfile.mkdtemp(prefix="narecon_bench_bart_", dir=root))
        self.nproj, self.nsamp = self.kshape
        # traj dims (3, samples, projections): C order (proj, samp, 3) is that layout
        write_cfl(self.dir / "traj", self.kgrid.reshape(self.nproj, self.nsamp, 3), (3, self.nsamp, self.nproj))
        self.scale = np.sqrt(self.n_vox)
        self.env = dict(os.environ, OMP_NUM_THREADS=str(self.threads))
        self.threads_used = f"{self.threads} (OpenMP)"
        self.maxrss_kb = 0
        self.input_bytes = 0
        self.version = subprocess.run([BART, "version"], capture_output=True, text=True).stdout.strip()

    def _run(self, args, inputs):
        proc = subprocess.Popen([BART, *args], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"bart {' '.join(args)} failed: {proc.stderr.read().decode()}")
        proc.stderr.close()
        in_bytes = sum((self.dir / f"{i}.cfl").stat().st_size for i in inputs)
        if ru.ru_maxrss > self.maxrss_kb:
            self.maxrss_kb, self.input_bytes = ru.ru_maxrss, in_bytes

    def stage_forward(self, x):
        """Write the image (untimed): BART dims (x, y, z) = C-order (z, y, x), i.e. x.T."""
        write_cfl(self.dir / "img", np.ascontiguousarray(x.T), self.shape)

    def stage_adjoint(self, y):
        write_cfl(self.dir / "ksp", y.reshape(self.nproj, self.nsamp), (1, self.nsamp, self.nproj))

    def forward(self, x):
        d = self.dir
        self._run(["nufft", *self.flags, str(d / "traj"), str(d / "img"), str(d / "ksp_out")], ["traj", "img"])
        return d / "ksp_out"

    def adjoint(self, y):
        d = self.dir
        dims = ":".join(str(n) for n in self.shape)
        self._run(
            ["nufft", "-a", *self.flags, "-d", dims, str(d / "traj"), str(d / "ksp"), str(d / "img_out")],
            ["traj", "ksp"],
        )
        return d / "img_out"

    def fwd_ours(self, raw):
        flat, dims = read_cfl(raw)
        return flat.astype(np.complex128) * self.scale  # (1, samp, proj) Fortran = C (proj, samp)

    def adj_ours(self, raw):
        flat, dims = read_cfl(raw)
        img = flat.reshape(tuple(dims[:3])[::-1]).T  # Fortran (x, y, z)
        return img.astype(np.complex128) * self.scale

    def info(self):
        return self.version

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def make_impl(name, k, kshape, shape, fov, eps, threads) -> Impl:
    if name == "narecon":
        impl = Narecon(k, shape, fov, eps, threads)
    elif name in FINUFFT_CONFIGS:
        impl = FinufftDirect(k, shape, fov, eps=eps, threads=threads, upsampfac=FINUFFT_CONFIGS[name])
    elif name == "mrinufft":
        impl = MriNufft(k, shape, fov, eps, threads)
    elif name == "sigpy":
        impl = Sigpy(k, shape, fov, eps, threads)
    elif name in ("bart", "bart-default"):
        impl = Bart(k, shape, fov, eps, threads, periodic=name == "bart")
    else:
        raise SystemExit(f"unknown implementation {name!r}; known: {ALL_IMPLS}")
    impl.kshape = kshape
    return impl


def available(name: str) -> str | None:
    """None if the implementation can run here, else why not."""
    mods = {"mrinufft": "mrinufft", "sigpy": "sigpy"}
    if name in mods:
        try:
            __import__(mods[name])
        except ImportError as e:
            return f"not installed ({e})"
    if name.startswith("bart") and not os.access(BART, os.X_OK):
        return "bart executable not found (Debian package 'bart')"
    return None


# ----------------------------------------------------------------------------------------------
# the problem
# ----------------------------------------------------------------------------------------------
def make_problem(quick: bool, seed: int = 0):
    from recon.trajectory import tpi

    res = 0.007 if quick else 0.0035
    traj = tpi(fov_m=0.224, res_m=res, p=0.3, gmax_t_per_m=4e-3, dwell_s=10e-6)
    rng = np.random.default_rng(seed)
    shape = tuple(traj.matrix)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    m = traj.k.shape[0] * traj.k.shape[1]
    y = (rng.standard_normal(m) + 1j * rng.standard_normal(m)).astype(np.complex64)
    k = np.ascontiguousarray(traj.k.reshape(-1, 3), dtype=np.float64)
    return dict(
        k=k,
        kshape=traj.k.shape[:2],
        shape=shape,
        fov=float(traj.fov_m[0]),
        x=x,
        y=y,
        desc=f"TPI fov 224 mm, res {res * 1e3:g} mm, p 0.3, Gmax 4 mT/m, dwell 10 us: "
        f"{traj.k.shape[0]} x {traj.k.shape[1]} = {m / 1e6:.2f} M samples onto {shape}",
    )


def exact_reference(prob, n_samples=64, n_voxels=6, seed=1):
    """Exact NUDFT (float64) at random sample indices (forward) and voxels (adjoint)."""
    from recon.nufft.nudft import nudft_adjoint_at, nudft_forward_at

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(prob["k"]), n_samples, replace=False))
    vox = np.stack([rng.integers(0, n, n_voxels) for n in prob["shape"]], axis=1)
    fwd = nudft_forward_at(prob["x"], prob["k"], prob["fov"], idx)
    adj = nudft_adjoint_at(prob["y"], prob["k"], prob["shape"], prob["fov"], vox)
    return idx, vox, fwd, adj


def compare(a, e):
    """Relative l2 error and the least-squares complex factor alpha with alpha * a ~ e."""
    err = float(np.linalg.norm(a - e) / np.linalg.norm(e))
    alpha = complex(np.vdot(a, e) / np.vdot(a, a))
    return err, alpha


# ----------------------------------------------------------------------------------------------
# memory child
# ----------------------------------------------------------------------------------------------
def _status_kb(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(key)


def memory_child(name, workdir, eps, threads) -> dict:
    d = Path(workdir)
    meta = json.loads((d / "meta.json").read_text())
    k, x, y = np.load(d / "k.npy"), np.load(d / "x.npy"), np.load(d / "y.npy")
    impl = make_impl(name, k, tuple(meta["kshape"]), tuple(meta["shape"]), meta["fov"], eps, threads)
    if isinstance(impl, Bart):
        impl.setup()
        impl.stage_forward(x)
        impl.stage_adjoint(y)
        impl.forward(x)
        impl.adjoint(y)
        impl.close()
        return {"peak_kb": impl.maxrss_kb - impl.input_bytes // 1024, "maxrss_kb": impl.maxrss_kb}
    # import the implementation's modules before the mark is reset
    if name == "sigpy":
        import sigpy  # noqa: F401
    elif name == "mrinufft":
        import mrinufft  # noqa: F401
    import finufft  # noqa: F401

    import recon.nufft  # noqa: F401

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    rss0 = _status_kb("VmRSS")
    impl.setup()
    a = impl.forward(x)
    b = impl.adjoint(y)
    hwm = _status_kb("VmHWM")
    del a, b
    return {"peak_kb": hwm - rss0, "rss_inputs_kb": rss0}


def measure_memory(names, prob, eps, threads) -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="narecon_bench_mem_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as td:
        d = Path(td)
        np.save(d / "k.npy", prob["k"])
        np.save(d / "x.npy", prob["x"])
        np.save(d / "y.npy", prob["y"])
        (d / "meta.json").write_text(json.dumps({"kshape": list(prob["kshape"]), "shape": list(prob["shape"]), "fov": prob["fov"]}))
        for name in names:
            cmd = [
                sys.executable,
                __file__,
                "--_memory-child",
                name,
                "--_workdir",
                td,
                "--eps",
                repr(eps),
                "--threads",
                str(threads),
            ]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                out[name] = {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"rc {r.returncode}"}
            else:
                out[name] = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"  memory {name:16s} {out[name]}", flush=True)
    return out


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
def machine_description(threads) -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import finufft

    vers = {"python": platform.python_version(), "numpy": np.__version__, "finufft": finufft.__version__}
    for mod in ("sigpy",):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:
            pass
    try:
        from importlib.metadata import version

        vers["mri-nufft"] = version("mri-nufft")
    except Exception:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "load_avg_start": os.getloadavg(),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "versions": vers,
    }


def run(args) -> dict:
    from recon.nufft.operator import default_threads

    threads = args.threads or default_threads()
    names = []
    skipped = {}
    for n in args.impl:
        why = available(n)
        if why:
            skipped[n] = why
            print(f"skipping {n}: {why}")
        else:
            names.append(n)
    t0 = time.perf_counter()
    prob = make_problem(args.quick)
    print(prob["desc"], f"(trajectory {time.perf_counter() - t0:.1f} s)", flush=True)
    machine = machine_description(threads)
    print("machine:", machine["cpu"], f"{machine['cores']} cores, load {machine['load_avg_start']}", flush=True)

    t0 = time.perf_counter()
    idx, vox, ref_f, ref_a = exact_reference(prob)
    print(
        f"exact NUDFT reference at {len(idx)} samples / {len(vox)} voxels: {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    impls, res = {}, {}
    for n in names:
        impl = make_impl(n, prob["k"], prob["kshape"], prob["shape"], prob["fov"], args.eps, threads)
        t = time.perf_counter()
        impl.setup()
        setup_s = time.perf_counter() - t
        # warm-up and accuracy (first call includes numba compilation for SigPy)
        if isinstance(impl, Bart):
            impl.stage_forward(prob["x"])
            impl.stage_adjoint(prob["y"])
        ef, af = compare(impl.fwd_ours(impl.forward(prob["x"]))[idx], ref_f)
        out_a = impl.adj_ours(impl.adjoint(prob["y"]))
        ea, aa = compare(out_a[tuple(vox.T)], ref_a)
        impls[n] = impl
        res[n] = {
            "setup_s": setup_s,
            "err_forward": ef,
            "err_adjoint": ea,
            "alpha_forward": [abs(af), float(np.angle(af))],
            "alpha_adjoint": [abs(aa), float(np.angle(aa))],
            "convention": impl.convention,
            "threads": impl.threads_used,
            "info": impl.info(),
            "forward_s": [],
            "adjoint_s": [],
        }
        print(
            f"  {n:16s} set-up {setup_s:6.2f} s  err fwd {ef:.2e} adj {ea:.2e}  |alpha| {abs(af):.4f}/{abs(aa):.4f}  {impl.info()}",
            flush=True,
        )

    rng = np.random.default_rng(2)
    for r in range(args.repeats):
        order = [names[i] for i in rng.permutation(len(names))]
        if r >= args.slow_repeats:
            order = [n for n in order if n not in SLOW]
        for n in order:
            impl = impls[n]
            for op, arg in (("forward", prob["x"]), ("adjoint", prob["y"])):
                t = time.perf_counter()
                getattr(impl, op)(arg)
                res[n][f"{op}_s"].append(time.perf_counter() - t)
        print(
            f"  round {r + 1}/{args.repeats}: "
            + ", ".join(f"{n} {res[n]['forward_s'][-1]:.2f}/{res[n]['adjoint_s'][-1]:.2f}" for n in order),
            flush=True,
        )
    for impl in impls.values():
        if isinstance(impl, Bart):
            res[impl.name]["bart_maxrss_kb_in_timing"] = impl.maxrss_kb
            impl.close()

    for n in names:
        for op in ("forward", "adjoint"):
            ts = np.asarray(res[n][f"{op}_s"])
            res[n][f"{op}_median_s"] = float(np.median(ts))
            res[n][f"{op}_min_s"] = float(ts.min())
            res[n][f"{op}_max_s"] = float(ts.max())
    fin = [n for n in names if n in FINUFFT_CONFIGS]
    best = {}
    for op in ("forward", "adjoint"):
        if fin:
            b = min(fin, key=lambda n: res[n][f"{op}_median_s"])
            best[op] = b
            for n in names:
                # against the best finufft configuration in the same rounds (the slow peers run
                # only in the first --slow-repeats rounds, all others in every round)
                ref = np.median(res[b][f"{op}_s"][: len(res[n][f"{op}_s"])])
                res[n][f"{op}_ratio"] = res[n][f"{op}_median_s"] / ref
    if not args.no_memory:
        print("peak memory (subprocess per implementation):", flush=True)
        mem = measure_memory(names, prob, args.eps, threads)
        ref = min((mem[n]["peak_kb"] for n in fin if "peak_kb" in mem.get(n, {})), default=None)
        for n in names:
            res[n]["memory"] = mem[n]
            if ref and "peak_kb" in mem[n]:
                res[n]["memory_ratio"] = mem[n]["peak_kb"] / ref
    machine["load_avg_end"] = os.getloadavg()
    return {
        "problem": prob["desc"],
        "eps": args.eps,
        "dtype": "complex64",
        "repeats": args.repeats,
        "slow_repeats": min(args.slow_repeats, args.repeats),
        "machine": machine,
        "finufft_best": best,
        "skipped": skipped,
        "results": res,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def summary_line(out: dict) -> str:
    m = out["machine"]
    return (
        f"{out['problem']}; eps {out['eps']:g}, {out['dtype']}; {out['repeats']} interleaved rounds "
        f"({out.get('slow_repeats', out['repeats'])} for the slow peers); ratios vs finufft best "
        f"{out['finufft_best']}; {m['cpu']}, {m['cores']} cores, {m['threads']} threads, load average "
        f"{m['load_avg_start'][0]:.1f} at start, {m.get('load_avg_end', [float('nan')])[0]:.1f} at end; "
        f"{out['date']}"
    )


def table(out: dict) -> str:
    """Markdown table of the results."""
    res = out["results"]
    rows = [
        "| implementation | forward s (median, min-max) | ratio | adjoint s (median, min-max) | ratio "
        "| set-up s | rel. err fwd / adj vs exact DFT | peak MB | mem ratio | threads |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in res.items():
        mem = r.get("memory", {})
        mb = f"{mem['peak_kb'] / 1024:.0f}" if "peak_kb" in mem else mem.get("error", "-")
        rows.append(
            f"| {n} | {r['forward_median_s']:.3f} ({r['forward_min_s']:.3f}-{r['forward_max_s']:.3f}) "
            f"| {r.get('forward_ratio', float('nan')):.2f} "
            f"| {r['adjoint_median_s']:.3f} ({r['adjoint_min_s']:.3f}-{r['adjoint_max_s']:.3f}) "
            f"| {r.get('adjoint_ratio', float('nan')):.2f} | {r['setup_s']:.2f} "
            f"| {r['err_forward']:.1e} / {r['err_adjoint']:.1e} | {mb} "
            f"| {r.get('memory_ratio', float('nan')):.2f} | {r['threads']} |"
        )
    return "\n".join(rows)


def write_outputs(out: dict, path: Path) -> None:
    from recon.atomic import atomic_file

    js = path if path.suffix == ".json" else path.with_suffix(".json")
    with atomic_file(js) as tmp:
        tmp.write_text(json.dumps(out, indent=1))
    cols = [
        "implementation",
        "forward_median_s",
        "forward_min_s",
        "forward_max_s",
        "forward_ratio",
        "adjoint_median_s",
        "adjoint_min_s",
        "adjoint_max_s",
        "adjoint_ratio",
        "setup_s",
        "err_forward",
        "err_adjoint",
        "peak_mb",
        "memory_ratio",
        "threads",
    ]
    with atomic_file(js.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for n, r in out["results"].items():
            mem = r.get("memory", {})
            w.writerow(
                [n]
                + [r.get(c, "") for c in cols[1:12]]
                + [mem["peak_kb"] / 1024 if "peak_kb" in mem else "", r.get("memory_ratio", ""), r["threads"]]
            )
    print(f"wrote {js} and {js.with_suffix('.csv')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="32^3 TPI (7 mm) instead of 64^3")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds (default 7)")
    ap.add_argument(
        "--slow-repeats",
        type=int,
        default=3,
        help="rounds that include the slow peers (SigPy, BART; default 3)",
    )
    ap.add_argument("--eps", type=float, default=1e-4, help="requested accuracy (default 1e-4)")
    ap.add_argument("--threads", type=int, default=0, help="threads (default: all cores this process may use)")
    ap.add_argument(
        "--impl",
        nargs="+",
        default=ALL_IMPLS,
        help=f"implementations (default: {' '.join(ALL_IMPLS)}; also {' '.join(OTHER_IMPLS)})",
    )
    ap.add_argument("--memory-only", action="store_true", help="only the peak-memory subprocesses")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--out", type=Path, help="results file (.json; a .csv with the same stem is written too)")
    ap.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    ap.add_argument("--_workdir", dest="workdir", help=argparse.SUPPRESS)
    ap.add_argument("--report", type=Path, help="print the Markdown table of a results .json and exit")
    args = ap.parse_args(argv)
    if args.report:
        out = json.loads(args.report.read_text())
        print(summary_line(out))
        print(table(out))
        return 0
    if args.memory_child:
        from recon.nufft.operator import default_threads

        print(json.dumps(memory_child(args.memory_child, args.workdir, args.eps, args.threads or default_threads())))
        return 0
    if args.memory_only:
        from recon.nufft.operator import default_threads

        prob = make_problem(args.quick)
        print(prob["desc"], flush=True)
        names = [n for n in args.impl if available(n) is None]
        mem = measure_memory(names, prob, args.eps, args.threads or default_threads())
        if args.out:
            args.out.write_text(
                json.dumps(
                    {
                        "problem": prob["desc"],
                        "eps": args.eps,
                        "memory": mem,
                        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    },
                    indent=1,
                )
            )
        return 0
    out = run(args)
    print()
    print(summary_line(out))
    print(table(out))
    if args.out:
        write_outputs(out, args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
