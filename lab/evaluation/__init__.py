"""Evaluation on public benchmarks: NAB's scorer, the NAB runner through the engine and detectors, plots."""
