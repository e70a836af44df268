"""Tests of mobiletune/frozen/."""
