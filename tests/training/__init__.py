"""Tests of mobiletune/training/."""
