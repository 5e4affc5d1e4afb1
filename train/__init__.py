"""train package of dflash-mlx."""

import dflash.blas  # noqa: F401  (OpenBLAS before mlx)
