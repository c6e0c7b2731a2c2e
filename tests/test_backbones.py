"""Backbones against independent references written here from the official key layouts and math.

VideoMAEv2: `ref_videomae` re-implements the official `modeling_finetune.py` forward (fused qkv with
`[q_bias, 0, v_bias]`, float64 sinusoid table, LayerNorm eps 1e-6) on the official state-dict keys.
UniFormerV2: `ref_uniformer` follows mmaction2 `uniformerv2.py` (sequence-first layout, torch's MHA for
local blocks, explicit cross-attention for the Extractor) on the mmaction2 key names. Checkpoints are
random but non-trivial (non-zero biases, non-unit norms) and written in every supported wrapper layout.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stecache.backbones import BACKBONES, load, uniformer, videomae
from stecache.errors import CheckpointMismatch

TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:stecache. backbone .* has RANDOM weights")


def rand_tensor(name: str, shape, g: torch.Generator) -> torch.Tensor:
    """Random parameter by role: norms near (not at) 1, non-zero biases, weights ~ 1/sqrt(fan_in)."""
    last = name.rsplit(".", 1)[-1]
    if last in ("running_var",):
        return 0.5 + torch.rand(shape, generator=g)
    if last == "num_batches_tracked":
        return torch.tensor(7)
    if "norm" in name or "ln_" in name or name.endswith(("pos_embed.0.weight",)):
        if last == "weight":
            return 1 + 0.3 * torch.randn(shape, generator=g)
        return 0.2 * torch.randn(shape, generator=g)
    if len(shape) == 1 or last in ("bias", "q_bias", "v_bias", "in_proj_bias", "running_mean"):
        return 0.2 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    gain = 0.2 if name.endswith("pos_embed.3.weight") else 1.0  # LMHRA output conv (zero-init upstream)
    return gain * torch.randn(shape, generator=g) / math.sqrt(fan_in)


# ---------------------------------------------------------------- VideoMAEv2 reference


def videomae_official_shapes(cfg: dict, classes: int = 7) -> dict[str, tuple]:
    """The official `vit_*_patch16` state-dict keys (references/backbones.md §1.6)."""
    c, m, t, p = cfg["width"], cfg["mlp"], cfg["tubelet"], cfg["patch"]
    shapes = {"patch_embed.proj.weight": (c, 3, t, p, p), "patch_embed.proj.bias": (c,)}
    for i in range(cfg["depth"]):
        b = f"blocks.{i}."
        shapes |= {
            b + "norm1.weight": (c,),
            b + "norm1.bias": (c,),
            b + "attn.q_bias": (c,),
            b + "attn.v_bias": (c,),
        }
        shapes |= {
            b + "attn.qkv.weight": (3 * c, c),
            b + "attn.proj.weight": (c, c),
            b + "attn.proj.bias": (c,),
        }
        shapes |= {b + "norm2.weight": (c,), b + "norm2.bias": (c,), b + "mlp.fc1.weight": (m, c)}
        shapes |= {b + "mlp.fc1.bias": (m,), b + "mlp.fc2.weight": (c, m), b + "mlp.fc2.bias": (c,)}
    return shapes | {
        "fc_norm.weight": (c,),
        "fc_norm.bias": (c,),
        "head.weight": (classes, c),
        "head.bias": (classes,),
    }


def videomae_ckpt(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: rand_tensor(k, s, g) for k, s in videomae_official_shapes(cfg).items()}


def sinusoid_table(n: int, c: int) -> torch.Tensor:
    """Official get_sinusoid_encoding_table: float64, sin on even / cos on odd channels."""
    pos = np.arange(n)[:, None] / np.power(10000, 2 * (np.arange(c) // 2) / c)[None, :]
    pos[:, 0::2], pos[:, 1::2] = np.sin(pos[:, 0::2]), np.cos(pos[:, 1::2])
    return torch.tensor(pos, dtype=torch.float32)[None]


def ref_videomae(sd: dict, x: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Official VideoMAEv2 forward_features: tokens [B, N, c] before fc_norm, and fc_norm(mean)."""
    c, heads, eps, t, p = cfg["width"], cfg["heads"], 1e-6, cfg["tubelet"], cfg["patch"]
    x = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(t, p, p))
    x = x.flatten(2).transpose(1, 2)
    B, N, _ = x.shape
    x = x + sinusoid_table(N, c)
    for i in range(cfg["depth"]):
        b = f"blocks.{i}."
        y = F.layer_norm(x, (c,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps)
        bias = torch.cat([sd[b + "attn.q_bias"], torch.zeros(c), sd[b + "attn.v_bias"]])
        qkv = F.linear(y, sd[b + "attn.qkv.weight"], bias).reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(B, N, c)
        x = x + F.linear(y, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        y = F.layer_norm(x, (c,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps)
        y = F.gelu(F.linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        x = x + F.linear(y, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    return x, F.layer_norm(x.mean(1), (c,), sd["fc_norm.weight"], sd["fc_norm.bias"], eps)


def to_fmap(tokens: torch.Tensor, grid) -> torch.Tensor:  # [B, n*h*w, c] -> [B, n, c, h, w]
    n, h, w = grid
    return tokens.reshape(len(tokens), n, h, w, -1).permute(0, 1, 4, 2, 3)


def clips_for(cfg: dict, B: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, cfg["frames"], cfg["size"], cfg["size"], generator=g)


def mmaction_videomae_layout(sd: dict) -> dict:
    """The mmaction2 vit_mae.py key layout (mmcv PatchEmbed / FFN names, backbone./cls_head. prefixes)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("patch_embed.proj.", "patch_embed.projection.")
        k = k.replace("mlp.fc1.", "mlp.layers.0.0.").replace("mlp.fc2.", "mlp.layers.1.")
        out["cls_head.fc_cls." + k[5:] if k.startswith("head.") else "backbone." + k] = v
    return out


VIDEOMAE_LAYOUTS = {
    "module-fp16": lambda sd: {"module": {k: v.half() for k, v in sd.items()}},
    "model": lambda sd: {"model": sd, "epoch": 3},
    "flat-prefixed+pos_embed": lambda sd: (
        {"backbone." + k: v for k, v in sd.items()} | {"backbone.pos_embed": sinusoid_table(64, 64)}
    ),
    "mmaction2": lambda sd: {"state_dict": mmaction_videomae_layout(sd), "meta": {"x": 1}},
}


@pytest.mark.parametrize("layout", sorted(VIDEOMAE_LAYOUTS))
def test_videomae_official_layouts_match_reference(tmp_path, layout):
    cfg = videomae.TINY
    sd = videomae_ckpt(cfg)
    if layout == "module-fp16":
        sd = {k: v.half().float() for k, v in sd.items()}  # the reference sees the same rounded values
    path = tmp_path / "ckpt.pth"
    torch.save(VIDEOMAE_LAYOUTS[layout](sd), path)
    model = load("videomaev2-tiny", checkpoint=path)
    x = clips_for(cfg)
    ref_tokens, ref_pooled = ref_videomae(sd, x, cfg)
    tokens, pooled = model.encode(x)
    assert tokens.shape == (2, 4, 64, 4, 4) and tokens.dtype == torch.float32
    assert (tokens - to_fmap(ref_tokens, model.grid)).abs().max() < TOL
    assert (pooled - ref_pooled).abs().max() < TOL
    assert torch.equal(model(x), tokens) and torch.equal(model.pooled(x), pooled)
    assert len(model.checkpoint_sha256) == 64 and model.provenance()["weights"] == model.checkpoint_sha256


def test_videomae_qv_biases_really_load(tmp_path):
    cfg = videomae.TINY
    sd = videomae_ckpt(cfg, seed=3)
    torch.save(sd, tmp_path / "c.pth")
    model = load("videomaev2-tiny", checkpoint=tmp_path / "c.pth")
    attn = model.encoder.encoder.layer[1].attention.attention
    assert torch.equal(attn.query.bias, sd["blocks.1.attn.q_bias"])
    assert torch.equal(attn.value.bias, sd["blocks.1.attn.v_bias"]) and attn.key.bias is None
    # the reference is sensitive to the biases, so a silently dropped bias could not pass the test above
    x = clips_for(cfg)
    no_bias = sd | {k: torch.zeros_like(v) for k, v in sd.items() if k.endswith(("q_bias", "v_bias"))}
    assert (ref_videomae(no_bias, x, cfg)[0] - ref_videomae(sd, x, cfg)[0]).abs().max() > 1e-2


def test_videomae_safetensors_and_pooled_is_fc_norm_of_mean(tmp_path):
    from safetensors.torch import save_file

    cfg = videomae.TINY
    sd = videomae_ckpt(cfg, seed=5)
    save_file(sd, tmp_path / "c.safetensors")
    model = load("videomaev2-tiny", checkpoint=tmp_path / "c.safetensors")
    x = clips_for(cfg)
    tokens, pooled = model.encode(x)
    mean = tokens.mean((1, 3, 4))
    expect = F.layer_norm(mean, (64,), sd["fc_norm.weight"], sd["fc_norm.bias"], 1e-6)
    assert (pooled - expect).abs().max() < 1e-6
    wrong_eps = F.layer_norm(mean, (64,), sd["fc_norm.weight"], sd["fc_norm.bias"], 1e-5)
    assert (pooled - wrong_eps).abs().max() > 0  # eps matters: transformers' classifier uses 1e-5


def test_videomae_sinusoid_table_is_float64_exact():
    model = load("videomaev2-tiny")
    table = model.encoder.embeddings.position_embeddings
    assert torch.equal(table, sinusoid_table(64, 64))


def test_layer_norm_eps_are_official():
    """eps is below the tolerance of the output comparisons, so check it directly: 1e-6 / torch's 1e-5."""
    for name, eps in (("videomaev2-tiny", 1e-6), ("uniformerv2-tiny", 1e-5)):
        norms = [m for m in load(name).modules() if isinstance(m, torch.nn.LayerNorm)]
        assert len(norms) > 4 and {m.eps for m in norms} == {eps}


def test_videomae_token_layout_round_trips_patch_embed():
    """With no blocks and no positions the token map is the Conv3d output: token p = t*h*w + y*w + x."""
    model = load("videomaev2-tiny")
    model.encoder.encoder.layer = torch.nn.ModuleList()
    model.encoder.embeddings.position_embeddings = torch.zeros_like(
        model.encoder.embeddings.position_embeddings
    )
    x = clips_for(videomae.TINY)
    conv = model.encoder.embeddings.patch_embeddings.projection
    expect = F.conv3d(x, conv.weight, conv.bias, stride=conv.stride)  # [B, c, n, h, w]
    assert torch.allclose(model(x), expect.transpose(1, 2), atol=1e-6)


def test_videomae_transformers_directory(tmp_path):
    from transformers import VideoMAEForVideoClassification

    cfg = videomae.TINY
    hf = VideoMAEForVideoClassification(_labels(cfg))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for k, p in hf.named_parameters():
            p.copy_(rand_tensor(k, tuple(p.shape), g))
    hf.eval().save_pretrained(tmp_path / "hf")
    model = load("videomaev2-tiny", checkpoint=tmp_path / "hf")
    x = clips_for(cfg)
    with torch.no_grad():
        ref = hf.videomae(pixel_values=x.transpose(1, 2)).last_hidden_state
    tokens, pooled = model.encode(x)
    assert (tokens - to_fmap(ref, model.grid)).abs().max() < TOL
    expect = F.layer_norm(ref.mean(1), (64,), hf.fc_norm.weight, hf.fc_norm.bias, 1e-6)
    assert (pooled - expect).abs().max() < TOL
    assert torch.equal(
        model.encoder.encoder.layer[0].attention.attention.query.bias,
        hf.videomae.encoder.layer[0].attention.attention.query.bias,
    )
    big = load("videomaev2", checkpoint=tmp_path / "hf")  # sizes come from config.json, not the entry
    assert (big.grid, big.channels, big.config["depth"]) == (model.grid, 64, 2)
    assert torch.equal(big(x), tokens)
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_cfg | {"qv_bias": False}))
    with pytest.raises(CheckpointMismatch, match="qv_bias=false"):
        load("videomaev2", checkpoint=tmp_path / "hf")


def _labels(cfg):
    c = videomae.hf_config(cfg)
    c.num_labels = 5
    return c


# ---------------------------------------------------------------- UniFormerV2 reference


def uniformer_mmaction_shapes(cfg: dict, classes: int = 7) -> dict[str, tuple]:
    """mmaction2 UniFormerV2 recognizer keys (references/backbones.md §3.4), `backbone.`/`cls_head.`."""
    c, p, s = cfg["width"], cfg["patch"], cfg["size"] // cfg["patch"]
    kt = cfg["kernel_size"] if cfg["temporal_downsample"] else 1
    b = "backbone."
    shapes = {
        b + "conv1.weight": (c, 3, kt, p, p),
        b + "class_embedding": (c,),
        b + "positional_embedding": (s * s + 1, c),
    }
    shapes |= {b + "ln_pre.weight": (c,), b + "ln_pre.bias": (c,)}

    def block(pre: str, mlp: int, ln3: bool):
        d = {pre + "attn.in_proj_weight": (3 * c, c), pre + "attn.in_proj_bias": (3 * c,)}
        d |= {pre + "attn.out_proj.weight": (c, c), pre + "attn.out_proj.bias": (c,)}
        for ln in ("ln_1", "ln_2") + (("ln_3",) if ln3 else ()):
            d |= {pre + ln + ".weight": (c,), pre + ln + ".bias": (c,)}
        d |= {pre + "mlp.c_fc.weight": (mlp, c), pre + "mlp.c_fc.bias": (mlp,)}
        return d | {pre + "mlp.c_proj.weight": (c, mlp), pre + "mlp.c_proj.bias": (c,)}

    r = int(c // cfg["dw_reduction"])
    for i in range(cfg["layers"]):
        pre = f"{b}transformer.resblocks.{i}."
        shapes |= block(pre, 4 * c, False)
        for m in ("lmhra1", "lmhra2")[: 0 if cfg["no_lmhra"] else 2 if cfg["double_lmhra"] else 1]:
            q = f"{pre}{m}.pos_embed."
            shapes |= {q + f"0.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")}
            shapes |= {q + "0.num_batches_tracked": ()}
            shapes |= {q + "1.weight": (r, c, 1, 1, 1), q + "1.bias": (r,), q + "2.weight": (r, 1, 3, 1, 1)}
            shapes |= {q + "2.bias": (r,), q + "3.weight": (c, r, 1, 1, 1), q + "3.bias": (c,)}
    shapes |= {b + "transformer.temporal_cls_token": (1, 1, c), b + "transformer.balance": (c,)}
    for j in range(len(cfg["return_list"])):
        shapes |= {f"{b}transformer.dpe.{j}.weight": (c, 1, 3, 3, 3), f"{b}transformer.dpe.{j}.bias": (c,)}
        shapes |= block(f"{b}transformer.dec.{j}.", round(cfg["mlp_factor"] * c), True)
    shapes |= {b + "transformer.norm.weight": (c,), b + "transformer.norm.bias": (c,)}
    return shapes | {"cls_head.fc_cls.weight": (classes, c), "cls_head.fc_cls.bias": (classes,)}


def uniformer_ckpt(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: rand_tensor(k, s, g) for k, s in uniformer_mmaction_shapes(cfg).items()}


def to_official(sd: dict) -> dict:
    """mmaction2 keys -> official .pyth keys (transformer.proj.0 = LN, transformer.proj.2 = classifier)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("backbone.transformer.norm.", "backbone.transformer.proj.0.")
        out[k.replace("cls_head.fc_cls.", "backbone.transformer.proj.2.")] = v
    return out


def ref_uniformer(sd: dict, x: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """mmaction2 UniFormerV2.forward, sequence-first; returns (last block patch tokens fmap, pooled)."""
    sd = {k.removeprefix("backbone."): v for k, v in sd.items()}
    c, heads = cfg["width"], cfg["heads"]

    def ln(y, name):
        return F.layer_norm(y, (c,), sd[name + ".weight"], sd[name + ".bias"], 1e-5)

    def mlp(y, pre):
        y = F.linear(y, sd[pre + "mlp.c_fc.weight"], sd[pre + "mlp.c_fc.bias"])
        return F.linear(
            y * torch.sigmoid(1.702 * y), sd[pre + "mlp.c_proj.weight"], sd[pre + "mlp.c_proj.bias"]
        )

    def lmhra(y, pre, T):  # y [L, NT, C] -> same, patch tokens get the local MHRA residual
        t = y[1:]
        L, NT, C = t.shape
        H = W = int(L**0.5)
        t = t.view(H, W, NT // T, T, C).permute(2, 4, 3, 0, 1).contiguous()
        q = pre + "pos_embed."
        z = F.batch_norm(
            t, sd[q + "0.running_mean"], sd[q + "0.running_var"], sd[q + "0.weight"], sd[q + "0.bias"]
        )
        z = F.conv3d(z, sd[q + "1.weight"], sd[q + "1.bias"])
        z = F.conv3d(z, sd[q + "2.weight"], sd[q + "2.bias"], padding=(1, 0, 0), groups=z.shape[1])
        t = t + F.conv3d(z, sd[q + "3.weight"], sd[q + "3.bias"])
        t = t.view(NT // T, C, T, L).permute(3, 0, 2, 1).contiguous().view(L, NT, C)
        return torch.cat([y[:1], t], dim=0)

    if cfg["temporal_downsample"]:
        x = F.conv3d(x, sd["conv1.weight"], stride=(2, cfg["patch"], cfg["patch"]), padding=(1, 0, 0))
    else:
        x = F.conv3d(x, sd["conv1.weight"], stride=(1, cfg["patch"], cfg["patch"]))
    N, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(N * T, H * W, C)
    x = torch.cat([sd["class_embedding"] + torch.zeros(N * T, 1, C), x], dim=1) + sd["positional_embedding"]
    x = ln(x, "ln_pre").permute(1, 0, 2)  # [L, NT, C]
    L = x.shape[0]
    cls = sd["transformer.temporal_cls_token"].repeat(1, N, 1)
    j = -1
    for i in range(cfg["layers"]):
        pre = f"transformer.resblocks.{i}."
        if not cfg["no_lmhra"]:
            x = lmhra(x, pre + "lmhra1.", T)
        y = ln(x, pre + "ln_1")
        w_in, b_in = sd[pre + "attn.in_proj_weight"], sd[pre + "attn.in_proj_bias"]
        w_out, b_out = sd[pre + "attn.out_proj.weight"], sd[pre + "attn.out_proj.bias"]
        mha = F.multi_head_attention_forward
        x = x + mha(y, y, y, c, heads, w_in, b_in, None, None, False, 0.0, w_out, b_out, training=False)[0]
        if not cfg["no_lmhra"] and cfg["double_lmhra"]:
            x = lmhra(x, pre + "lmhra2.", T)
        x = x + mlp(ln(x, pre + "ln_2"), pre)
        if i in cfg["return_list"]:
            j += 1
            tmp = x.clone().view(L, N, T, C)
            feats = tmp[1:].permute(1, 3, 2, 0).reshape(N, C, T, H, W)
            d = f"transformer.dpe.{j}."
            feats = F.conv3d(feats, sd[d + "weight"], sd[d + "bias"], padding=1, groups=C)
            tmp[1:] = tmp[1:] + feats.view(N, C, T, L - 1).permute(3, 0, 2, 1)
            kv = tmp.permute(2, 0, 1, 3).flatten(0, 1)  # [T*L, N, C]
            pre = f"transformer.dec.{j}."
            q_in, kv_in = ln(cls, pre + "ln_1"), ln(kv, pre + "ln_3")
            w, b = sd[pre + "attn.in_proj_weight"], sd[pre + "attn.in_proj_bias"]
            q, k, v = q_in @ w[:c].T + b[:c], kv_in @ w[c:-c].T + b[c:-c], kv_in @ w[-c:].T + b[-c:]
            q, k, v = (z.view(z.shape[0], N, heads, c // heads).permute(1, 2, 0, 3) for z in (q, k, v))
            out = (
                ((q @ k.transpose(-2, -1) / (c // heads) ** 0.5).softmax(-1) @ v)
                .permute(2, 0, 1, 3)
                .flatten(2)
            )
            cls = cls + F.linear(out, sd[pre + "attn.out_proj.weight"], sd[pre + "attn.out_proj.bias"])
            cls = cls + mlp(ln(cls, pre + "ln_2"), pre)
    weight = torch.sigmoid(sd["transformer.balance"])
    residual = x.view(L, N, T, C)[0].mean(1)
    pooled = ln((1 - weight) * cls[0] + weight * residual, "transformer.norm")
    return x[1:].permute(1, 2, 0).reshape(N, T, C, H, W), pooled


UNIFORMER_LAYOUTS = {
    "official-pyth": lambda sd: to_official(sd),
    "slowfast-model_state": lambda sd: {
        "model_state": {"module." + k: v for k, v in to_official(sd).items()}
    },
    "mmaction2": lambda sd: {"state_dict": sd, "meta": {"epoch": 1}},
}


@pytest.mark.parametrize("layout", sorted(UNIFORMER_LAYOUTS))
def test_uniformer_layouts_match_reference(tmp_path, layout):
    cfg = uniformer.TINY
    sd = uniformer_ckpt(cfg)
    path = tmp_path / "ckpt.pyth"
    torch.save(UNIFORMER_LAYOUTS[layout](sd), path)
    model = load("uniformerv2-tiny", checkpoint=path)
    x = clips_for(cfg)
    ref_tokens, ref_pooled = ref_uniformer(sd, x, cfg)
    tokens, pooled = model.encode(x)
    assert tokens.shape == (2, 8, 64, 4, 4)
    assert (tokens - ref_tokens).abs().max() < TOL
    assert (pooled - ref_pooled).abs().max() < TOL
    assert torch.equal(model(x), tokens)


@pytest.mark.parametrize("variant", ["lmhra", "lmhra+temporal_downsample", "single_lmhra"])
def test_uniformer_options_match_reference(tmp_path, variant):
    cfg = uniformer.TINY | {"no_lmhra": False}
    if "temporal_downsample" in variant:
        cfg |= {"temporal_downsample": True}
    if variant == "single_lmhra":
        cfg |= {"double_lmhra": False}
    sd = uniformer_ckpt(cfg, seed=4)
    torch.save({"state_dict": sd}, tmp_path / "c.pth")
    model = uniformer.build(cfg, "uniformerv2-variant", tmp_path / "c.pth").freeze("cpu")
    x = clips_for(cfg)
    ref_tokens, ref_pooled = ref_uniformer(sd, x, cfg)
    tokens, pooled = model.encode(x)
    assert tokens.shape == (2, model.grid[0], 64, 4, 4) == (2, 4 if "temporal" in variant else 8, 64, 4, 4)
    assert (tokens - ref_tokens).abs().max() < TOL
    assert (pooled - ref_pooled).abs().max() < TOL


def test_uniformer_token_layout_round_trips_patch_embed():
    model = load("uniformerv2-tiny")
    model.transformer.resblocks = torch.nn.ModuleList()
    model.ln_pre = torch.nn.Identity()
    model.positional_embedding.data.zero_()
    x = clips_for(uniformer.TINY)
    expect = F.conv3d(x, model.conv1.weight, stride=model.conv1.stride)  # [B, c, t, h, w]
    assert torch.allclose(model(x), expect.transpose(1, 2), atol=1e-6)


def test_uniformer_tokens_are_per_frame_without_lmhra(tmp_path):
    """Published Kinetics configs have no LMHRA: reversing the frames reverses the token map."""
    sd = uniformer_ckpt(uniformer.TINY, seed=9)
    torch.save(sd, tmp_path / "c.pth")
    model = load("uniformerv2-tiny", checkpoint=tmp_path / "c.pth")
    x = clips_for(uniformer.TINY)
    assert (model(x.flip(2)) - model(x).flip(1)).abs().max() < 1e-5


# ---------------------------------------------------------------- golden outputs of the official code

# tests/golden/backbones_official.npz: outputs of the unmodified official files, run once in a scratch
# directory (only timm / slowfast.logging imports stubbed; drop-path is identity at eval):
# OpenGVLab/VideoMAEv2@29eab1e models/modeling_finetune.py `VisionTransformer` (tiny: 64 px, width 64,
# depth 2, 8 frames, qkv_bias, LayerNorm eps 1e-6) on videomae_ckpt(TINY, seed=11), clips_for(seed=12);
# OpenGVLab/UniFormerV2@722a434 slowfast/models/uniformerv2_model.py `VisionTransformer` (TINY, and TINY
# with LMHRA + temporal downsampling) on to_official(uniformer_ckpt(cfg, seed=13)), clips_for(seed=14).
# Both official models loaded those checkpoints with strict=True. Tokens are the last block's output
# (UniFormerV2: [1+h*w, N*t, c], sequence-first), pooled the input of the classifier Linear.
GOLDEN = "tests/golden/backbones_official.npz"


def golden() -> dict[str, torch.Tensor]:
    from pathlib import Path

    path = Path(__file__).parent / "golden" / "backbones_official.npz"
    return {k: torch.from_numpy(v) for k, v in np.load(path).items()}


def test_videomae_matches_official_code_golden(tmp_path):
    g, cfg = golden(), videomae.TINY
    sd = videomae_ckpt(cfg, seed=11)
    torch.save({"module": sd}, tmp_path / "c.pth")
    model = load("videomaev2-tiny", checkpoint=tmp_path / "c.pth")
    tokens, pooled = model.encode(clips_for(cfg, seed=12))
    assert (tokens - to_fmap(g["videomae_tokens"], model.grid)).abs().max() < TOL
    assert (pooled - g["videomae_pooled"]).abs().max() < TOL
    assert (F.linear(pooled, sd["head.weight"], sd["head.bias"]) - g["videomae_logits"]).abs().max() < TOL


@pytest.mark.parametrize("tag", ["uniformer", "uniformer_lmhra_td"])
def test_uniformer_matches_official_code_golden(tmp_path, tag):
    g, cfg = golden(), uniformer.TINY
    if tag == "uniformer_lmhra_td":
        cfg = cfg | {"no_lmhra": False, "temporal_downsample": True}
    sd = uniformer_ckpt(cfg, seed=13)
    torch.save(to_official(sd), tmp_path / "c.pyth")
    model = uniformer.build(cfg, tag, tmp_path / "c.pyth").freeze("cpu")
    tokens, pooled = model.encode(clips_for(cfg, seed=14))
    n, h, w = model.grid
    ref = g[f"{tag}_tokens"][1:].permute(1, 2, 0).reshape(2, n, 64, h, w)  # drop frame CLS, [N, t, c, h, w]
    assert (tokens - ref).abs().max() < TOL
    assert (pooled - g[f"{tag}_pooled"]).abs().max() < TOL
    head = F.linear(pooled, sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.bias"])
    assert (head - g[f"{tag}_logits"]).abs().max() < TOL


# ---------------------------------------------------------------- errors, provenance, base configs


def test_missing_and_unexpected_keys_name_the_file(tmp_path):
    sd = videomae_ckpt(videomae.TINY)
    sd.pop("blocks.1.attn.v_bias")
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save({"module": sd}, path)
    with pytest.raises(CheckpointMismatch) as err:
        load("videomaev2-tiny", checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg and "missing keys: blocks.1.attn.v_bias;" in msg
    assert "unexpected keys: blocks.0.attn.extra" in msg

    usd = uniformer_ckpt(uniformer.TINY)
    usd["backbone.transformer.dpe.0.weight"] = torch.zeros(64, 1, 3, 3, 5)  # conv1 would be a variant
    torch.save(usd, tmp_path / "u.pth")
    with pytest.raises(
        CheckpointMismatch, match=r"wrong shapes: transformer.dpe.0.weight: checkpoint \[64, 1, 3, 3, 5\]"
    ):
        load("uniformerv2-tiny", checkpoint=tmp_path / "u.pth")
    with pytest.raises(
        CheckpointMismatch, match="missing keys: class_embedding, conv1.weight.*another model"
    ):
        load("uniformerv2-tiny", checkpoint=path)  # a VideoMAE file into UniFormerV2


def test_unreadable_and_absent_checkpoints(tmp_path):
    with pytest.raises(CheckpointMismatch, match="no such file"):
        load("videomaev2-tiny", checkpoint=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointMismatch, match="junk.pth: cannot be read"):
        load("uniformerv2-tiny", checkpoint=tmp_path / "junk.pth")
    torch.save({"epoch": 3, "lr": torch.tensor(0.1), "note": "x"}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointMismatch, match="odd.pth: not a state dict"):
        load("videomaev2-tiny", checkpoint=tmp_path / "odd.pth")
    bad_pos = videomae_ckpt(videomae.TINY) | {"pos_embed": torch.randn(1, 64, 64)}
    torch.save(bad_pos, tmp_path / "pos.pth")
    with pytest.raises(CheckpointMismatch, match="not the fixed sinusoid"):
        load("videomaev2-tiny", checkpoint=tmp_path / "pos.pth")
    with pytest.raises(ValueError, match="unknown backbone"):
        load("resnet50")


@pytest.mark.parametrize("name", ["videomaev2-tiny", "uniformerv2-tiny"])
def test_random_weights_are_loud_seeded_and_recorded(name):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        a = load(name)
    b = load(name)
    x = clips_for({"frames": a.frames, "size": a.size})
    assert torch.equal(a(x), b(x))
    prov = a.provenance()
    assert prov["weights"] == "random" and a.checkpoint_sha256 is None
    assert prov["grid"] == list(a.grid) and prov["channels"] == a.channels
    assert all(not p.requires_grad for p in a.parameters()) and not a.training
    json.dumps(prov)
    with pytest.raises(ValueError, match=f"T={a.frames}"):
        a(torch.zeros(1, 3, a.frames * 2, a.size, a.size))


@pytest.mark.slow
def test_base_configs_match_published_facts():
    """Base entries: grid, channels, frames, protocol and parameter counts of the published models."""
    v = BACKBONES["videomaev2"](None)
    assert (v.grid, v.channels, v.frames, v.size) == ((8, 14, 14), 768, 16, 224)
    assert sum(p.numel() for p in v.parameters()) == 86_227_200  # encoder + fc_norm, references §1.6
    assert v.sampling.rule == "dense" and v.sampling.frame_interval == 4 and v.test_views == (5, 3)
    u = BACKBONES["uniformerv2"](None)
    assert (u.grid, u.channels, u.frames, u.size) == ((8, 14, 14), 768, 8, 224)
    assert sum(p.numel() for p in u.parameters()) == 114_244_608  # references §3.2
    assert u.sampling.rule == "uniform" and u.test_views == (4, 3)
    assert u.preprocess.mean == (114.75,) * 3 and v.preprocess.std == (58.395, 57.12, 57.375)
    assert set(uniformer_mmaction_shapes(uniformer.BASE)) - {
        "cls_head.fc_cls.weight",
        "cls_head.fc_cls.bias",
    } == {"backbone." + k for k in u.state_dict()}
    assert len(videomae_official_shapes(videomae.BASE)) == 162


# ---------------------------------------------------------------- image:<dir>


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(rand_tensor(k, tuple(p.shape), g))
    return model.eval()


def test_image_classifier_save_without_pooler_pools_cls(tmp_path):
    """A ViTForImageClassification save has no pooler weights: pooled is the final CLS token, not random."""
    import transformers as tf

    cfg = tf.ViTConfig(image_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, patch_size=8)  # fmt: skip
    clf = _perturb(tf.ViTForImageClassification(cfg))
    clf.save_pretrained(tmp_path / "vit")
    bb = load(f"image:{tmp_path / 'vit'}")
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        cls = clf.vit(pixel_values=x[0].transpose(0, 1)).last_hidden_state[:, 0].mean(0)
    assert (bb.pooled(x)[0] - cls).abs().max() < TOL


@pytest.mark.parametrize("kind", ["vit", "dinov2-registers", "clip"])
def test_image_encoder_per_frame(tmp_path, kind):
    import transformers as tf

    small = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8
    )
    if kind == "vit":
        model = tf.ViTModel(tf.ViTConfig(image_size=32, **small))
        prefix = 1
    elif kind == "dinov2-registers":
        model = tf.Dinov2WithRegistersModel(
            tf.Dinov2WithRegistersConfig(image_size=32, num_register_tokens=4, **small)
        )
        prefix = 5
    else:
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(image_size=32, **small))
        prefix = 1
    _perturb(model).save_pretrained(tmp_path / kind)
    if kind == "dinov2-registers":  # the hub's DINOv2 preprocessing: short side, then centre crop
        pp = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True}
        pp |= {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
        (tmp_path / kind / "preprocessor_config.json").write_text(json.dumps(pp))
    bb = load(f"image:{tmp_path / kind}")
    pre = bb.preprocess
    if kind == "dinov2-registers":
        assert (pre.short_side, pre.crop_size, pre.crop) == (40, 32, "center")
        assert np.allclose(pre.mean, (123.675, 116.28, 103.53)) and np.allclose(
            pre.std, (58.395, 57.12, 57.375)
        )
    else:
        assert (pre.short_side, pre.crop_size, pre.crop) == (32, 32, "resize")
    assert bb.grid == (8, 4, 4) and bb.channels == 32 and bb.size == 32
    x = torch.randn(2, 3, 8, 32, 32)
    tokens, pooled = bb.encode(x)
    with torch.no_grad():
        for b, t in [(0, 0), (1, 5)]:
            out = model(pixel_values=x[b : b + 1, :, t])
            expect = out.last_hidden_state[0, prefix:].T.reshape(32, 4, 4)
            assert (tokens[b, t] - expect).abs().max() < TOL
        frames = x[1].transpose(0, 1)  # [T, 3, H, W]
        assert (pooled[1] - model(pixel_values=frames).pooler_output.mean(0)).abs().max() < TOL
    prov = bb.provenance()
    assert len(prov["weights"]) == 64 and prov["config"]["family"] == "image"
    torch.save({}, tmp_path / kind / "pytorch_model.bin")  # ignored: safetensors present
    (tmp_path / kind / "model.safetensors").unlink()
    with pytest.raises(CheckpointMismatch, match="weights do not fit|no .safetensors"):
        load(f"image:{tmp_path / kind}")
    with pytest.raises(CheckpointMismatch, match="not a directory"):
        load(f"image:{tmp_path / 'absent'}")
