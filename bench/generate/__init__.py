"""Generation speed: gRPC `generate` (batch 1/8/64) vs `stream` vs the tutorial's loop."""
