"""hf:<dir> video encoders against the transformers model's own forward, one tiny config per family.

For each family: (1) token order: with no encoder layers each output token depends on one input tube
only, so changing one tube (tubelet frames x patch) must change exactly that token of [n, c, h, w];
(2) parity: with layers, our tokens equal the model's last_hidden_state at the index the family's layout
gives (written out here per family) and our pooled vector equals what the model pools (checked through
the classification wrapper's logits where one exists), all <= 1e-6; (3) slow: a head trains end to end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf

from stecache.backbones import load
from stecache.errors import CheckpointMismatch

TOL = 1e-6
SMALL = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)


def _config(family: str, layers: int):
    """(config, bare class, classification class or None, native frames, tubelet, patch) at 32 px."""
    if family == "videomae":
        cfg = tf.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2,
                                num_hidden_layers=layers, **SMALL)  # fmt: skip
        return cfg, tf.VideoMAEModel, tf.VideoMAEForVideoClassification, 4, 2, 8
    if family == "vjepa2":
        cfg = tf.VJEPA2Config(crop_size=32, patch_size=8, frames_per_clip=4, tubelet_size=2, hidden_size=32,
                              num_attention_heads=2, num_hidden_layers=layers, mlp_ratio=2.0,
                              pred_hidden_size=16, pred_num_attention_heads=2, pred_num_hidden_layers=1,
                              num_pooler_layers=1)  # fmt: skip
        return cfg, tf.VJEPA2Model, tf.VJEPA2ForVideoClassification, 4, 2, 8
    if family == "timesformer":
        cfg = tf.TimesformerConfig(
            image_size=32, patch_size=8, num_frames=4, num_hidden_layers=layers, **SMALL
        )
        return cfg, tf.TimesformerModel, tf.TimesformerForVideoClassification, 4, 1, 8
    if family == "vivit":
        cfg = tf.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 8, 8], num_hidden_layers=layers,
                             **SMALL)  # fmt: skip
        return cfg, tf.VivitModel, tf.VivitForVideoClassification, 4, 2, 8
    cfg = tf.XCLIPVisionConfig(image_size=32, patch_size=8, num_frames=4, num_hidden_layers=layers,
                               mit_hidden_size=32, mit_intermediate_size=64, mit_num_hidden_layers=1,
                               mit_num_attention_heads=2, **SMALL)  # fmt: skip
    return cfg, tf.XCLIPVisionModel, None, 4, 1, 8


FAMILIES = ("videomae", "vjepa2", "timesformer", "vivit", "xclip")


def _perturb(model, seed=0):
    """Non-trivial random weights: norms near 1, non-zero biases (so a dropped bias/norm would show)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.named_parameters():
            if "norm" in k and k.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.ndim <= 1 or "token" in k or "embed" in k:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
    return model.eval()


def _save(family: str, tmp_path, layers: int, classifier: bool = False, seed: int = 0):
    cfg, bare, clf, *_ = _config(family, layers)
    if classifier:
        cfg.num_labels = 3
    model = _perturb((clf if classifier else bare)(cfg), seed)
    path = tmp_path / f"{family}-{layers}-{classifier}"
    model.save_pretrained(path)
    return model, path


