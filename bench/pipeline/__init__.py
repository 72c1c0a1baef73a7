"""bench.pipeline: wall time of the whole tiny pipeline on the local engine, per component."""
