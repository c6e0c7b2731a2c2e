"""`stecache report --html`: ONE self-contained HTML file (no external files, no scripts): every table,
every figure embedded as base64 PNG, and per run its configuration, per-class metrics and confusion
matrix (read from the run folder's metrics.json when it is still there)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from .tables import Table

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
details{margin:.3em 0}summary{cursor:pointer}.note{color:#555;font-size:13px}.deg{color:#b00}"""


def _esc(x) -> str:
    return html.escape(str(x))


def table_html(t: Table) -> str:
    best = t.best()
    head = "".join(f"<th>{_esc(c)}</th>" for c in t.cols)
    body = []
    for i, (name, row) in enumerate(zip(t.rows, t.cells, strict=True)):
        tds = []
        for j, c in enumerate(row):
            text = "—" if c is None else _esc(c.fmt())
            text = f"<b>{text}</b>" if best.get(j) == i else text
            cls = "num deg" if c is not None and c.degenerate else "num"
            tds.append(f'<td class="{cls}">{text}</td>')
        body.append(f"<tr><th>{_esc(name)}</th>{''.join(tds)}</tr>")
    used = f'<p class="note">Uses {t.used} runs.</p>' if t.used else ""
    note = f'<p class="note">{_esc(t.note)}</p>' if t.note else ""
    return f"<h3>{_esc(t.title)}</h3>{used}<table><tr><th></th>{head}</tr>{''.join(body)}</table>{note}"


def image_html(png: Path, alt: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{data}"></figure>'


def _matrix(rows: list[list], names: list[str]) -> str:
    head = "".join(f"<th>{_esc(n)}</th>" for n in names)
    body = "".join(
        f"<tr><th>{_esc(n)}</th>" + "".join(f'<td class="num">{v}</td>' for v in r) + "</tr>"
        for n, r in zip(names, rows, strict=True)
    )
    return f"<table><tr><th>true \\ predicted</th>{head}</tr>{body}</table>"


def run_html(rec: dict) -> str:
    """One run: config, its scalar metrics, per-class metrics and the confusion matrix (if stored)."""
    run_dir = Path(str(rec.get("run_dir", "")))
    flag = f' <span class="deg">degenerate: {_esc(rec["degenerate"])}</span>' if rec.get("degenerate") else ""
    parts = [f"<details><summary>{_esc(rec['run'])} (seed {rec['seed']}){flag}</summary>"]
    parts.append(f"<pre>{_esc(json.dumps(rec.get('config', {}), indent=1, default=str))}</pre>")
    metrics_file = run_dir / "metrics.json"
    m = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    cfg_file = run_dir / "config.json"
    names = (
        json.loads(cfg_file.read_text()).get("cache_attrs", {}).get("class_names", [])
        if cfg_file.is_file()
        else []
    )
    split = "test_tuned" if "test_tuned" in m else "test"
    pc = (m.get(split) or {}).get("per_class", {})
    if pc:
        keys = [k for k in ("precision", "recall", "f1", "ap", "acc", "support") if k in pc]
        K = len(pc[keys[0]])
        names = names if len(names) == K else [str(k) for k in range(K)]
        thr = f" at threshold {m[split]['threshold']:.2f}" if "threshold" in m.get(split, {}) else ""
        rows = "".join(
            f"<tr><th>{_esc(names[k])}</th>"
            + "".join(f'<td class="num">{_fmt(pc[key][k], key)}</td>' for key in keys)
            + "</tr>"
            for k in range(K)
        )
        head = "".join(f"<th>{k}</th>" for k in keys)
        parts.append(f"<p>per-class test metrics{thr}</p><table><tr><th>class</th>{head}</tr>{rows}</table>")
        if "confusion" in m.get("test", {}):
            parts.append("<p>test confusion matrix</p>" + _matrix(m["test"]["confusion"], names))
    elif not metrics_file.is_file():
        parts.append(f'<p class="note">{_esc(metrics_file)} not found: per-class metrics unavailable</p>')
    parts.append("</details>")
    return "".join(parts)


def _code(text: str) -> str:
    """Escaped text with `x` as <code>x</code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text))


def _fmt(v, key: str) -> str:
    if v is None:
        return "—"
    return str(int(v)) if key == "support" else f"{100 * float(v):.1f}"


def write_html(path: Path, title: str, intro: str, sections: list[tuple[Table, list[Path]]],
               results: list[dict], extra_images: list[Path] = ()) -> Path:  # fmt: skip
    """The report as one HTML file: intro, tables with their figures, Fig. 1 maps, then every run."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1><p>{_code(intro)}</p>"]  # fmt: skip
    for t, pngs in sections:
        parts.append(table_html(t))
        parts += [image_html(p, t.title) for p in pngs if p.suffix == ".png" and p.exists()]
    if extra_images:
        parts.append("<h2>Fig. 1: correlation between positions</h2>")
        parts += [image_html(p, p.stem) for p in extra_images]
    parts.append(f"<h2>Runs ({len(results)})</h2>")
    parts += [run_html(r) for r in results]
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts))
    return Path(path)
