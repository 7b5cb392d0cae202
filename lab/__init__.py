"""Everything around the daemon that is neither the daemon nor training: scoring against the public benchmarks
(lab.evaluation, `streamer eval`), the demo (`streamer demo`) and the local broker for tests and benchmarks.

Not part of the runtime: the daemon never imports it (an import-linter contract), and the image does not ship it.
"""
