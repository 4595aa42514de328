"""GPU backend ``cufinufft``: the Flatiron Institute's cuFINUFFT as a reference (optional extra).

Same semantics as the other backends (type 2 with isign -1 forward, type 1 with isign +1
adjoint, modeord 0, points x = 2 pi k fov / N). Plans are made once per trajectory and batch
size; numpy inputs are copied to the device and the result copied back, CuPy inputs stay on
the device. Installed with ``pip install narecon[cufinufft]`` plus a ``gpu-cu12``/``gpu-cu13`` extra.
"""

from __future__ import annotations

import numpy as np

from recon.device import cuda_unavailable_reason, is_device_array
from recon.errors import InputError
from recon.nufft.operator import NufftBackend, register_backend


@register_backend("cufinufft")
class CufinufftBackend(NufftBackend):
    """cuFINUFFT plans on the current CUDA device; options are passed to ``cufinufft.Plan``."""

    @classmethod
    def available(cls) -> str | None:
        reason = cuda_unavailable_reason()
        if reason is not None:
            return reason
        try:
            import cufinufft  # noqa: F401
        except ImportError as e:
            return f"cufinufft is not installed ({e}); install narecon[cufinufft]"
        except Exception as e:  # pragma: no cover - broken CUDA libraries
            return f"cufinufft cannot be imported ({type(e).__name__}: {e})"
        return None

    def __init__(self, k_grid, shape, n_trans, eps, dtype, upsampfac="auto", n_threads=None, **opts):
        import cufinufft
        import cupy as cp

        self.cp = cp
        self.shape = tuple(int(s) for s in shape)
        self.n_trans = int(n_trans)
        self.dtype = np.dtype(dtype)
        real = np.float32 if self.dtype == np.complex64 else np.float64
        n = np.asarray(self.shape, dtype=np.float64)
        # wrap into [-pi, pi): cuFINUFFT accepts [-3pi, 3pi) only; the transform is 2pi-periodic
        pts = [cp.asarray(np.mod(2 * np.pi * k_grid[:, d] / n[d] + np.pi, 2 * np.pi) - np.pi, dtype=real) for d in range(3)]
        self.M = len(k_grid)
        kw = dict(modeord=0)
        if upsampfac not in ("auto", None):
            kw["upsampfac"] = float(upsampfac)
        kw.update(opts)
        eps_eff = max(eps, 1e-6 if self.dtype == np.complex64 else 1e-14)
        self._fwd = cufinufft.Plan(2, self.shape, n_trans=self.n_trans, eps=eps_eff, isign=-1, dtype=self.dtype.name, **kw)
        self._fwd.setpts(*pts)
        self._adj = cufinufft.Plan(1, self.shape, n_trans=self.n_trans, eps=eps_eff, isign=+1, dtype=self.dtype.name, **kw)
        self._adj.setpts(*pts)

    def _in(self, a, shape):
        if tuple(a.shape) != shape:  # kept: cuFINUFFT reads device memory by these shapes
            raise InputError(f"expected an array of shape {shape}, got {tuple(a.shape)}")
        on_dev = is_device_array(a)
        return self.cp.ascontiguousarray(self.cp.asarray(a, dtype=self.dtype)), on_dev

    def forward(self, x):
        """Image batch (n_trans, *shape) -> samples (n_trans, M)."""
        xd, on_dev = self._in(x, (self.n_trans,) + self.shape)
        y = self._fwd.execute(xd if self.n_trans > 1 else xd[0]).reshape(self.n_trans, self.M)
        return y if on_dev else y.get()

    def adjoint(self, y):
        """Samples (n_trans, M) -> image batch (n_trans, *shape)."""
        yd, on_dev = self._in(y, (self.n_trans, self.M))
        x = self._adj.execute(yd if self.n_trans > 1 else yd[0]).reshape((self.n_trans,) + self.shape)
        return x if on_dev else x.get()
