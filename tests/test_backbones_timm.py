"""timm:<model> per frame against timm's own forward_features / forward_head (tiny `test_*` models).

Needs the optional timm extra; `make test` runs them in their own venv (`make test-timm`, see Makefile),
elsewhere they are skipped where timm is not installed.
"""

from __future__ import annotations

import os

import pytest
import torch

try:  # pytest.importorskip, but a timm whose torchvision does not fit torch also skips (with the reason)
    import timm
except Exception as e:  # noqa: BLE001
    if os.environ.get("STECACHE_REQUIRE_TIMM"):  # `make test-timm`: its venv has timm, so a skip is a failure
        raise
    pytest.skip(f"timm not usable here: {type(e).__name__}: {e}", allow_module_level=True)

from stecache.backbones import load  # noqa: E402
from stecache.errors import CheckpointMismatch  # noqa: E402

TOL = 1e-6
MODELS = {  # name -> (kind, channels, grid side); 160 px inputs
    "test_vit": ("tokens", 64, 10),
    "test_convnext": ("map", 64, 5),
    "test_efficientnet": ("map", 256, 5),
}


def _weights(name: str, tmp_path, seed: int = 0):
    """A timm model with non-trivial random weights saved as safetensors, classifier included."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=7).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


@pytest.mark.parametrize("name", sorted(MODELS))
def test_timm_matches_forward_features_per_frame(tmp_path, name):
    kind, c, s = MODELS[name]
    ref, path = _weights(name, tmp_path)
    bb = load(f"timm:{name}", checkpoint=path, frames=3)
    assert bb.grid == (3, s, s) and bb.channels == c and bb.size == 160
    assert bb.preprocess.crop_size == 160 and bb.provenance()["weights"] == bb.checkpoint_sha256
    x = torch.randn(2, 3, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    tokens, pooled = bb.encode(x)
    with torch.no_grad():
        for b, t in [(0, 0), (1, 2)]:
            f = ref.forward_features(x[b : b + 1, :, t])
            expect = f[0, ref.num_prefix_tokens :].T.reshape(c, s, s) if kind == "tokens" else f[0]
            assert (tokens[b, t] - expect).abs().max() < TOL
        frames = x[1].transpose(0, 1)  # [T, 3, H, W]
        head_in = ref.forward_head(ref.forward_features(frames), pre_logits=True)
        assert (pooled[1] - head_in.mean(0)).abs().max() < TOL


def test_timm_bad_name_and_bad_weights(tmp_path):
    with pytest.raises(CheckpointMismatch, match="no such model"):
        load("timm:not_a_model_xyz")
    _, path = _weights("test_vit", tmp_path)
    with pytest.raises(CheckpointMismatch, match="does not fit"):
        load("timm:test_convnext", checkpoint=path)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        assert load("timm:test_vit").provenance()["weights"] == "random"


@pytest.mark.slow
def test_timm_head_trains_end_to_end_on_synthetic_data(tmp_path):
    from test_backbones_hf import train_end_to_end

    from stecache.annotations import load_dataset_dir
    from stecache.synth import synthesize

    synthesize(tmp_path / "d", n_clips=21)
    _, path = _weights("test_vit", tmp_path)
    out = train_end_to_end("timm:test_vit", load_dataset_dir(tmp_path / "d"), tmp_path, checkpoint=path)
    assert out["cache"].feature_shape == (8, 64, 10, 10)
