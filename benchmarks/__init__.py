"""fastmae benchmarks: the bytes model, the per-op and training-step suites, the GPU report (NOTES.md)."""
