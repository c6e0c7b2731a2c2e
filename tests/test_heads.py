"""Heads: shapes, gradients, overfitting, determinism, equations vs hand-written formulations, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stecache.errors import HeadConfigError, StecacheError
from stecache.heads import (
    HEADS,
    STEBlock,
    TrBlock,
    build_head,
    default_patch,
    describe,
    sincos_table,
    valid_depths,
)

SHAPE = (4, 16, 6, 4)  # n, c, h, w — h ≠ w so a swapped axis cannot pass
K = 4
CASES = [(name, d) for name in HEADS for d in range(5) if d in valid_depths(name)]
IDS = [f"{name}-{d}" for name, d in CASES]


def feats(B=3, shape=SHAPE, seed=0):
    return torch.randn(B, *shape, generator=torch.Generator().manual_seed(seed))


def close(a, b, rtol=1e-5):
    """Max abs error relative to the largest magnitude — 'fp32 tolerance ~1e-5 relative'."""
    return (a - b).abs().max().item() <= rtol * max(a.abs().max().item(), 1e-12)


# ---- the table and every head × depth -------------------------------------------------------------------


def test_default_depths_and_heads():
    assert [build_head(n, SHAPE, K).depth for n in HEADS] == [0, 1, 1, 1, 0, 0, 1, 4, 0]
    heads = lambda c: build_head("tr", (1, c, 1, 1), K, pos="none").blocks[0].num_heads
    assert (heads(16), heads(768), heads(200), heads(384)) == (1, 12, 2, 6)


def test_table_and_depths():
    assert set(HEADS) == {"meanfc", "tr", "ste", "stemean", "patch", "linear", "attentive", "vjepa2", "ep"}
    assert list(valid_depths("meanfc")) == [0] and list(valid_depths("patch")) == [0]
    assert valid_depths("ste")[0] == 0 and valid_depths("tr")[0] == 1 and valid_depths("stemean")[0] == 1
    assert len(CASES) == 15 + 1 + 4 + 1 + 1


@pytest.mark.parametrize("name,depth", CASES, ids=IDS)
def test_shapes(name, depth):
    head = build_head(name, SHAPE, K, depth)
    x = feats()
    assert head(x).shape == (3, K) and head(x).dtype == torch.float32
    assert head.blocks_output(x).shape == (3, *SHAPE)
    n_blocks = depth - 1 if name in ("attentive", "vjepa2") else depth  # + the cross-attention block
    assert len(head.blocks) == n_blocks if hasattr(head, "blocks") else depth == 0


@pytest.mark.parametrize("name,depth", CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, depth):
    head = build_head(name, SHAPE, K, depth).train()
    F.cross_entropy(head(feats()), torch.arange(3) % K).backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name,depth", CASES, ids=IDS)
def test_overfits_a_small_batch(name, depth):
    torch.manual_seed(0)
    head = build_head(name, SHAPE, K, depth)
    x, y = feats(8), torch.arange(8) % K
    lr = 1e-2 if name in ("linear", "ep", "attentive", "vjepa2") else 3e-3  # probes: reference init is small
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    with torch.no_grad():
        loss0 = F.cross_entropy(head.eval()(x), y).item()
    head.train()
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(head(x), y).backward()
        opt.step()
    with torch.no_grad():
        logits = head.eval()(x)
    assert (logits.argmax(1) == y).all()
    assert F.cross_entropy(logits, y).item() < 0.75 * loss0


@pytest.mark.parametrize("name,depth", CASES, ids=IDS)
def test_deterministic_under_seed(name, depth):
    def make(seed):
        torch.manual_seed(seed)
        return build_head(name, SHAPE, K, depth).eval()

    a, b, c = make(1), make(1), make(2)
    x = feats()
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))


# ---- equations against independent formulations ---------------------------------------------------------


def block(c=8, **kw):
    torch.manual_seed(0)
    b = STEBlock(c, **kw).eval()
    for p in b.parameters():  # random biases and norm affine too, so no term can hide behind a zero
        torch.nn.init.normal_(p, std=0.1)
    return b


def test_temporal_inception_vs_explicit_conv3d():
    b = block(fused=False)
    x = torch.randn(2, 8, 7, 3, 5)  # [B, c, n, h, w]
    ti = x.clone()
    for conv in b.ti:
        k = conv.weight.shape[2]
        ti = ti + F.conv3d(x, conv.weight, conv.bias, padding=(k // 2, 0, 0))  # eq. 1
    assert close(b.temporal(x), x + ti)  # argument of SE in eq. 2: x0 + TI(x0)


def test_temporal_inception_hand_computed():
    """c = 1, one 3-tap kernel picking x[t+1]: x0 + TI(x0) = 2·x + x[t+1] with zero 'same' padding."""
    for fused in (False, True):
        b = STEBlock(1, ti_kernels=(3,), fused=fused)
        with torch.no_grad():
            b.ti[0].weight.copy_(torch.tensor([0.0, 0.0, 1.0]).view(1, 1, 3, 1, 1))
            b.ti[0].bias.zero_()
        x = torch.arange(1.0, 6.0).view(1, 1, 5, 1, 1)
        assert b.temporal(x).flatten().tolist() == [4.0, 7.0, 10.0, 13.0, 10.0]


def test_spatial_excitation_vs_per_frame_conv2d():
    b = block(fused=False)
    x = torch.randn(2, 8, 5, 6, 4)
    frames = [F.conv2d(x[:, :, t], b.se.weight, b.se.bias, padding=1) for t in range(5)]
    assert close(b.spatial(x), torch.stack(frames, 2))


@pytest.mark.parametrize("fused,cl", [(False, False), (True, False), (True, True)])
def test_ste_block_vs_equations(fused, cl):
    b = block(fused=fused)
    x = torch.randn(2, 8, 5, 6, 4)
    z = 2 * x + sum(F.conv3d(x, m.weight, m.bias, padding=(m.weight.shape[2] // 2, 0, 0)) for m in b.ti)
    x1p = torch.stack([F.conv2d(z[:, :, t], b.se.weight, b.se.bias, padding=1) for t in range(5)], 2)
    t = F.layer_norm(x1p.permute(0, 2, 3, 4, 1), (8,), b.norm.weight, b.norm.bias, eps=1e-6)
    hidden = F.gelu(torch.einsum("bnhwc,dc->bnhwd", t, b.fc1.weight) + b.fc1.bias)
    mlp = torch.einsum("bnhwd,cd->bnhwc", hidden, b.fc2.weight) + b.fc2.bias
    expected = x1p + mlp.permute(0, 4, 1, 2, 3)  # eq. 3
    x_in = x.contiguous(memory_format=torch.channels_last_3d) if cl else x
    assert close(b(x_in), expected)


def test_patch_classifier_vs_einsum():
    shape = (4, 16, 6, 4)
    head = build_head("patch", shape, K, patch=(2, 3, 2))
    torch.nn.init.normal_(head.classifier.conv.bias)
    x = feats(shape=shape)  # [B, n, c, h, w]
    B = x.shape[0]
    cubes = x.reshape(B, 2, 2, 16, 2, 3, 2, 2)  # [B, n/pt, pt, c, h/ph, ph, w/pw, pw]
    W = head.classifier.conv.weight  # [K, c, pt, ph, pw]
    bias = head.classifier.conv.bias[:, None]
    per_patch = torch.einsum("bipcjqkr,ecpqr->beijk", cubes, W).flatten(2) + bias  # [B, K, N]
    assert per_patch.shape == (B, K, 8)  # N = 2·2·2 patches
    assert close(head(x), per_patch.mean(2))  # eq. 4


def test_meanfc_vs_functional():
    head = build_head("meanfc", SHAPE, K).eval()
    torch.nn.init.normal_(head.classifier.norm.weight)
    torch.nn.init.normal_(head.classifier.norm.bias)
    x = feats()
    m = head.classifier
    pooled = F.layer_norm(x.mean((1, 3, 4)), (16,), m.norm.weight, m.norm.bias, eps=1e-6)
    assert close(head(x), F.linear(pooled, m.fc.weight, m.fc.bias))
    assert head.blocks_output(x).equal(x)


def test_tr_block_vs_hand_attention():
    torch.manual_seed(0)
    blk = TrBlock(16, num_heads=2).eval()
    x = torch.randn(2, 10, 16)
    qkv = F.layer_norm(x, (16,), blk.norm1.weight, blk.norm1.bias, 1e-6) @ blk.qkv.weight.T + blk.qkv.bias
    q, k, v = qkv.split(16, dim=-1)  # rows 0:c are q, c:2c k, 2c:3c v, each head-major
    split = lambda t: t.view(2, 10, 2, 8).transpose(1, 2)  # [B, H, L, D]
    att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(8), -1) @ split(v)
    y = x + att.transpose(1, 2).reshape(2, 10, 16) @ blk.proj.weight.T + blk.proj.bias
    t = F.layer_norm(y, (16,), blk.norm2.weight, blk.norm2.bias, 1e-6)
    expected = y + F.gelu(t @ blk.fc1.weight.T + blk.fc1.bias) @ blk.fc2.weight.T + blk.fc2.bias
    assert close(blk(x), expected)


def test_tr_head_is_blocks_then_meanfc_over_tokens():
    head = build_head("tr", SHAPE, K, 2, pos="sincos").eval()
    x = feats()
    t = x.permute(0, 1, 3, 4, 2).reshape(3, -1, 16) + sincos_table(4 * 6 * 4, 16)
    for blk in head.blocks:
        t = blk(t)
    assert close(head.blocks_output(x), t.view(3, 4, 6, 4, 16).permute(0, 1, 4, 2, 3))
    assert close(head(x), head.classifier.fc(head.classifier.norm(t.mean(1))))


def test_stemean_is_ste_blocks_then_meanfc():
    torch.manual_seed(0)
    ste = build_head("ste", SHAPE, K, 2).eval()
    sm = build_head("stemean", SHAPE, K, 2).eval()
    sm.blocks.load_state_dict(ste.blocks.state_dict())
    x = feats()
    assert close(sm.blocks_output(x), ste.blocks_output(x))
    assert close(sm(x), sm.classifier(ste.blocks_output(x).transpose(1, 2)))


def test_ste_depth0_is_patch():
    torch.manual_seed(3)
    ste = build_head("ste", SHAPE, K, 0)
    torch.manual_seed(3)
    patch = build_head("patch", SHAPE, K)
    assert ste.state_dict().keys() == patch.state_dict().keys()
    x = feats()
    assert torch.equal(ste(x), patch(x))


@pytest.mark.parametrize(
    "opts",
    [dict(fused=True, fold_identity=False, channels_last=False), dict(fused=True, channels_last=False),
     dict(fused=True, channels_last=True), dict(fused=False, channels_last=True)],
    ids=["merged", "merged+identity", "merged+identity+cl3d", "plain+cl3d"],
)  # fmt: skip
@pytest.mark.parametrize("name", ["ste", "stemean"])
def test_fast_paths_equal_plain(name, opts):
    shape = (8, 32, 7, 7)
    torch.manual_seed(0)
    plain = build_head(name, shape, K, 2, fused=False, channels_last=False).eval()
    fast = build_head(name, shape, K, 2, **opts).eval()
    fast.load_state_dict(plain.state_dict())
    x, y = feats(2, shape), torch.tensor([0, 3])
    out_p, out_f = plain(x), fast(x)
    assert close(out_f, out_p) and close(fast.blocks_output(x), plain.blocks_output(x))
    F.cross_entropy(out_p, y).backward()
    F.cross_entropy(out_f, y).backward()
    for (n1, p1), (_, p2) in zip(plain.named_parameters(), fast.named_parameters(), strict=True):
        assert close(p2.grad, p1.grad), n1  # grads reach each of the three kernels


def test_sincos_table_values():
    t = sincos_table(3, 4)
    assert torch.allclose(t[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert torch.allclose(t[2], torch.tensor([math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]))


def test_default_patch_tiles_every_grid():
    assert default_patch((8, 14, 14)) == (2, 7, 7)  # 16 patches on the ViT-B grid
    assert default_patch((8, 7, 7)) == (2, 7, 7)
    assert default_patch((4, 4, 4)) == (2, 4, 4)
    assert default_patch((16, 16, 16)) == (2, 4, 4)
    assert default_patch((5, 13, 11)) == (1, 1, 1)
    for grid in [(8, 14, 14), (4, 4, 4), (8, 7, 7), (1, 1, 1)]:
        head = build_head("ste", (grid[0], 8, *grid[1:]), K, 0)
        assert head(torch.randn(1, grid[0], 8, *grid[1:])).shape == (1, K)


# ---- parameter counts ------------------------------------------------------------------------------------


def test_param_counts_at_base_shape():
    rows = {(r["head"], r["depth"]): r for r in describe()}
    c, K26, L = 768, 26, 8 * 14 * 14
    ti = c * c * (3 + 5 + 7) + 3 * c
    se = c * c * 9 + c
    mlp = 2 * c * 4 * c + 4 * c + c + 2 * c  # fc1, fc2, LayerNorm
    patch = c * K26 * 2 * 7 * 7 + K26
    meanfc = 2 * c + c * K26 + K26
    tr_block = 4 * c * c + 4 * c + 2 * c * 4 * c + 5 * c + 4 * c
    assert rows["ste", 1]["params"] == ti + se + mlp + patch == 20_839_706  # perf-baseline.md's count
    assert rows["ste", 4]["params"] == 4 * (ti + se + mlp) + patch
    assert rows["stemean", 2]["params"] == 2 * (ti + se + mlp) + meanfc
    assert rows["meanfc", 0]["params"] == meanfc == 21_530
    assert rows["patch", 0]["params"] == patch
    assert rows["tr", 3]["params"] == 3 * tr_block + L * c + meanfc
    assert rows["ste", 1]["gflops"] == pytest.approx(44.455, abs=0.01)  # merged 7-tap TI


# ---- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kw,match",
    [
        (("resnet", SHAPE, K), {}, "unknown head 'resnet'"),
        (("tr", SHAPE, K, 0), {}, "takes depth 1..32"),
        (("stemean", SHAPE, K, 0), {}, "takes depth 1..32"),
        (("meanfc", SHAPE, K, 1), {}, "takes depth 0..0"),
        (("patch", SHAPE, K, 2), {}, "takes depth 0..0"),
        (("ste", SHAPE, K, 33), {}, "takes depth 0..32"),
        (("ste", SHAPE, K, 1), dict(patch=(2, 4, 4)), r"patch \(2, 4, 4\) does not tile the n×h×w = 4×6×4"),
        (("patch", SHAPE, K), dict(patch=(3, 1, 1)), "does not tile"),
        (("ste", SHAPE, K, 1), dict(ti_kernels=(3, 4)), "must be odd"),
        (("ste", SHAPE, K, 1), dict(ti_kernels=()), "must be odd"),
        (("ste", SHAPE, K, 1), dict(se_kernel=2), "se_kernel 2 must be odd"),
        (("stemean", SHAPE, K, 1), dict(patch=(2, 2, 2)), "stemean pools by mean"),
        (("tr", SHAPE, K, 1), dict(num_heads=3), "num_heads 3 does not divide the 16 channels"),
        (("tr", SHAPE, K, 1), dict(pos="rope"), "pos 'rope'"),
        (("meanfc", SHAPE, K), dict(patch=(1, 1, 1)), r"has no option \['patch'\]"),
        (("ste", (4, 16, 6), K, 1), {}, "feature_shape must be 4 positive ints"),
        (("ste", SHAPE, 0, 1), {}, "num_classes must be a positive int"),
    ],
)
def test_config_errors(args, kw, match):
    with pytest.raises(HeadConfigError, match=match):
        build_head(*args, **kw)


def test_wrong_input_shape_is_a_clear_error():
    head = build_head("ste", SHAPE, K, 1)
    with pytest.raises(StecacheError, match=r"do not fit this head, built for \[B, 4, 16, 6, 4\]"):
        head(torch.randn(2, 4, 16, 4, 6))


def test_cli_describe():
    from click.testing import CliRunner

    from stecache.cli import cli

    r = CliRunner().invoke(cli, ["heads", "--describe", "--shape", "8,32,7,7", "--classes", "5"])
    assert r.exit_code == 0, r.output
    assert "ste" in r.output and "stemean" in r.output
    ste1 = [ln for ln in r.output.splitlines() if ln.startswith("| ste |")][0]
    params = [r["params"] for r in describe((8, 32, 7, 7), 5, [1]) if r["head"] == "ste"][0]
    assert f"| {params:,} (" in ste1
    bad = CliRunner().invoke(cli, ["heads", "--describe", "--shape", "8,32,7"])
    assert bad.exit_code != 0 and "--shape" in bad.output


def test_fused_equals_plain_when_fewer_frames_than_taps():
    shape = (2, 8, 3, 5)  # n = 2 < 7 taps: most taps fall in the zero padding
    torch.manual_seed(0)
    plain = build_head("ste", shape, K, 1, fused=False, channels_last=False).eval()
    fast = build_head("ste", shape, K, 1).eval()
    fast.load_state_dict(plain.state_dict())
    x = feats(2, shape)
    assert close(fast.blocks_output(x), plain.blocks_output(x)) and close(fast(x), plain(x))


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("ste", {"patch": "foo"}, "bad option value"),
        ("ste", {"patch": (3, 3)}, "bad option value|tile|patch"),
        ("stemean", {"dropout": "abc"}, "must be a number"),
        ("ste", {"drop_path": -1}, r"\[0, 1\)"),
        ("ste", {"fused": "maybe"}, "true or false"),
        ("ste", {"mlp_ratio": 0}, "> 0"),
    ],
)
def test_bad_option_values_are_one_line_errors(name, options, match):
    with pytest.raises(HeadConfigError, match=match) as info:
        build_head(name, (4, 8, 4, 4), 3, 1, **options)
    assert "\n" not in str(info.value)


# ---- probes (linear, attentive, vjepa2, ep) against independent formulations ---------------------------


def _randomise(module, std=0.1):
    """Random values everywhere (biases, norms, queries), so no term can hide behind a zero or a one."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


