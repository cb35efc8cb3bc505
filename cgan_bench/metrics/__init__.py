"""Evaluation: feature spaces, cached real references, overall and per-class metrics."""
