"""Stage two: train one classifier head from a feature cache with the paper's protocol (§III-B).

AdamW (decay 0.05 on weights, none on biases/norms), lr 1e-3 per 256 clips scaled with the global batch,
linear warm-up for min(warmup_epochs, epochs // 5) epochs then cosine to 0, per step; BCE-with-logits
(multi-label) or cross-entropy. Validation every epoch picks the best epoch (macro-F1 at 0.5 or Acc@1);
test is evaluated once with it. A killed run resumes bit-identically from its last epoch. Under torchrun,
DDP: every rank takes every world-th clip of the same global batch, loss normalised by the global batch.

Parts: config.py (TrainConfig, lr_at), pieces.py (head, optimiser, loss, batches, predictions, checks;
shared with sweep.py), checkpoint.py (per-epoch files, resume), runs.py (run folders: name, config.json,
finish, reading a finished run back), loop.py (`train`).
Python: `train(TrainConfig(head="ste", depth=2), "work/cache.zarr")`; CLI: `stecache train-head`.
"""

from .checkpoint import (
    FINISHED_FILES,
    RESUME_FILE,
    RESUME_FILES,
    cuda_rng_state,
    drop_resume_state,
    finite_weights,
    keep_if_best,
    restore,
    resume_checkpoint,
    run_identity,
    save_epoch,
)
from .config import LIMITS, TrainConfig, lr_at
from .loop import train
from .pieces import (
    check_classes,
    epoch_batches,
    epoch_loss,
    loss_fn,
    make_head,
    make_optimizer,
    non_finite_loss,
    predict,
    predict_many,
)
from .runs import (
    evaluate,
    finish,
    load_head,
    load_weights,
    open_run_cache,
    read_metrics,
    read_run,
    run_cache_url,
    run_name,
    write_run_config,
)

__all__ = [
    "FINISHED_FILES", "LIMITS", "RESUME_FILE", "RESUME_FILES", "TrainConfig", "check_classes",
    "cuda_rng_state", "drop_resume_state", "epoch_batches", "epoch_loss", "evaluate", "finish",
    "finite_weights", "keep_if_best", "load_head", "load_weights", "loss_fn", "lr_at", "make_head",
    "make_optimizer", "non_finite_loss", "open_run_cache", "predict", "predict_many", "read_metrics",
    "read_run", "restore", "resume_checkpoint", "run_cache_url", "run_identity", "run_name",
    "save_epoch", "train", "write_run_config",
]  # fmt: skip
