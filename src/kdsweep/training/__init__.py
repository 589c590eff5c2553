"""Training: the one loop, the per-batch inputs, the teacher (trained once, cached) and
its cached outputs, optimizers and devices."""
