"""`python -m bench.train [flags]`: bench.train (throughput vs the tutorial);
`python -m bench.train overhead [flags]`: the Trainer's step vs a bare Keras loop."""

import sys

if __name__ == '__main__':
  if sys.argv[1:2] == ['overhead']:
    from bench.train.overhead import main
    main(sys.argv[2:])
  else:
    from bench.train.bench import main
    main()