def _grads(head, x, y):
    head.zero_grad()
    F.cross_entropy(head(x), y).backward()
    return {n: p.grad.clone() for n, p in head.named_parameters()}


def _check_vs_reference(head, reference, x, rtol=1e-5):
    """Outputs and gradients of every parameter equal the reference's (a function of head's parameters)."""
    y = torch.arange(len(x)) % K
    assert close(head(x), reference(x), rtol)
    g_head = _grads(head, x, y)
    head.zero_grad()
    F.cross_entropy(reference(x), y).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and close(g_head[name], p.grad, 1e-4), name


def test_linear_probe_vs_batchnorm_by_hand():
    head = _randomise(build_head("linear", SHAPE, K))
    fc = head.classifier[2]
    x = feats(5)

    def reference(x):  # training: batch statistics, biased variance, eps 1e-6, no affine (MAE linprobe)
        z = x.mean((1, 3, 4))
        z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-6)
        return z @ fc.weight.T + fc.bias

    _check_vs_reference(head.train(), reference, x)
    bn = head.classifier[1]
    assert not bn.affine and bn.eps == 1e-6
    head.eval()  # eval: the running statistics
    z = x.mean((1, 3, 4))
    expect = (z - bn.running_mean) / torch.sqrt(bn.running_var + 1e-6) @ fc.weight.T + fc.bias
    assert close(head(x), expect)
    head.train()
    assert head(x[:1]).shape == (1, K)  # a 1-clip batch (last of an epoch) does not fail


