"""glimp's benchmarks and diagnostics, run from the repository root: `python -m benchmarks.perf`."""
