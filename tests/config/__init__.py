"""Tests of mobiletune/config/."""
