"""Cache → batches: one split of a feature cache as shuffled float32 batches [B, n, c, h, w] + targets.

`load.py` loads a split into RAM, or streams it when it exceeds the RAM limit (`ram_limit`); `order.py`
gives each epoch's row order (permutation or class-balanced draw, shard-aware reshuffle) and cuts it into
batches, the same in both modes; `feed.py` reads ahead in a background thread and moves batches (or a
whole resident split) to the device; `toy.py` makes a synthetic cache for tests and benchmarks.
Usage: `for pos, x in batches(load_split(cache, "train"), epoch_rows(n, seed, epoch), 64, seed=seed)`.
"""

from ..errors import CacheIncomplete, EmptySplit, StecacheError
from .feed import (
    READ_AHEAD_BYTES,
    RESIDENT_MODES,
    RESIDENT_SHARE,
    make_resident,
    pinned,
    prefetch,
    read_ahead,
    to_tensor,
)
from .load import BUFFER_SHARDS, LOAD_ROWS, SplitData, check_complete, load_split, ram_limit, view_count
from .order import ORDER_SHARDS, batches, epoch_rows, epoch_views, sample_weights, shard_order
from .toy import toy_cache

__all__ = ["SplitData", "load_split", "view_count", "check_complete", "ram_limit", "BUFFER_SHARDS"]
__all__ += ["LOAD_ROWS", "ORDER_SHARDS", "sample_weights", "epoch_rows", "epoch_views", "shard_order"]
__all__ += ["batches", "prefetch", "read_ahead", "READ_AHEAD_BYTES", "pinned", "to_tensor", "make_resident"]
__all__ += ["RESIDENT_SHARE", "RESIDENT_MODES", "toy_cache", "CacheIncomplete", "EmptySplit", "StecacheError"]
