#!/usr/bin/env python
"""GPU NUFFT benchmark: narecon's ``cupy`` backend (our kernels) against cuFINUFFT and host FINUFFT.

Problems: the study protocol's 3D TPI (FOV 224 mm, p = 0.3, Gmax 4 mT/m, 10 us dwell) at
3.5 mm onto 64^3 (3920 x 1238 = 4.9 M samples) and at 1.75 mm onto 128^3 (15520 x 2476 =
38.4 M samples); forward (type 2) and adjoint (type 1); one and two echoes (n_trans 1, 2).

For each problem every implementation is planned once (plan time reported separately), then the
execute calls are timed: GPU implementations with device-resident inputs and outputs (CuPy
arrays; the device is synchronised before the clock stops), FINUFFT on host numpy arrays with
all CPU threads. Rounds are interleaved; the median over ``--repeats`` rounds is reported as
points per second (samples x transforms / s) and as the ratio to cuFINUFFT and to host
FINUFFT. Errors are relative l2 norms against host FINUFFT at eps 1e-9 (complex128).

Peak device memory: CuPy's pool is emptied before each GPU implementation; reported are the
pool's bytes after planning and running (narecon allocates only from the pool, so this is its
peak) and the device-wide used-memory increase measured with cudaMemGetInfo (covers cuFINUFFT,
which allocates outside CuPy's pool, at the moments sampled: after plan and after each call).

Usage (on a GPU node)::

    python benchmarks/gpu_nufft.py [--sizes 64 128] [--eps 1e-4] [--dtype complex64]
        [--repeats 5] [--impl cupy-gm cupy-sm cufinufft finufft] [--out results.json]

Without CuPy or a CUDA device it stops at once with the reason (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

FOV = 0.224
RES = {32: 0.007, 64: 0.0035, 128: 0.00175}
IMPLS = ["cupy-gm", "cupy-sm", "cufinufft", "finufft"]
HOST_IMPLS = ["cuda-host-gm", "cuda-host-sm"]  # the same kernels emulated on the CPU (dry run, slow)


def _require_gpu():
    from recon.device import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason is not None:
        print(f"gpu_nufft.py needs a CUDA device and CuPy: {reason}", file=sys.stderr)
        raise SystemExit(2)
    import cupy

    return cupy


def _make_op(impl, k, shape, eps, dtype):
    from recon.nufft import NUFFT

    if impl.startswith(("cupy", "cuda-host")):
        backend, method = impl.rsplit("-", 1)
        return NUFFT(k, shape, FOV, backend=backend, eps=eps, dtype=dtype, method=method)
    return NUFFT(k, shape, FOV, backend=impl, eps=eps, dtype=dtype)


def _timed(cp, fn, arg, gpu: bool):
    if gpu:
        cp.cuda.Device().synchronize()
    t = time.perf_counter()
    out = fn(arg)
    if gpu:
        cp.cuda.Device().synchronize()
    return time.perf_counter() - t, out


def _is_gpu(impl: str) -> bool:
    return impl.startswith("cupy") or impl == "cufinufft"


def run(args) -> list[dict]:
    import recon.nufft.cupy_backend  # noqa: F401  (registers cuda-host)
    from recon.nufft import NUFFT
    from recon.trajectory import tpi

    dtype = np.dtype(args.dtype)
    rows = []
    rng = np.random.default_rng(7)
    cp = dev = None
    gpu_name = "none (host emulation dry run)"
    if any(_is_gpu(i) for i in args.impl):
        cp = _require_gpu()
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        gpu_name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    host = platform.processor() or platform.machine()
    print(f"# device: {gpu_name}; host: {host}; eps {args.eps}; {dtype.name}")
    for n in args.sizes:
        t0 = time.perf_counter()
        k = tpi(fov_m=FOV, res_m=RES[n]).k.reshape(-1, 3)
        m = len(k)
        shape = (n, n, n)
        print(f"# {n}^3 TPI: {m} samples (trajectory {time.perf_counter() - t0:.1f} s)")
        for n_trans in (1, 2):
            lead = (n_trans,) if n_trans > 1 else ()
            x = (rng.standard_normal(lead + shape) + 1j * rng.standard_normal(lead + shape)).astype(dtype)
            y = (rng.standard_normal(lead + (m,)) + 1j * rng.standard_normal(lead + (m,))).astype(dtype)
            ref = NUFFT(k, shape, FOV, backend="finufft", eps=1e-9, dtype=np.complex128)
            ref_f, ref_a = ref.forward(x.astype(np.complex128)), ref.adjoint(y.astype(np.complex128))
            del ref
            res = {}
            ops = {}
            for impl in args.impl:
                gpu = _is_gpu(impl)
                mem0 = None
                if gpu:
                    cp.get_default_memory_pool().free_all_blocks()
                    mem0 = cp.cuda.runtime.memGetInfo()[0]
                tp = time.perf_counter()
                try:
                    op = _make_op(impl, k, shape, args.eps, dtype)
                    op._plan(n_trans)
                except Exception as e:  # a missing cufinufft is reported, not fatal
                    print(f"#   {impl}: unavailable ({e})")
                    continue
                if gpu:
                    dev.synchronize()
                plan_s = time.perf_counter() - tp
                xin, yin = (cp.asarray(x), cp.asarray(y)) if gpu else (x, y)
                _, f = _timed(cp, op.forward, xin, gpu)  # warm-up (kernel compile, cuFFT plan)
                _, a = _timed(cp, op.adjoint, yin, gpu)
                f, a = (f.get(), a.get()) if gpu else (f, a)
                used = (mem0 - cp.cuda.runtime.memGetInfo()[0]) if gpu else None
                ops[impl] = (op, xin, yin, gpu)
                res[impl] = dict(
                    plan_s=plan_s,
                    fwd=[],
                    adj=[],
                    err_fwd=float(np.linalg.norm(f - ref_f) / np.linalg.norm(ref_f)),
                    err_adj=float(np.linalg.norm(a - ref_a) / np.linalg.norm(ref_a)),
                    pool_bytes=int(cp.get_default_memory_pool().total_bytes()) if gpu else None,
                    device_used_bytes=used,
                    method=getattr(op._plan(n_trans), "method", None),
                )
            for _ in range(args.repeats):
                for impl in rng.permutation(list(ops)):
                    op, xin, yin, gpu = ops[impl]
                    res[impl]["fwd"].append(_timed(cp, op.forward, xin, gpu)[0])
                    res[impl]["adj"].append(_timed(cp, op.adjoint, yin, gpu)[0])
            for r in res.values():
                for d in ("fwd", "adj"):
                    r[f"{d}_s"] = float(np.median(r[d]))
                    r[f"{d}_pts_per_s"] = m * n_trans / r[f"{d}_s"]
            for impl, r in res.items():
                row = dict(
                    size=n,
                    samples=m,
                    n_trans=n_trans,
                    impl=impl,
                    eps=args.eps,
                    dtype=dtype.name,
                    **{kk: v for kk, v in r.items() if kk not in ("fwd", "adj")},
                )
                for peer in ("cufinufft", "finufft"):
                    if peer in res:
                        for d in ("fwd", "adj"):
                            row[f"{d}_speedup_vs_{peer}"] = res[peer][f"{d}_s"] / r[f"{d}_s"]
                rows.append(row)
                mem = ""
                if r["pool_bytes"] is not None:
                    mib = r["pool_bytes"] / 2**20, r["device_used_bytes"] / 2**20
                    mem = f" pool {mib[0]:.0f} MiB dev {mib[1]:.0f} MiB"
                vs = " ".join(f"{kk.replace('_speedup_vs_', ' vs ')} x{row[kk]:.2f}" for kk in row if "_vs_" in kk)
                steps = "  ".join(
                    f"{d} {r[d + '_s'] * 1e3:8.2f} ms ({r[d + '_pts_per_s'] / 1e6:8.1f} Mpts/s, err {r['err_' + d]:.1e})"
                    for d in ("fwd", "adj")
                )
                print(f"{n:4d}^3 nt={n_trans} {impl:10s} plan {r['plan_s']:.3f}s  {steps}{mem}  {vs}")
            del ops
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128], choices=sorted(RES))
    ap.add_argument("--eps", type=float, default=1e-4)
    ap.add_argument("--dtype", default="complex64", choices=["complex64", "complex128"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--impl", nargs="+", default=IMPLS, choices=IMPLS + HOST_IMPLS)
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = run(args)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
