"""Benchmarks of dflash-mlx."""
