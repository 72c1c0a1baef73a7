"""bench.train: the Trainer's input pipeline and model vs the TF tutorial's code."""
