"""Hydra configs of cgan-bench (installed as the package cgan_bench.conf)."""
