"""The embedded synthetic action dataset: real H.264 mp4 clips + mmaction2 lists, deterministic from a seed.

Seven classes, each needing what the STE paper's heads are about (data/README.md has the full table):
`others` (background: distractors and noise only), `flash` (a large bright square for 2-5 frames only),
`appear` / `vanish` and `left_to_right` / `right_to_left` (each pair differs only in temporal order: the
second class is the exact time reversal of the first's event), `local` (a small green square). Events sit
inside the central square of the frame so a centre crop keeps them. Clips vary in size (24-160 px, some
non-square) and length (8-64 frames); classes are imbalanced. Run: `stecache synth OUT [--multi-label]`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .errors import StecacheError

CLASSES = ("others", "flash", "appear", "vanish", "left_to_right", "right_to_left", "local")
WEIGHTS = (0.28, 0.08, 0.13, 0.13, 0.11, 0.11, 0.16)  # long-tailed like the paper's datasets
REVERSED = {"vanish": "appear", "right_to_left": "left_to_right"}  # class -> base class it time-reverses
PALETTE = ((235, 40, 40), (245, 225, 40), (235, 60, 225), (40, 220, 235), (250, 140, 30))
FLASH_COLOR = (250, 250, 250)  # only the fleeting `flash` is white
LOCAL_COLOR = (40, 235, 60)  # only the `local` class is green
FPS = 30
SPLITS = ("train", "val", "test")
FLASH_FRAMES = (2, 5)  # inclusive range of the fleeting event's duration


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def _event(name: str, T: int, H: int, W: int, rng: np.random.Generator) -> dict:
    """Parameters of one event, drawn in the base (not time-reversed) form of its class."""
    base = REVERSED.get(name, name)
    s = min(H, W)
    cy0, cx0 = (H - s) // 2, (W - s) // 2  # central square: what a centre crop keeps
    rel = {"flash": (0.5, 0.8), "appear": (0.3, 0.45), "left_to_right": (0.25, 0.35), "local": (0.15, 0.22)}
    size = max(4, int(round(s * rng.uniform(*rel[base]))))
    color = {"local": LOCAL_COLOR, "flash": FLASH_COLOR}.get(base) or PALETTE[rng.integers(len(PALETTE))]
    y = cy0 + int(rng.integers(0, s - size + 1))
    x = cx0 + int(rng.integers(0, s - size + 1))
    if base == "flash":
        d = int(rng.integers(FLASH_FRAMES[0], FLASH_FRAMES[1] + 1))
        start, end = (t0 := int(rng.integers(0, T - d + 1))), t0 + d
        xs = (x, x)
    elif base == "appear":
        start, end, xs = int(rng.integers(T // 4, 3 * T // 4 + 1)), T, (x, x)
    elif base == "left_to_right":
        start, end = int(rng.integers(0, T // 8 + 1)), T - int(rng.integers(0, T // 8 + 1))
        xs = (cx0, cx0 + s - size)
    else:  # local: present the whole clip
        start, end, xs = 0, T, (x, x)
    return {"class": name, "reversed": name in REVERSED, "color": list(map(int, color)), "size": size,
            "y": y, "x": list(xs), "start": start, "end": end}  # fmt: skip


def event_box(ev: dict, t: int, T: int) -> tuple[int, int, int] | None:
    """(y, x, size) of an event's square at frame t, or None when it is not visible."""
    if ev["reversed"]:
        t = T - 1 - t  # the reversed class is the exact time reversal of its base class
    if not ev["start"] <= t < ev["end"]:
        return None
    x0, x1 = ev["x"]
    frac = (t - ev["start"]) / max(ev["end"] - 1 - ev["start"], 1)
    return ev["y"], int(round(x0 + (x1 - x0) * frac)), ev["size"]


def visible_frames(ev: dict, T: int) -> list[int]:
    """Frame indices where the event is visible."""
    return [t for t in range(T) if event_box(ev, t, T) is not None]


def clip_spec(labels: list[int], rng: np.random.Generator) -> dict:
    """Everything needed to render one clip: size, length, background, distractors, events, noise seed."""
    long_side = float(np.exp(rng.uniform(np.log(24), np.log(160))))  # log-uniform 24-160 px
    short_side = max(24.0, 0.75 * long_side)
    shape = int(rng.choice(3, p=[0.5, 0.25, 0.25]))  # square, landscape 4:3, portrait 3:4
    H, W = [(long_side, long_side), (short_side, long_side), (long_side, short_side)][shape]
    H, W = _even(H), _even(W)
    T = int(rng.integers(8, 65))
    distractors = []
    for _ in range(int(rng.integers(0, 3))):
        size = max(3, int(round(min(H, W) * rng.uniform(0.15, 0.3))))
        grey = int(rng.integers(80, 150))
        distractors.append({"size": size, "color": [int(grey + rng.integers(-15, 16)) for _ in range(3)],
                            "y": int(rng.integers(0, H - size + 1)), "x": int(rng.integers(0, W - size + 1)),
                            "vy": float(rng.uniform(-1, 1)), "vx": float(rng.uniform(-1, 1))})  # fmt: skip
    names = [CLASSES[k] for k in labels if CLASSES[k] != "others"]
    names.sort(key=lambda n: (n == "flash", n == "local"))  # draw order: flash and local on top
    events = [_event(n, T, H, W, rng) for n in names]
    background = [int(v) for v in rng.integers(15, 70, size=3)]
    return {"frames": T, "height": H, "width": W, "background": background,
            "gradient": [float(v) for v in rng.uniform(-25, 25, size=2)], "noise": 6.0,
            "noise_seed": int(rng.integers(2**31)), "distractors": distractors, "events": events}  # fmt: skip


