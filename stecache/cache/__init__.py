"""The feature cache: one zarr v3 group holding a frozen encoder's token maps for every clip of a dataset.

Arrays: `features` [N, n, c, h, w] (float16 by default), one clip per chunk and `shard_size` clips per shard
file; `views` [N, V-1, n, c, h, w] when a clip has V > 1 views; per clip `labels` [N, K] uint8 multi-hot,
`split`, `clip_id`, `done` and `error`. Attributes hold the full provenance and its fingerprint, so stage two
never asks the user to restate anything. Writers fill whole shards and set `done` only after the shard's
features are stored (zarr writes each file atomically), so a killed run loses at most its unfinished shards.
Parts: schema.py (format, codecs, shard size, Row, fingerprints), store.py (the `Cache` class: reads,
writes), create.py (`open_cache`, `create_cache`), verify.py (checksums, repair), raw.py (direct shard
reads), lock.py, describe.py, h5.py (HDF5 export/import). This package is the only code importing zarr and
h5py. Python: `open_cache("work/cache.zarr").read([0, 1])`.
"""

from .create import create_cache, open_cache
from .h5 import export_h5, import_h5
from .lock import check_url, lock
from .schema import (
    CODECS,
    DEFAULT_CODEC,
    DTYPES,
    FORMAT_VERSION,
    SHARD_BYTES,
    UNFINGERPRINTED,
    Row,
    attrs_diff,
    default_shard_size,
    manifest_fingerprint,
)
from .store import Cache

__all__ = ["Cache", "Row", "open_cache", "create_cache", "export_h5", "import_h5", "lock", "check_url"]
__all__ += ["CODECS", "DEFAULT_CODEC", "DTYPES", "FORMAT_VERSION", "SHARD_BYTES", "UNFINGERPRINTED"]
__all__ += ["attrs_diff", "default_shard_size", "manifest_fingerprint"]
