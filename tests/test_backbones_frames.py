"""Backbones at any frame count, architecture read from the checkpoint, and 16-frame official goldens.

UniFormerV2 and VideoMAEv2 load with `frames=T`: UniFormerV2's weights do not depend on T (the temporal
convs and t_size follow the input), VideoMAEv2's sinusoid table is built for T. The UniFormerV2 variant
(local MHRA single/double, temporal down-sampling, global blocks, width/depth/size) and the VideoMAEv2
size are read from the checkpoint with no flag, checked against the reference forwards in
test_backbones.py and against outputs of the unmodified official code (tests/golden/).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_backbones import (
    TOL,
    clips_for,
    golden,
    ref_uniformer,
    ref_videomae,
    sinusoid_table,
    to_fmap,
    to_official,
    uniformer_ckpt,
    videomae_ckpt,
)

from stecache.backbones import load, uniformer, videomae
from stecache.errors import CheckpointMismatch

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* has RANDOM weights")

GOLDEN_TOL = 1e-5  # the bar for parity with the official code (fp32)

# The 16-frame goldens (keys uniformer_f16_*, uniformer_lmhra_td_g8_f16_*) were made like the 8-frame ones
# (see test_backbones.py): OpenGVLab/UniFormerV2@722a434 slowfast/models/uniformerv2_model.py unmodified
# (sha256 34641cd9...59bdb), only `timm.models.layers.DropPath` (identity) and `slowfast.utils.logging`
# stubbed, `VisionTransformer(t_size=16, ...)` in eval mode loading to_official(uniformer_ckpt(cfg, seed))
# with strict=True, one clip clips_for(cfg | {"frames": 16}, B=1, seed). Tokens: resblocks[-1] output
# [1+h*w, t, c]; pooled: input of transformer.proj[2]; logits: the model output.
# "uniformer_f16": TINY (no LMHRA, no down-sampling, 2 global blocks on layers 2,3), seeds 21/22.
# "uniformer_lmhra_td_g8_f16": TINY with double LMHRA, temporal down-sampling (kernel 3) and 8 layers
# all read by 8 global blocks (return_list 0..7), seeds 23/24.
GOLDEN_CASES = {
    "uniformer_f16": (uniformer.TINY, 21, 22),
    "uniformer_lmhra_td_g8_f16": (
        uniformer.TINY
        | {"no_lmhra": False, "temporal_downsample": True, "layers": 8, "return_list": list(range(8))},
        23,
        24,
    ),
}


@pytest.mark.parametrize("tag", sorted(GOLDEN_CASES))
def test_uniformer_16_frames_match_official_code(tmp_path, tag):
    """The u8 layout and an lmhra + down-sampling + 8-global-block model at 16 frames, from the plain
    `uniformerv2-tiny` entry: everything but T is read from the checkpoint."""
    cfg, seed_ckpt, seed_clip = GOLDEN_CASES[tag]
    sd = uniformer_ckpt(cfg, seed=seed_ckpt)
    torch.save(to_official(sd), tmp_path / "c.pyth")
    model = load("uniformerv2-tiny", checkpoint=tmp_path / "c.pyth", frames=16)
    got = model.config
    assert (got["no_lmhra"], got["temporal_downsample"], got["return_list"]) == (
        cfg["no_lmhra"], cfg["temporal_downsample"], cfg["return_list"])  # fmt: skip
    g = golden()
    tokens, pooled = model.encode(clips_for(cfg | {"frames": 16}, B=1, seed=seed_clip))
    n, h, w = model.grid
    assert n == (8 if cfg["temporal_downsample"] else 16) and model.frames == 16
    ref = g[f"{tag}_tokens"][1:].permute(1, 2, 0).reshape(1, n, 64, h, w)
    assert (tokens - ref).abs().max() < GOLDEN_TOL
    assert (pooled - g[f"{tag}_pooled"]).abs().max() < GOLDEN_TOL
    logits = F.linear(pooled, sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.bias"])
    assert (logits - g[f"{tag}_logits"]).abs().max() < GOLDEN_TOL


@pytest.mark.parametrize("frames", [4, 16])
def test_uniformer_any_frames_matches_reference(tmp_path, frames):
    cfg = uniformer.TINY | {"no_lmhra": False, "double_lmhra": False}  # single LMHRA: temporal conv sees T
    sd = uniformer_ckpt(cfg, seed=5)
    torch.save({"state_dict": sd}, tmp_path / "c.pth")
    model = load("uniformerv2-tiny", checkpoint=tmp_path / "c.pth", frames=frames)
    assert model.config["double_lmhra"] is False and model.grid == (frames, 4, 4)
    assert model.sampling.clip_len == frames and model.provenance()["frames"] == frames
    x = clips_for(cfg | {"frames": frames})
    ref_tokens, ref_pooled = ref_uniformer(sd, x, cfg)
    tokens, pooled = model.encode(x)
    assert (tokens - ref_tokens).abs().max() < TOL and (pooled - ref_pooled).abs().max() < TOL


def test_uniformer_architecture_is_read_from_the_checkpoint(tmp_path):
    """Width, depth, patch, size, global blocks, MLP factor: a 'large' tiny model into the base entry."""
    cfg = uniformer.TINY | {"width": 96, "layers": 3, "patch": 8, "size": 48, "return_list": [1, 2],
                            "heads": 1, "n_head": 1, "mlp_factor": 2.0}  # fmt: skip
    sd = uniformer_ckpt(cfg, seed=6)
    torch.save(to_official(sd), tmp_path / "c.pyth")
    model = load("uniformerv2", checkpoint=tmp_path / "c.pyth")
    c = model.config
    assert (c["width"], c["layers"], c["patch"], c["size"], c["return_list"], c["mlp_factor"]) == (
        96, 3, 8, 48, [1, 2], 2.0)  # fmt: skip
    assert model.grid == (8, 6, 6) and model.preprocess.crop_size == 48
    # heads are not in the file: width 96 is neither B nor L, so head dim 64 -> 1 head, as in cfg
    x = clips_for(cfg)
    ref_tokens, ref_pooled = ref_uniformer(sd, x, cfg)
    tokens, pooled = model.encode(x)
    assert (tokens - ref_tokens).abs().max() < TOL and (pooled - ref_pooled).abs().max() < TOL


def test_uniformer_arch_reads_base_and_large_shapes():
    """B/16, L/14 and L/14@336 shapes (no weights needed): widths, heads, sizes, MHRA reduction."""
    base = {k.removeprefix("backbone."): torch.empty(s) for k, s in
            __import__("test_backbones").uniformer_mmaction_shapes(
                uniformer.BASE | {"no_lmhra": False, "temporal_downsample": True,
                                  "return_list": list(range(4, 12))}).items()}  # fmt: skip
    c = uniformer.arch_from_state_dict(base, uniformer.BASE)
    assert (c["heads"], c["dw_reduction"], c["kernel_size"], c["return_list"], c["frames"]) == (
        12, 1.5, 3, list(range(4, 12)), 16)  # fmt: skip
    large = {"conv1.weight": torch.empty(1024, 3, 1, 14, 14), "positional_embedding": torch.empty(577, 1024)}
    large |= {f"transformer.resblocks.{i}.ln_1.weight": torch.empty(1) for i in range(24)}
    large |= {f"transformer.dec.{j}.ln_1.weight": torch.empty(1) for j in range(4)}
    c = uniformer.arch_from_state_dict(large, uniformer.BASE)
    assert (c["width"], c["heads"], c["layers"], c["patch"], c["size"]) == (1024, 16, 24, 14, 336)
    assert c["return_list"] == [20, 21, 22, 23] and c["preprocess"]["crop_size"] == 336


def test_uniformer_odd_frames_with_downsampling_refused(tmp_path):
    cfg = uniformer.TINY | {"temporal_downsample": True}
    torch.save(uniformer_ckpt(cfg), tmp_path / "c.pth")
    with pytest.raises(CheckpointMismatch, match="--frames 7: .* even T"):
        load("uniformerv2-tiny", checkpoint=tmp_path / "c.pth", frames=7)
    assert load("uniformerv2-tiny", checkpoint=tmp_path / "c.pth").frames == 16  # zoo's native T


@pytest.mark.parametrize("frames", [4, 12])
def test_videomae_any_even_frames_matches_reference(tmp_path, frames):
    cfg = videomae.TINY
    sd = videomae_ckpt(cfg, seed=7)
    torch.save({"module": sd}, tmp_path / "c.pth")
    model = load("videomaev2-tiny", checkpoint=tmp_path / "c.pth", frames=frames)
    assert model.grid == (frames // 2, 4, 4) and model.sampling.clip_len == frames
    x = clips_for(cfg | {"frames": frames})
    ref_tokens, ref_pooled = ref_videomae(sd, x, cfg)  # its table: float64 numpy for T's token count
    tokens, pooled = model.encode(x)
    assert (tokens - to_fmap(ref_tokens, model.grid)).abs().max() < TOL
    assert (pooled - ref_pooled).abs().max() < TOL
    table = model.encoder.embeddings.position_embeddings
    assert table.shape == (1, frames // 2 * 16, 64) and torch.equal(
        table, sinusoid_table(frames // 2 * 16, 64)
    )
    with pytest.raises(CheckpointMismatch, match="multiple of it"):
        load("videomaev2-tiny", checkpoint=tmp_path / "c.pth", frames=5)


def test_videomae_size_is_read_from_the_checkpoint(tmp_path):
    """A wider, deeper, patch-8 file into the base entry: width/depth/MLP/patch/tubelet from shapes."""
    cfg = videomae.TINY | {"width": 96, "depth": 3, "mlp": 200, "heads": 1, "patch": 8, "size": 224}
    sd = videomae_ckpt(cfg, seed=8)
    # a 16-frame pos_embed of a 224 px model is tolerated at any T (it is the fixed table)
    torch.save({"model": sd | {"pos_embed": sinusoid_table(8 * 28 * 28, 96)}}, tmp_path / "c.pth")
    model = load("videomaev2", checkpoint=tmp_path / "c.pth", frames=4)
    c = model.config
    assert (c["width"], c["depth"], c["mlp"], c["patch"], c["heads"]) == (96, 3, 200, 8, 1)
    assert model.grid == (2, 28, 28) and c["feature_layer"].startswith("block 2 ")
    x = torch.randn(1, 3, 4, 224, 224, generator=torch.Generator().manual_seed(0))
    ref_tokens, ref_pooled = ref_videomae(sd, x, cfg)
    tokens, pooled = model.encode(x)
    assert (tokens - to_fmap(ref_tokens, model.grid)).abs().max() < TOL
    assert (pooled - ref_pooled).abs().max() < TOL


def test_videomae_heads_of_the_official_sizes():
    for width, heads in [(384, 6), (768, 12), (1024, 16), (1280, 16), (1408, 16)]:
        sd = {"patch_embed.proj.weight": torch.empty(width, 3, 2, 14, 14),
              "blocks.0.mlp.fc1.weight": torch.empty(4 * width, width)}  # fmt: skip
        assert videomae.arch_from_shapes(sd, videomae.BASE)["heads"] == heads


def test_bare_videomae_model_folder_loads_as_videomaev2(tmp_path):
    """A VideoMAEModel.save_pretrained folder has no fc_norm: pooled is the plain token mean."""
    from test_backbones import _perturb
    from transformers import VideoMAEModel

    hf = _perturb(VideoMAEModel(videomae.hf_config(videomae.TINY)), seed=3)
    hf.save_pretrained(tmp_path / "bare")
    model = load("videomaev2-tiny", checkpoint=tmp_path / "bare")
    x = clips_for(videomae.TINY)
    with torch.no_grad():
        ref = hf(pixel_values=x.transpose(1, 2)).last_hidden_state
    tokens, pooled = model.encode(x)
    assert (tokens - to_fmap(ref, model.grid)).abs().max() < 1e-6
    assert (pooled - ref.mean(1)).abs().max() < 1e-6
    assert "no fc_norm" in model.provenance()["config"]["pooled"]


def test_frames_is_recorded_and_resume_with_other_frames_refused(tmp_path):
    from stecache.annotations import load_dataset_dir
    from stecache.cache import open_cache
    from stecache.errors import CacheMismatch
    from stecache.extract import ExtractConfig, extract
    from stecache.synth import synthesize

    synthesize(tmp_path / "d", n_clips=4)
    ds = load_dataset_dir(tmp_path / "d")
    cfg = ExtractConfig(workers=0, progress=False)
    from click.testing import CliRunner

    from stecache.cli import cli

    args = ["extract", "--backbone", "uniformerv2-tiny", "--frames", "4", "--data", str(tmp_path / "d")]
    out = CliRunner().invoke(cli, [*args, "--cache", str(tmp_path / "c.zarr"), "--workers", "0"])
    assert out.exit_code == 0, out.output
    cache = open_cache(tmp_path / "c.zarr")
    assert cache.attrs["backbone"]["frames"] == 4 and cache.feature_shape[0] == 4
    assert cache.attrs["sampling"]["clip_len"] == 4
    with pytest.raises(CacheMismatch):
        extract(ds, tmp_path / "c.zarr", "uniformerv2-tiny", cfg=cfg, frames=6)
    from stecache.predict import load_backbone

    assert load_backbone(cache.attrs["backbone"]).frames == 4  # predict rebuilds the cache's T
    np.testing.assert_array_equal(cache.done, True)


def test_uniformer_frozen_zoo_variant_pools_the_query(tmp_path):
    """The zoo's frozen-backbone models have no `balance`: pooled = LN(query), the official `frozen` branch,
    which is the reference forward with sigmoid(balance) = 0 exactly (balance = -1e4 in fp32)."""
    sd = uniformer_ckpt(uniformer.TINY, seed=12)
    frozen = {k: v for k, v in to_official(sd).items() if k != "backbone.transformer.balance"}
    torch.save(frozen, tmp_path / "f.pyth")
    model = load("uniformerv2-tiny", checkpoint=tmp_path / "f.pyth")
    assert model.config["frozen"] and model.transformer.balance is None
    x = clips_for(uniformer.TINY)
    ref_tokens, ref_pooled = ref_uniformer(sd | {"backbone.transformer.balance": torch.full((64,), -1e4)}, x,
                                           uniformer.TINY)  # fmt: skip
    tokens, pooled = model.encode(x)
    assert (tokens - ref_tokens).abs().max() < TOL and (pooled - ref_pooled).abs().max() < TOL
    assert (pooled - ref_uniformer(sd, x, uniformer.TINY)[1]).abs().max() > 1e-2  # the branch matters
