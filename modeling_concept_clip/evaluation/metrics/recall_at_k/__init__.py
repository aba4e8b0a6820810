"""Kept as a package so that the metric script ships in wheels; load it with `evaluate.load(<folder>)`."""
