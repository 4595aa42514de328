"""CUDA C sources of narecon's GPU NUFFT (shipped inside the wheel as package ``recon._kernels``).

pyproject.toml maps this folder to ``recon._kernels`` at build time (``[tool.setuptools.package-dir]``),
so the tree needs no symbolic link; in a source checkout the sources are read in place. Locate them
with :func:`recon.nufft.cupy_backend.kernel_dir`.
"""
