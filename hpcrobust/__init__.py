"""hpcrobust: scaling trends in language-model adversarial robustness, on a SLURM cluster."""

import os
from importlib.metadata import PackageNotFoundError, version

# Before torch first calls MKL (models/determinism.py explains why): thread-count-invariant matrix products.
# Set here, without importing torch, so that the analysis can run where torch is not installed.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

try:
    __version__ = version("hpcrobust")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
