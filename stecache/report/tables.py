"""Tables from `results.jsonl` only: the paper's Tables I–III, Table I+ (probes) and a table of ANY grid.

Named views pick per cell (cache × head × depth) the setting with the best mean val selection metric
(mAP multi-label, Acc@1 single-label) and report its test metrics. `grid_tables` shows every configuration
in the results (rows = the head, depth and every config field that varies; columns = metrics, one table
per cache), so nothing is left out. Every cell is mean ± sample std over seeds; the best cell of a column
is bold only when its mean − std exceeds every other cell's mean + std; † marks degenerate runs.
Multi-label headline: macro-F1 at the val-tuned threshold, with F1 at 0.5 and mAP beside it.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import canonical_json
from ..errors import ResultsError
from ..metrics import selection_score

# (label, (record split, metric key)) columns; values are fractions, shown as percentages like the paper.
# Multi-label: F1 at the val-tuned threshold leads (TinyVIRAT's participants chose their own threshold).
MULTI_LABEL_METRICS = (
    ("F1", ("test_tuned", "macro_f1")),
    ("F1@0.5", ("test", "macro_f1")),
    ("mAP", ("test", "mAP")),
    ("recall", ("test_tuned", "macro_recall")),
    ("precision", ("test_tuned", "macro_precision")),
)
SINGLE_LABEL_METRICS = (
    ("Acc@1", ("test", "acc1")),
    ("Acc@5", ("test", "acc5")),
    ("mean class acc", ("test", "mean_class_acc")),
)
MULTI_HEADLINE = "F1 at the val-tuned threshold"
# each row: (label, [(head, depth) alternatives, first present wins]); depth None = any
TABLE_I_ROWS = (("meanFC", [("meanfc", None)]), ("Tr_head d1", [("tr", 1)]), ("STE_head d1", [("ste", 1)]))
TABLE_II_ROWS = (
    ("meanFC", [("meanfc", None)]),
    ("patch_base_classifier", [("patch", None), ("ste", 0)]),
    ("STEb+meanFC", [("stemean", 1)]),
    ("STEb+patch_base_classifier", [("ste", 1)]),
)
TABLE_III_ROWS = tuple((f"depth {d}", [("ste", d)]) for d in range(5))
TABLE_I_PLUS_ROWS = TABLE_I_ROWS + (
    ("linear probe", [("linear", None)]),
    ("attentive d1", [("attentive", 1)]),
    ("V-JEPA 2 attentive d4", [("vjepa2", 4)]),
    ("EP", [("ep", None)]),
)
# config keys that do not make a different hyperparameter setting
NOT_HYPERPARAMS = {"seed", "head", "depth", "out", "run", "name", "tag", "ram_limit", "data_seed"}


@dataclass(frozen=True)
class Cell:
    """mean ± std over seeds of one metric of one selected setting; `degenerate` of its n runs."""

    mean: float
    std: float
    n: int
    degenerate: int = 0

    def fmt(self) -> str:
        """The cell in %, e.g. 51.00 ± 1.00; a single seed has no spread to show; † k/n degenerate runs."""
        text = f"{100 * self.mean:.2f} ± {100 * self.std:.2f}" if self.n > 1 else f"{100 * self.mean:.2f}"
        return text + (f" †{self.degenerate}/{self.n}" if self.degenerate else "")


# ---- reading results -----------------------------------------------------------------------------------


def load_results(path: str | Path) -> list[dict]:
    """All run records of a results.jsonl, in file order; the message names a bad line."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path}: no such results file (run `stecache ablate` first)")
    out = []
    text = path.read_bytes().decode("utf-8", errors="replace")  # binary garbage: "not JSON" on its line
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and not text.endswith("\n"):  # a write cut short: the next run rewrites it
                warnings.warn(f"{path}:{i}: torn last line skipped (an interrupted write)", stacklevel=2)
                continue
            raise ResultsError(f"{path}:{i}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ResultsError(f"{path}:{i}: not a run record (a JSON object)")
        for key in ("head", "seed", "val", "test"):
            if key not in rec:
                raise ResultsError(f"{path}:{i}: run record has no {key!r}")
        out.append(rec)
    return out


def cache_key(rec: dict) -> str:
    return rec.get("cache_fingerprint") or rec.get("cache", "?")


def backbone_of(rec: dict) -> str:
    return rec.get("backbone") or "?"


def dataset_of(rec: dict) -> str:
    """The record's dataset name; else the cache name without the backbone ("tv-videomaev2.zarr" -> "tv")."""
    if rec.get("dataset"):
        name = rec["dataset"]
        return name if isinstance(name, str) else str(name.get("name", name))
    path = Path(str(rec.get("cache", "?")).rstrip("/"))
    bb = backbone_of(rec)
    rest = path.stem.replace(bb, "").strip("-_. ") if bb != "?" else path.stem
    return rest or path.parent.name


def _hyperparams(rec: dict) -> str:
    cfg = rec.get("config", {})
    return canonical_json({k: v for k, v in cfg.items() if k not in NOT_HYPERPARAMS})


def _depth(rec: dict) -> int | None:
    d = rec.get("depth", rec.get("config", {}).get("depth"))
    return None if d is None else int(d)


def _stats(values: list[float], degenerate: int = 0) -> Cell:
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0  # sample std over seeds
    return Cell(float(v.mean()), std, len(v), degenerate)


def select(runs: list[dict], alternatives: list[tuple[str, int | None]]) -> tuple[list[dict], str]:
    """The seeds of the best setting (by mean val main metric) of the first (head, depth) present.

    Returns (runs of that setting by seed, "" or the chosen values of the keys that differ, e.g. "lr=0.01").
    """
    for head, depth in alternatives:
        match = [r for r in runs if r["head"] == head and (depth is None or _depth(r) == depth)]
        if match:
            break
    else:
        return [], ""
    groups: dict[str, dict[int, dict]] = {}
    for r in match:  # a re-run of the same seed replaces the earlier record
        groups.setdefault(_hyperparams(r), {})[int(r["seed"])] = r
    multi = bool(match[0].get("multi_label", False))
    best = max(groups.values(), key=lambda g: np.mean([selection_score(r["val"], multi) for r in g.values()]))
    chosen = next(iter(best.values())).get("config", {})
    cfgs = [next(iter(g.values())).get("config", {}) for g in groups.values()]
    differ = sorted(
        k for k in chosen if k not in NOT_HYPERPARAMS and len({canonical_json(c.get(k)) for c in cfgs}) > 1
    )
    choice = ", ".join(f"{k}={chosen[k]}" for k in differ)
    return [best[s] for s in sorted(best)], (f"{choice} (of {len(groups)} settings)" if choice else "")


def _value(rec: dict, where: tuple[str, str]) -> float | None:
    v = (rec.get(where[0]) or {}).get(where[1])
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def _cell(runs: list[dict], where: tuple[str, str]) -> Cell | None:
    """mean ± std of metric `where` = (split, key) over the runs that have it; † counts degenerate runs."""
    have = [r for r in runs if _value(r, where) is not None]
    return (
        _stats([_value(r, where) for r in have], sum(bool(r.get("degenerate")) for r in have))
        if have
        else None
    )


def headline(multi: bool) -> tuple[str, tuple[str, str]]:
    """(label, (split, key)) of a cache's headline metric: F1 at the val-tuned threshold, or Acc@1."""
    return (MULTI_LABEL_METRICS if multi else SINGLE_LABEL_METRICS)[0]


# ---- tables ---------------------------------------------------------------------------------------------


@dataclass
class Table:
    """A titled grid of cells; `best[col]` = row index of the significantly best cell, or absent."""

    title: str
    rows: list[str]
    cols: list[str]
    cells: list[list[Cell | None]]
    note: str = ""
    used: int = 0  # run records the table's cells average over

    def best(self) -> dict[int, int]:
        """Per column the row whose mean − std exceeds every other row's mean + std (≥ 2 seeds each)."""
        out = {}
        for j in range(len(self.cols)):
            col = [(i, row[j]) for i, row in enumerate(self.cells) if row[j] is not None]
            if len(col) < 2 or min(c.n for _, c in col) < 2:  # no spread known, no claim
                continue
            i_best, top = max(col, key=lambda t: t[1].mean)
            if all(top.mean - top.std > c.mean + c.std for i, c in col if i != i_best):
                out[j] = i_best
        return out

    def markdown(self) -> str:
        best = self.best()
        lines = [f"| | {' | '.join(self.cols)} |", "|---" * (len(self.cols) + 1) + "|"]
        for i, (name, row) in enumerate(zip(self.rows, self.cells, strict=True)):
            cells = ["—" if c is None else c.fmt() for c in row]
            cells = [f"**{c}**" if best.get(j) == i else c for j, c in enumerate(cells)]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        head = f"### {self.title}\n\nUses {self.used} runs.\n\n" if self.used else f"### {self.title}\n\n"
        return head + "\n".join(lines) + (f"\n\n{self.note}" if self.note else "")

    def degenerate(self) -> int:
        """Degenerate runs among the table's cells."""
        return sum(c.degenerate for row in self.cells for c in row if c is not None)

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "column", "mean", "std", "n_seeds", "degenerate_runs"])
            for name, row in zip(self.rows, self.cells, strict=True):
                for col, c in zip(self.cols, row, strict=True):
                    if c is not None:
                        w.writerow([name, col, f"{c.mean:.6f}", f"{c.std:.6f}", c.n, c.degenerate])