def _attentive_reference(head, H):
    """V-JEPA's attentive probe written out: self-attention blocks, then LN'd keys/values for the queries."""
    pool, blk = head.classifier, head.classifier.block
    c = SHAPE[1]
    D = c // H

    def reference(x):
        B = len(x)
        t = x.permute(0, 1, 3, 4, 2).reshape(B, -1, c)  # tokens in (n, h, w) order
        for b in head.blocks:
            t = b(t)  # TrBlock, checked against hand attention above
        xn = F.layer_norm(t, (c,), blk.norm1.weight, blk.norm1.bias, 1e-5)
        out = []
        for i in range(B):
            q0 = pool.query[0]  # [M, c]
            qp = q0 @ blk.q.weight.T + blk.q.bias
            kv = xn[i] @ blk.kv.weight.T + blk.kv.bias
            k, v = kv[:, :c], kv[:, c:]  # W_kv rows: keys first, then values (head-major within each)
            heads = []
            for h in range(H):
                s = slice(h * D, (h + 1) * D)
                a = torch.softmax(qp[:, s] @ k[:, s].T / math.sqrt(D), -1)
                heads.append(a @ v[:, s])
            q1 = q0 + torch.cat(heads, -1)
            n2 = F.layer_norm(q1, (c,), blk.norm2.weight, blk.norm2.bias, 1e-5)
            q2 = q1 + F.gelu(n2 @ blk.fc1.weight.T + blk.fc1.bias) @ blk.fc2.weight.T + blk.fc2.bias
            out.append(q2.mean(0) @ pool.fc.weight.T + pool.fc.bias)
        return torch.stack(out)

    return reference


