"""Benchmarks of dflash-mlx."""

from dflash import blas

blas.use_openblas()  # before any module of this package imports mlx (a no-op once dflash did it)
