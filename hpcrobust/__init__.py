"""hpcrobust: scaling trends in language-model adversarial robustness, on a SLURM cluster."""

from importlib.metadata import PackageNotFoundError, version

from hpcrobust.models.determinism import request_reproducible_blas

request_reproducible_blas()  # before torch first calls MKL: thread-count-invariant matrix products

try:
    __version__ = version("hpcrobust")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