@pytest.mark.parametrize("depth,queries,heads", [(1, 1, 1), (1, 3, 2), (2, 2, 4)])
def test_attentive_probe_vs_explicit_cross_attention(depth, queries, heads):
    head = _randomise(build_head("attentive", SHAPE, K, depth, num_queries=queries, num_heads=heads)).train()
    _check_vs_reference(head, _attentive_reference(head, heads), feats())


def test_vjepa2_preset_and_init():
    head = build_head("vjepa2", (2, 64, 2, 2), K)
    assert head.depth == 4 and len(head.blocks) == 3
    assert head.classifier.block.num_heads == 16 and head.classifier.query.shape == (1, 1, 64)
    assert head.blocks[0].num_heads == 16
    torch.manual_seed(0)
    big = build_head("attentive", (1, 256, 8, 8), K, 3)
    std = lambda w: w.std().item()
    # trunc_normal(0.02), then ÷√(2·id): blocks 1, 2 and the cross block sharing id 2 (the reference's quirk)
    assert std(big.blocks[0].fc2.weight) == pytest.approx(0.02 * 0.88 / math.sqrt(2), rel=0.1)
    assert std(big.blocks[1].proj.weight) == pytest.approx(0.02 * 0.88 / 2, rel=0.1)
    assert std(big.classifier.block.fc2.weight) == pytest.approx(0.02 * 0.88 / 2, rel=0.1)
    assert std(big.classifier.block.q.weight) == pytest.approx(0.02 * 0.88, rel=0.1)
    assert big.classifier.block.norm1.eps == 1e-5


