"""Runnable scenarios shown by `make demo`."""
