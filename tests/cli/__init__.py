"""Tests of mobiletune/cli/."""
