"""Training and evaluating a model: the config, the loop, checkpoints and run folders, metrics, several
processes under ``torchrun``."""
