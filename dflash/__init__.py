"""dflash-mlx: DFlash block-diffusion speculative decoding on MLX."""

from . import blas  # noqa: F401  (must run before mlx is imported)
