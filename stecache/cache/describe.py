"""`stecache info`: a cache's provenance, counts per split and class, failures, checksums, size."""

from __future__ import annotations

import numpy as np

from ..config import canonical_json
from . import verify as V


def describe(self) -> str:  # self: a Cache
    """Human-readable summary: provenance, counts per split and class, failures, done/total, size."""
    done, err, labels = self.done, self.error, self._labels
    n_failed = int((err != "").sum())
    size = self.nbytes_on_disk()
    lines = [
        f"{'cache':<13} {self.url}",
        f"{'fingerprint':<13} {self.fingerprint}  (format {self.attrs['format_version']},"
        f" stecache {self.attrs['stecache_version']}, created {self.attrs['created']})",
    ]
    skip = {"class_names", "fingerprint", "created", "format_version", "stecache_version"}
    for k in sorted(set(self.attrs) - skip):
        v = self.attrs[k]
        if isinstance(v, dict) and v:  # one line per field: the backbone's provenance is long
            lines.append(k)
            lines += [f"  {sub:<22} {canonical_json(x)}" for sub, x in sorted(v.items())]
        else:
            lines.append(f"{k:<13} {canonical_json(v)}")
    lines.append(f"{'done':<13} {int(done.sum())}/{len(self)}  failed {n_failed}")
    lines.append(f"{'checksums':<13} {V.state_line(self)}")
    lines.append(f"{'on disk':<13} " + ("n/a (remote store)" if size is None else f"{size:,} bytes"))
    splits = sorted(set(self.split.tolist()))
    lines.append(
        f"{'per split':<13} "
        + "  ".join(
            f"{s}: {int((self.split == s).sum())} ({int(done[self.split == s].sum())} done)" for s in splits
        )
    )
    lines.append(f"{'class':<24}" + "".join(f"{s:>8}" for s in splits))
    for k, name in enumerate(self.class_names):
        counts = [int(labels[self.split == s, k].sum()) for s in splits]
        lines.append(f"{name[:23]:<24}" + "".join(f"{c:>8}" for c in counts))
    if "train" in splits:
        missing = np.flatnonzero(labels[self.split == "train"].sum(0) == 0)
        for k in missing[:5]:
            lines.append(f"{'warning':<13} class {self.class_names[k]!r} has no training clip")
        if len(missing) > 5:
            lines.append(f"{'warning':<13} ... and {len(missing) - 5} more classes have no training clip")
    partial = self.partial
    for i in np.flatnonzero(partial != "")[:20]:
        lines.append(f"{'partial':<13} row {i} {self.clip_id[i]}: {partial[i]}")
    for i in np.flatnonzero(err != "")[:20]:
        lines.append(f"{'failed':<13} row {i} {self.clip_id[i]}: {err[i]}")
    if n_failed > 20:
        lines.append(f"{'failed':<13} ... and {n_failed - 20} more")
    return "\n".join(lines)
