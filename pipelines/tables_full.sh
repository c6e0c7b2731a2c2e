#!/bin/sh
# The paper's full-size protocol (Tables I–III): Base backbones with official checkpoints, 16 frames at 224²
# on BOTH backbones (§III-B; `--frames 16`: UniFormerV2's native protocol is 8, VideoMAEv2's is 16),
# 100 epochs (5 warm-up + 95 cosine), lr 1e-3 per 256 clips, 3 seeds. Run on a GPU machine:
#   VMAE_CKPT=vit_b_k710_dl_from_giant.pth UNIF_CKPT=uniformerv2_b16_k710_k400.pth \
#   DATA="tinyvirat=/data/tinyvirat2 atomica=/data/atomica" sh pipelines/tables_full.sh
# Each DATA entry is NAME=DIR, a folder laid out as `stecache synth` writes it (data/README.md).
# Extraction: ~2.3 s/clip on a 2-core CPU, minutes per 10k clips on one GPU; scale out with
#   torchrun --nproc_per_node=8 -m stecache.cli extract ...   (ranks write disjoint shards of one cache).
# The sweep trains all heads of a cache in one pass; at c=768, 8×14×14 an STE_head d1 step needs
# ~0.8 s/clip on CPU, so this is a GPU job (--memory caps the heads trained side by side).
set -eu
BIN=${BIN:-.venv/bin}
WORK=${WORK:-work/full}
RUNS=${RUNS:-runs/full}
REPORT=${REPORT:-reports/full}
EPOCHS=${EPOCHS:-100}
SEEDS=${SEEDS:-0,1,2}
DEVICE=${DEVICE:-cuda}
MEMORY=${MEMORY:-40G}
BATCH=${BATCH:-64}  # lr scales with it (1e-3 per 256); STE d1 at 8x14x14x768 saves ~130 MB/clip for backward
: "${VMAE_CKPT:?set VMAE_CKPT to the official VideoMAEv2 ViT-B K710 distilled checkpoint}"
: "${UNIF_CKPT:?set UNIF_CKPT to the official UniFormerV2-B/16 K710→K400 checkpoint}"
: "${DATA:?set DATA to NAME=DIR pairs, TinyVIRAT-like (multi-label) first}"

CACHES=""
for entry in $DATA; do
    name=${entry%%=*}
    dir=${entry#*=}
    for bb in videomaev2:$VMAE_CKPT uniformerv2:$UNIF_CKPT; do
        backbone=${bb%%:*}
        ckpt=${bb#*:}
        cache="$WORK/cache/$name-$backbone.zarr"
        "$BIN/stecache" extract --backbone "$backbone" --checkpoint "$ckpt" --frames 16 --data "$dir" \
            --cache "$cache" --device "$DEVICE"
        CACHES="$CACHES $cache"
    done
done

# shellcheck disable=SC2086
"$BIN/stecache" ablate $CACHES --tables I,II,III --seeds "$SEEDS" --epochs "$EPOCHS" --batch-size "$BATCH" \
    --device "$DEVICE" --memory "$MEMORY" --out "$RUNS" --report "$REPORT"
echo "report: $REPORT/ablation.md"
# Fig. 1 for one run: stecache report --correlation "$RUNS/<ste-d1-s0-...>" --split val --out "$REPORT"
