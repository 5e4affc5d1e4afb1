"""Drafter training for dflash-mlx."""
