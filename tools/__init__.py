"""Developer tools that are neither library nor benchmark: the kernels' GPU-compile specifications
(``tools.kernel_specs``) and the compiled-resources report (``tools.kernel_resources``), shared by
``tests/test_gpu_readiness.py`` and ``python -m tools.kernel_resources``."""
