"""fastmae benchmarks: the bytes model, the per-op and training-step suites, and the GPU report (see NOTES.md)."""
