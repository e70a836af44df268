"""Tests of mobiletune/data/."""