@pytest.mark.parametrize("queries,d_out", [(4, 1), (8, 2), (1, 1)])
def test_efficient_probe_vs_per_query_loop(queries, d_out):
    head = _randomise(build_head("ep", SHAPE, K, num_queries=queries, d_out=d_out)).train()
    ep, fc = head.classifier[0], head.classifier[2]
    c = SHAPE[1]
    chunk = c // d_out // queries
    assert not hasattr(ep, "k") and ep.v.bias is None  # keys are the raw tokens; no value bias

    def reference(x):
        rows = []
        for i in range(len(x)):
            t = x[i].permute(0, 2, 3, 1).reshape(-1, c)  # [N, c]
            v = t @ ep.v.weight.T  # [N, c/d_out]
            z = []
            for m in range(queries):
                a = torch.softmax(t @ ep.query[0, m] / math.sqrt(c), 0)  # [N]
                z.append(a @ v[:, m * chunk : (m + 1) * chunk])
            rows.append(torch.cat(z))
        z = torch.stack(rows)
        z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-6)
        return z @ fc.weight.T + fc.bias

    _check_vs_reference(head, reference, feats(4))


def test_ep_default_queries_and_errors():
    assert build_head("ep", (1, 768, 1, 1), K).classifier[0].num_queries == 32
    assert build_head("ep", (1, 16, 1, 1), K).classifier[0].num_queries == 16
    with pytest.raises(HeadConfigError, match="divisible by num_queries 5"):
        build_head("ep", SHAPE, K, num_queries=5)
    with pytest.raises(HeadConfigError, match="d_out 3"):
        build_head("ep", SHAPE, K, d_out=3)
    with pytest.raises(HeadConfigError, match="takes depth 4..4"):
        build_head("vjepa2", SHAPE, K, 2)
    with pytest.raises(HeadConfigError, match=r"has no option \['pos'\]"):
        build_head("vjepa2", SHAPE, K, pos="none")


