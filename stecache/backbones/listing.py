"""The table `stecache backbones` prints: every entry, its input protocol and its feature shape.

Named entries are described from their configs (no weights built); the open families (`image:`, `hf:`,
`timm:`) by the rule that derives their protocol from the folder / model they name.
"""

from __future__ import annotations

from stecache.backbones import uniformer, videomae

OPEN = [
    ("image:<dir>", "T=8 (--frames), uniform; size + mean/std from preprocessor_config.json",
     "[T, c, H/p, W/p]", "transformers image encoder per frame (ViT, DINOv2, CLIP, SigLIP, ...)"),
    ("hf:<dir>", "frames, size, mean/std from config.json + (video_)preprocessor_config.json; uniform",
     "[T/tubelet, c, H/p, W/p]", "transformers VideoMAE, V-JEPA 2, TimeSformer, ViViT, X-CLIP (vision)"),
    ("timm:<model>", "T=8 (--frames), uniform; size, crop_pct, mean/std from timm's pretrained_cfg",
     "[T, c, h, w]", "timm image model per frame, weights from --checkpoint (pip install stecache[timm])"),
]  # fmt: skip


def _protocol(cfg: dict) -> str:
    s, p = cfg["sampling"], cfg["preprocess"]
    rule = f"dense x{s['frame_interval']}" if s["rule"] == "dense" else s["rule"]
    mean = "ImageNet" if p["mean"][0] == 123.675 else f"mean {p['mean'][0]:g}/std {p['std'][0]:g}"
    views = "x".join(map(str, cfg["test_views"]))
    size = f"short side {p['short_side']}, {p['crop_size']}² crop"
    return f"T={cfg['frames']} {rule}; {size}; {mean}; test {views}"


def _shape(cfg: dict) -> str:
    if cfg["family"] == "uniformerv2":
        n = cfg["frames"] // 2 if cfg["temporal_downsample"] else cfg["frames"]
    else:
        n = cfg["frames"] // cfg["tubelet"]
    s = cfg["size"] // cfg["patch"]
    return f"[{n}, {cfg['width']}, {s}, {s}]"


def rows() -> list[tuple[str, str, str, str]]:
    """(name, input protocol, [n, c, h, w], what it is) for every entry."""
    named = [
        ("videomaev2", videomae.BASE, "ViT (S/B/L/H/g from the checkpoint's shapes), any even --frames"),
        ("videomaev2-tiny", videomae.TINY, "tiny random VideoMAEv2 for tests and demos"),
        (
            "uniformerv2",
            uniformer.BASE,
            "B/16, L/14, L/14@336; LMHRA, down-sampling, global blocks from the checkpoint; any --frames",
        ),  # fmt: skip
        ("uniformerv2-tiny", uniformer.TINY, "tiny random UniFormerV2 for tests and demos"),
    ]
    return [(n, _protocol(c), _shape(c), what) for n, c, what in named] + OPEN


def table() -> str:
    """The rows as aligned text."""
    head = ("backbone", "input protocol (native)", "[n, c, h, w]", "variants")
    rs = [head, *rows()]
    widths = [max(len(r[i]) for r in rs) for i in range(3)]
    lines = ("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rs)
    return "\n".join(line.rstrip() for line in lines)
