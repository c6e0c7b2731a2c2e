"""A synthetic feature cache (no video, no backbone) for tests, benchmarks and demos."""

from __future__ import annotations

import numpy as np


def toy_cache(
    url: str,
    n_clips: int = 160,
    num_classes: int = 4,
    feature_shape: tuple[int, int, int, int] = (4, 16, 4, 4),
    multi_label: bool = False,
    num_views: int = 1,
    seed: int = 0,
    signal: float = 1.0,
    pending_shards: int = 0,
    shard_size: int | None = None,
):
    """A synthetic feature cache (no video) for tests, benchmarks and demos; returns the open Cache.

    Class k adds its own random channel signature (×`signal`) to one spatial quadrant during one temporal
    half of the clip, on top of N(0, 1) noise: local and temporal structure, separable by every head.
    Splits: 60 % train, 20 % val, 20 % test. Single-label: classes round-robin (balanced); multi-label: one
    or two labels per clip. The last `pending_shards` shards are left unwritten (an unfinished extraction).
    """
    from ..cache import Row, create_cache

    rng = np.random.default_rng(seed)
    n, c, h, w = feature_shape
    signature = rng.standard_normal((num_classes, c)).astype(np.float32)  # [K, c]
    labels = []
    for i in range(n_clips):
        first = i % num_classes
        extra = {int(rng.integers(num_classes))} if multi_label and rng.random() < 0.5 else set()
        labels.append(tuple(sorted({first} | extra)))
    split = np.array(["train"] * n_clips, dtype=object)
    perm = rng.permutation(n_clips)
    split[perm[int(0.6 * n_clips) : int(0.8 * n_clips)]] = "val"
    split[perm[int(0.8 * n_clips) :]] = "test"
    clips = [Row(f"clip{i:05d}", labels[i], split[i]) for i in range(n_clips)]
    prov = {"backbone": {"name": "toy", "seed": seed, "signal": signal}, "dataset": "toy"}
    cache = create_cache(url, clips=clips, class_names=[f"class{k}" for k in range(num_classes)],
                         multi_label=multi_label, feature_shape=feature_shape, num_views=num_views,
                         provenance=prov, shard_size=shard_size)  # fmt: skip
    t_half, h_half, w_half = max(1, n // 2), max(1, h // 2), max(1, w // 2)
    for start, stop in cache.shards()[: len(cache.shards()) - pending_shards]:
        x = rng.standard_normal((stop - start, num_views, n, c, h, w)).astype(
            np.float32
        )  # [b, V, n, c, h, w]
        for b, i in enumerate(range(start, stop)):
            for k in labels[i]:
                t0 = (k % 2) * (n - t_half)
                y0, x0 = ((k // 2) % 2) * (h - h_half), ((k // 4) % 2) * (w - w_half)
                x[b, :, t0 : t0 + t_half, :, y0 : y0 + h_half, x0 : x0 + w_half] += (
                    signal * signature[k][:, None, None]
                )
        cache.write_shard(start, x[:, 0], x[:, 1:] if num_views > 1 else None, np.ones(stop - start, bool),
                          [""] * (stop - start))  # fmt: skip
    return cache
