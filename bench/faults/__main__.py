"""python -m bench.faults: see bench/faults/bench.py."""
from bench.faults.bench import main

if __name__ == '__main__':
  main()
