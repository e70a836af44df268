"""How good a model is: metrics and calibration, the evaluate job with its plots and HTML
report, and explain (which pixels a prediction rests on)."""
