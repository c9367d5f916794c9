"""Training: the generic loop, the Ray Train runner, and pool training."""
