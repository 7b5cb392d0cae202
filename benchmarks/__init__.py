"""Benchmarks of streamer components (python -m benchmarks.engine)."""
