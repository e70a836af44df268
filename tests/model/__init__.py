"""Tests of mobiletune/model/."""
