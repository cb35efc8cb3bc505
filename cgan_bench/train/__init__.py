"""Training: the loop, losses, checkpoints, sample grids and the run directory."""