def _clips(B=2, T=4, seed=1):
    return torch.randn(B, 3, T, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_token_order_one_tube_moves_one_token(tmp_path, family):
    _, path = _save(family, tmp_path, layers=0)
    bb = load(f"hf:{path}")
    _, _, _, T, tub, p = _config(family, 0)
    assert bb.grid == (T // tub, 4, 4) and bb.channels == 32 and bb.frames == T
    x = _clips()
    base = bb(x)
    for t, y, xx in [(0, 0, 0), (T - 1, 1, 3), (T // 2, 3, 2)]:
        x2 = x.clone()
        x2[1, :, t, y * p : (y + 1) * p, xx * p : (xx + 1) * p] += 3.0  # one pixel tube of clip 1
        moved = (bb(x2) - base).abs().amax(2) > 1e-5  # [B, n, h, w]
        expect = torch.zeros_like(moved)
        expect[1, t // tub, y, xx] = True
        assert torch.equal(moved, expect), (
            f"{family}: tube (t={t}, y={y}, x={xx}) moved {moved.nonzero().tolist()}"
        )


def _index(family: str, n: int, h: int, w: int) -> tuple[int, torch.Tensor]:
    """(tokens per clip row, idx[n, h, w]) into the model's last_hidden_state, written from the docs."""
    t, y, x = torch.meshgrid(torch.arange(n), torch.arange(h), torch.arange(w), indexing="ij")
    if family in ("videomae", "vjepa2"):
        return 0, t * h * w + y * w + x  # conv3d flatten order, no CLS
    if family == "vivit":
        return 1, 1 + t * h * w + y * w + x  # CLS first
    if family == "timesformer":
        return 1, 1 + (y * w + x) * n + t  # CLS first, then space-major, time-minor
    return 1, 1 + y * w + x  # xclip: row b*T + t of a per-frame output, CLS first


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_with_the_models_own_forward(tmp_path, family):
    has_clf = family != "xclip"
    model, path = _save(family, tmp_path, layers=2, classifier=has_clf, seed=3)
    bb = load(f"hf:{path}")
    n, h, w = bb.grid
    x = _clips(seed=4)
    tokens, pooled = bb.encode(x)
    v = x.transpose(1, 2)  # [B, T, 3, H, W]
    with torch.no_grad():
        if family == "vjepa2":
            out = model(pixel_values_videos=v)
            hidden = model.vjepa2(pixel_values_videos=v, skip_predictor=True).last_hidden_state
        elif family == "xclip":
            out = model(pixel_values=v.reshape(-1, 3, 32, 32))
            hidden = out.last_hidden_state.reshape(2, 4, *out.last_hidden_state.shape[1:])  # [B, T, 1+hw, c]
        else:
            out = model(pixel_values=v)
            hidden = getattr(model, model.base_model_prefix)(pixel_values=v).last_hidden_state
    _, idx = _index(family, n, h, w)
    if family == "xclip":
        expect = hidden[:, torch.arange(n)[:, None, None].expand(n, h, w), idx]  # [B, n, h, w, c]
    else:
        expect = hidden[:, idx]  # [B, n, h, w, c]
    assert (tokens - expect.permute(0, 1, 4, 2, 3)).abs().max() <= TOL
    if has_clf:  # pooled is exactly what the wrapper's classifier reads
        with torch.no_grad():
            assert (model.classifier(pooled.clone()) - out.logits).abs().max() <= TOL
    else:  # X-CLIP vision: the post-LN frame CLS, averaged over frames
        assert (pooled - out.pooler_output.reshape(2, 4, -1).mean(1)).abs().max() <= TOL
    prov = bb.provenance()
    assert prov["config"]["family"] == "hf" and len(prov["weights"]) == 64 and prov["frames"] == 4


def test_preprocessing_and_frames_come_from_the_folder(tmp_path):
    _, path = _save("videomae", tmp_path, layers=1)
    pp = {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
          "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}  # fmt: skip
    (path / "preprocessor_config.json").write_text(json.dumps(pp))
    bb = load(f"hf:{path}")
    pre = bb.preprocess
    assert (pre.short_side, pre.crop_size, pre.crop) == (36, 32, "center")
    assert np.allclose(pre.mean, 127.5) and np.allclose(pre.std, 63.75) and bb.sampling.clip_len == 4
    with pytest.raises(CheckpointMismatch, match="--frames 8 does not fit"):
        load(f"hf:{path}", frames=8)


def test_vjepa2_takes_any_even_frames(tmp_path):
    model, path = _save("vjepa2", tmp_path, layers=1)
    bb = load(f"hf:{path}", frames=8)
    assert bb.grid == (4, 4, 4)
    x = _clips(B=1, T=8)
    with torch.no_grad():
        ref = model(pixel_values_videos=x.transpose(1, 2), skip_predictor=True).last_hidden_state
    assert (bb(x) - ref.reshape(1, 4, 4, 4, 32).permute(0, 1, 4, 2, 3)).abs().max() <= TOL


def test_refusals(tmp_path):
    vit = tf.ViTModel(tf.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=1, **SMALL))
    vit.save_pretrained(tmp_path / "vit")
    with pytest.raises(CheckpointMismatch, match="model_type 'vit' is not a supported video encoder"):
        load(f"hf:{tmp_path / 'vit'}")
    with pytest.raises(CheckpointMismatch, match="not a directory"):
        load(f"hf:{tmp_path / 'absent'}")
    _, path = _save("vivit", tmp_path, layers=1)
    with pytest.raises(CheckpointMismatch, match="drop --checkpoint"):
        load(f"hf:{path}", checkpoint=path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(cfg | {"hidden_size": 48}))
    with pytest.raises(CheckpointMismatch, match="weights do not fit|size mismatch|mismatch"):
        load(f"hf:{path}")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from stecache.annotations import load_dataset_dir
    from stecache.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "d"
    synthesize(root, n_clips=21)  # 3 per class: every split sees every class
    return load_dataset_dir(root)


def train_end_to_end(name: str, data, tmp_path, checkpoint=None) -> dict:
    """extract (the backbone's own protocol) -> cache -> an STE head trained 2 epochs; metrics."""
    from stecache import train as T
    from stecache.cache import open_cache
    from stecache.extract import ExtractConfig, extract

    url = tmp_path / "c.zarr"
    s = extract(data, url, name, checkpoint=checkpoint, cfg=ExtractConfig(workers=0, progress=False))
    assert s["done"] == 21 and not s["failed"]
    cache = open_cache(url)
    cfg = T.TrainConfig(head="ste", depth=1, epochs=2, batch_size=8)
    m = T.train(cfg, str(url), runs_root=tmp_path / "runs",
                progress=False)  # fmt: skip
    assert m["epochs"] == 2 and m["test_clips"] == 7 and m["val_clips"] == 7
    assert 0 <= m["test"][m["main_metric"]] <= 1 and 0 <= m["val"][m["main_metric"]] <= 1
    assert len(list((tmp_path / "runs").glob("*/best.safetensors"))) == 1
    return {"metrics": m, "cache": cache}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_head_trains_end_to_end_on_synthetic_data(tiny_data, tmp_path, family):
    _, path = _save(family, tmp_path, layers=1, classifier=family != "xclip")
    out = train_end_to_end(f"hf:{path}", tiny_data, tmp_path)
    _, _, _, T, tub, _ = _config(family, 1)
    assert out["cache"].feature_shape == (T // tub, 32, 4, 4)
    assert out["cache"].attrs["backbone"]["frames"] == T


def test_full_xclip_model_uses_its_vision_tower(tmp_path):
    vision = _config("xclip", 1)[0].to_dict()
    text = dict(vocab_size=50, num_hidden_layers=1, **SMALL)
    mit = dict(mit_hidden_size=32, mit_intermediate_size=64)
    cfg = tf.XCLIPConfig(text_config=text, vision_config=vision, projection_dim=16, prompt_layers=1,
                         prompt_num_attention_heads=2, **mit)  # fmt: skip
    model = _perturb(tf.XCLIPModel(cfg), seed=5)
    model.save_pretrained(tmp_path / "xclip")
    bb = load(f"hf:{tmp_path / 'xclip'}")
    x = _clips(seed=6)
    with torch.no_grad():
        out = model.vision_model(pixel_values=x.transpose(1, 2).reshape(-1, 3, 32, 32))
    tokens, pooled = bb.encode(x)
    expect = out.last_hidden_state[:, 1:].reshape(2, 4, 4, 4, 32).permute(0, 1, 4, 2, 3)
    assert (tokens - expect).abs().max() <= TOL
    assert (pooled - out.pooler_output.reshape(2, 4, 32).mean(1)).abs().max() <= TOL
