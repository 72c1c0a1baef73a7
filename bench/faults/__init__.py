"""bench.faults: kill the tiny pipeline at random moments, re-run it, check that nothing broke.

  .venv/bin/python -m bench.faults --runs 30        # the figure (~1 min a cycle on 2 cores)
  .venv/bin/python -m bench.faults --runs 2 --no-corruption   # a smoke run

bench/faults/bench.py says what each cycle does and checks.
"""
