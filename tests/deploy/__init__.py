"""Tests of mobiletune/deploy/."""
