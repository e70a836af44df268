"""Tests of mobiletune/evaluation/."""