def test_probe_param_counts_at_base_shape():
    rows = {(r["head"], r["depth"]): r for r in describe()}
    c, K26 = 768, 26
    xblock = (c * c + c) + (2 * c * c + 2 * c) + 4 * c + (2 * c * 4 * c + 5 * c)  # q, kv, 2 LN, MLP
    tr_block = 4 * c * c + 4 * c + 2 * c * 4 * c + 5 * c + 4 * c
    assert rows["linear", 0]["params"] == c * K26 + K26
    assert rows["attentive", 1]["params"] == c + xblock + c * K26 + K26
    assert rows["vjepa2", 4]["params"] == 3 * tr_block + c + xblock + c * K26 + K26
    assert rows["ep", 0]["params"] == 32 * c + c * c + c * K26 + K26


def test_ste_default_layout_is_the_fastest_measured_on_the_device():
    """CPU: the merged kernel without channels-last (1.30× vs 1.16× over the literal form, BENCHMARKS.md)."""
    head = build_head("ste", SHAPE, K, 1).eval()
    assert head.channels_last is None
    x = feats()
    seen = []
    hook = head.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    head(x)
    hook.remove()
    assert seen == [True]  # contiguous (NCDHW) on CPU
    forced = build_head("ste", SHAPE, K, 1, channels_last=True).eval()
    forced.load_state_dict(head.state_dict())
    assert close(forced(x), head(x))