def _by_cache(results: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(cache_key(r), []).append(r)
    return out


def _metrics_of(runs: list[dict]) -> tuple:
    return MULTI_LABEL_METRICS if runs[0].get("multi_label") else SINGLE_LABEL_METRICS


def table_i(
    results: list[dict], spec=TABLE_I_ROWS, title="Table I: classifier heads × backbones"
) -> Table | None:
    """Heads of `spec` per backbone × datasets (first-seen order), the headline metric of each dataset."""
    caches = _by_cache(results)
    backbones = list(dict.fromkeys(backbone_of(r[0]) for r in caches.values()))  # in order of appearance
    datasets = list(dict.fromkeys(dataset_of(r[0]) for r in caches.values()))
    rows, cells, notes, used = [], [], [], 0
    for bb in backbones:
        for label, alts in spec:
            row = []
            for ds in datasets:
                runs = [
                    r for rs in caches.values() for r in rs if (backbone_of(r), dataset_of(r)) == (bb, ds)
                ]
                sel, choice = select(runs, alts) if runs else ([], "")
                row.append(_cell(sel, headline(bool(sel[0].get("multi_label")))[1]) if sel else None)
                used += len(sel)
                if choice:
                    notes.append(f"{bb} + {label} on {ds}: {choice}")
            rows.append(f"{bb} + {label}")
            cells.append(row)
    if sum(any(c is not None for c in row) for row in cells) < 2:
        return None
    cols = [f"{ds} ({'F1' if _is_multi(results, ds) else 'Acc@1'})" for ds in datasets]
    note = _note(notes)
    if any(_is_multi(results, ds) for ds in datasets):
        note = f"F1 = macro-F1 at the val-tuned threshold. {note}".strip()
    return Table(title, rows, cols, cells, note, used)


def table_i_plus(results: list[dict]) -> Table | None:
    """Table I+: Table I's heads beside today's frozen-encoder probes (linear, attentive, V-JEPA 2, EP)."""
    probes = {h for _, alts in TABLE_I_PLUS_ROWS[3:] for h, _ in alts}
    if not any(r["head"] in probes for r in results):
        return None
    return table_i(
        results, TABLE_I_PLUS_ROWS, "Table I+: frozen-encoder probes beside meanFC, Tr_head, STE_head"
    )


def _note(notes: list[str]) -> str:
    return "Selected on val: " + "; ".join(notes) + "." if notes else ""


def _is_multi(results: list[dict], dataset: str) -> bool:
    return any(r.get("multi_label") for r in results if dataset_of(r) == dataset)


def _table_on_cache(title: str, runs: list[dict], spec) -> Table | None:
    metrics = _metrics_of(runs)
    rows, cells, notes, used = [], [], [], 0
    for label, alts in spec:
        sel, choice = select(runs, alts)
        rows.append(label)
        cells.append([_cell(sel, key) if sel else None for _, key in metrics])
        used += len(sel)
        if choice:
            notes.append(f"{label}: {choice}")
    if sum(any(c is not None for c in row) for row in cells) < 3:  # not this table's runs (e.g. Table I's)
        return None
    return Table(title, rows, [m for m, _ in metrics], cells, _note(notes), used)


def tables(results: list[dict]) -> list[Table]:
    """Named views: Table I (and I+ when probe runs exist) over all caches; II and III per cache."""
    out = [t for t in [table_i(results), table_i_plus(results)] if t is not None]
    for runs in _by_cache(results).values():
        where = f"{backbone_of(runs[0])} on {dataset_of(runs[0])}"
        for name, spec in (("Table II: STEb and patch_base_classifier", TABLE_II_ROWS),
                           ("Table III: STE_head depth", TABLE_III_ROWS)):  # fmt: skip
            t = _table_on_cache(f"{name} ({where})", runs, spec)
            if t is not None:
                out.append(t)
    return out


# ---- a table of any grid -------------------------------------------------------------------------------


def _config_of(rec: dict) -> dict:
    """What makes a run's configuration: head, depth and every config field but the seed."""
    cfg = {k: v for k, v in rec.get("config", {}).items() if k not in NOT_HYPERPARAMS}
    return {"head": rec["head"], "depth": _depth(rec)} | cfg


def cache_label(rec: dict) -> str:
    return f"{backbone_of(rec)} on {dataset_of(rec)}"


def grid_tables(results: list[dict]) -> list[Table]:
    """One table per cache: a row per configuration in the results (labelled by the head, depth and the
    fields that VARY across the results), every metric column, mean ± std over seeds. Every record lands
    in exactly one cell row; a re-run of the same configuration and seed replaces the earlier record."""
    configs = [_config_of(r) for r in results]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    varying = [k for k in keys if k not in ("head", "depth")
               and len({canonical_json(c.get(k)) for c in configs}) > 1]  # fmt: skip
    out = []
    for runs in _by_cache(results).values():
        metrics = _metrics_of(runs)
        rows: dict[str, dict[int, dict]] = {}
        for r in runs:
            c = _config_of(r)
            label = " ".join([c["head"], f"d{c['depth']}"] + [f"{k}={_short(c.get(k))}" for k in varying])
            rows.setdefault(label, {})[int(r["seed"])] = r
        labels = sorted(rows, key=lambda s: (s.split()[0], s))
        cells = [[_cell(list(rows[lab].values()), key) for _, key in metrics] for lab in labels]
        used = sum(len(v) for v in rows.values())
        seeds = sorted({int(r["seed"]) for r in runs})
        note = (f"{len(labels)} configurations × seeds {seeds}; rows differ in head, depth"
                + (f" and {', '.join(varying)}" if varying else "") + "; every configuration in the results "
                f"is a row ({len(runs) - used} re-runs of a configuration and seed replaced).")  # fmt: skip
        title = f"All configurations ({cache_label(runs[0])})"
        out.append(Table(title, labels, [m for m, _ in metrics], cells, note, used))
    return out


def _short(v) -> str:
    return canonical_json(v) if isinstance(v, (dict, list)) else str(v)
