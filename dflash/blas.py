"""Make MLX's CPU backend use the system OpenBLAS.

The Linux `mlx[cpu]` wheel ships a slow reference BLAS. Loading OpenBLAS with RTLD_GLOBAL
*before* `mlx.core` is imported makes MLX's sgemm calls resolve to it, about 30x faster fp32
matmul. `import dflash` calls `use_openblas()` before it imports anything that imports mlx.
"""

import ctypes
import os
import sys

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

# Path of the loaded library, "system" where BLAS comes from the platform (macOS
# Accelerate), or None where MLX falls back to its bundled reference BLAS.
loaded = None


def use_openblas() -> None:
    """Load OpenBLAS for MLX (once); DFLASH_OPENBLAS=0 keeps the reference BLAS, DFLASH_OPENBLAS=PATH
    names the library."""
    global loaded
    if loaded is not None:
        return
    if not sys.platform.startswith("linux"):
        loaded = "system"
        return
    if "mlx.core" in sys.modules:
        print("dflash-mlx: mlx was imported before dflash; OpenBLAS not loaded", file=sys.stderr)
        return
    override = os.environ.get("DFLASH_OPENBLAS")
    if override == "0":
        return
    for path in ([override] if override else []) + list(CANDIDATES):
        if path and os.path.exists(path):
            ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
            loaded = path
            return
    print(
        "dflash-mlx: OpenBLAS not found; MLX's CPU matmul will be ~30x slower "
        "(Debian/Ubuntu: apt-get install libopenblas0-pthread)",
        file=sys.stderr,
    )
