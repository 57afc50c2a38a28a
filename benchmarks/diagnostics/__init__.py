"""Diagnostics that time single llama.cpp calls: `python -m benchmarks.diagnostics.calls`."""
