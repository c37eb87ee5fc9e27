"""Train: the training loop, experiment runner (single and unified) and sweeps."""
