"""Tests of the analysis package, one file per module."""
