"""Tests of mobiletune/predict/."""
