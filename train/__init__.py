"""Drafter training for dflash-mlx (`dflash-train`); offline_default/ builds the offline default's drafter,
fast model and router probe."""

from dflash import blas

blas.use_openblas()  # before any module of this package imports mlx (a no-op once dflash did it)
