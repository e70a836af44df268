"""A run, from config to best.pt: the stage loop, the run in progress and its checkpoints,
the finishing calibration and live score, k-fold runs."""