def render_clip(spec: dict) -> np.ndarray:
    """The clip's frames as uint8 RGB [T, H, W, 3], a pure function of the spec."""
    T, H, W = spec["frames"], spec["height"], spec["width"]
    gy, gx = spec["gradient"]
    ramp = gy * np.linspace(-1, 1, H)[:, None] + gx * np.linspace(-1, 1, W)[None, :]  # [H, W]
    bg = np.asarray(spec["background"], np.float32) + ramp[..., None].astype(np.float32)  # [H, W, 3]
    video = np.broadcast_to(bg, (T, H, W, 3)).copy()
    for t in range(T):
        for d in spec["distractors"]:
            y = int(np.clip(round(d["y"] + d["vy"] * t), 0, H - d["size"]))
            x = int(np.clip(round(d["x"] + d["vx"] * t), 0, W - d["size"]))
            video[t, y : y + d["size"], x : x + d["size"]] = d["color"]
        for ev in spec["events"]:
            box = event_box(ev, t, T)
            if box is not None:
                y, x, s = box
                video[t, y : y + s, x : x + s] = ev["color"]
    noise = np.random.default_rng(spec["noise_seed"]).standard_normal(video.shape, dtype=np.float32)
    video += spec["noise"] * noise
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = FPS) -> None:
    """Encode uint8 RGB frames [T, H, W, 3] (H, W even) as H.264 yuv420p mp4, deterministically."""
    import av

    T, H, W, _ = frames.shape
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "16", "threads": "1"}  # threads=1: same bytes
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _draw_labels(n_clips: int, multi_label: bool, rng: np.random.Generator) -> list[list[int]]:
    """Label sets: every class three times first (so each split sees each class), then weighted draws."""
    K = len(CLASSES)
    primary = [k % K for k in range(min(n_clips, 3 * K))]
    primary += rng.choice(K, size=n_clips - len(primary), p=WEIGHTS).tolist()
    rng.shuffle(primary)
    out = []
    for k in primary:
        labels = [int(k)]
        if multi_label and k != 0 and rng.random() < 0.5:  # a second, different event
            w = np.array(WEIGHTS[1:]) * (np.arange(1, K) != k)
            labels.append(int(rng.choice(np.arange(1, K), p=w / w.sum())))
        out.append(labels)
    return out


def _assign_splits(primary: list[int]) -> list[str]:
    """Stratified 60/20/20 by primary class (every 5th clip of a class to val, the next to test)."""
    splits = ["train"] * len(primary)
    for k in sorted(set(primary)):
        idx = [i for i, p in enumerate(primary) if p == k]
        if len(idx) >= 3:  # then train, val and test each get at least one
            for j, i in enumerate(idx):
                splits[i] = {0: "val", 1: "test"}.get(j % 5, "train")
    return splits


def synthesize(
    out: str | Path, n_clips: int = 300, seed: int = 0, multi_label: bool = False, force: bool = False
) -> str:
    """Write the synthetic dataset to `out` (see module docstring); returns a one-line summary.

    A folder that already holds this very dataset is left as it is; any other non-empty folder is refused
    unless `force`, which replaces the dataset's files (never anything else in the folder).
    """
    from tqdm import tqdm

    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        try:
            old = json.loads((out / "dataset.json").read_text())
        except (OSError, ValueError):
            old = {}
        same = {k: old.get(k) for k in ("name", "seed", "n_clips", "multi_label")}
        if same == {"name": "stecache-synth", "seed": seed, "n_clips": n_clips, "multi_label": multi_label}:
            return f"{out} already holds this synthetic dataset (seed {seed}, {n_clips} clips); left as it is"
        if not force:
            raise StecacheError(
                f"{out} is not empty and does not hold this synthetic dataset; "
                "choose an empty folder or pass --force to replace the dataset files"
            )
        for name in ("videos", *(f"{s}.txt" for s in SPLITS), "classes.txt", "clips.jsonl", "dataset.json"):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    label_sets = _draw_labels(n_clips, multi_label, rng)
    splits = _assign_splits([ls[0] for ls in label_sets])
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    records = []
    for i in tqdm(range(n_clips), desc="synth", disable=None):
        labels = sorted(label_sets[i])
        spec = clip_spec(labels, np.random.default_rng([seed, i]))
        path = f"videos/clip_{i:05d}.mp4"
        write_mp4(out / path, render_clip(spec))
        lines[splits[i]].append(f"{path} {' '.join(map(str, labels))}\n")
        records.append(json.dumps({"path": path, "split": splits[i], "labels": labels, **spec}) + "\n")
    for s in SPLITS:
        (out / f"{s}.txt").write_text("".join(lines[s]))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    (out / "clips.jsonl").write_text("".join(records))
    counts = {s: [sum(CLASSES.index(c) in _labels(ln) for ln in lines[s]) for c in CLASSES] for s in SPLITS}
    meta = {"name": "stecache-synth", "seed": seed, "n_clips": n_clips, "multi_label": multi_label,
            "classes": list(CLASSES), "splits": {s: f"{s}.txt" for s in SPLITS}, "fps": FPS,
            "class_counts": counts}  # fmt: skip
    (out / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    sizes = ", ".join(f"{s} {len(lines[s])}" for s in SPLITS)
    kind = "multi-label" if multi_label else "single-label"
    return f"wrote {n_clips} clips ({sizes}; {len(CLASSES)} classes, {kind}) to {out}"


def _labels(line: str) -> list[int]:
    return [int(t) for t in line.split()[1:]]
