"""CUDA C sources of narecon's GPU NUFFT (shipped as package ``recon._kernels``).

``recon/_kernels`` is a symbolic link to the top-level ``kernels/`` folder, so an editable
install reads the sources in place and a wheel carries copies; locate them with
:func:`recon.nufft.cupy_backend.kernel_dir`.
"""
