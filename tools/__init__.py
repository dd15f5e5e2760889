"""Developer tools that are neither library nor benchmark: the kernels' GPU-compile specifications
(``tools.kernel_specs``), the reading of compiled kernels (``tools.sass``: the CUDA tools, SASS, a
compile run without the Triton interpreter), the compiled-resources report (``tools.kernel_resources``,
with ``tools.throughput``'s occupancy figures) and the trace of the fused ops as torch.compile sees them
(``tools.trace_triton_ops``); shared by the tests and ``python -m tools.<name>``."""
