#!/bin/bash
# Multi-node expert training (paper 1) with torchrun + DDP. Run the SAME command on every node:
#
#   HEAD=gpu-node-0 NNODES=2 tools/cluster/torchrun-train-expert.sh \
#       --shards /shared/shards/imagenet --variant j2k-r200 --out /shared/runs/mnasnet-j2k200-expert
#
# (SLURM: tools/cluster/slurm-train-expert.sbatch does exactly this with srun.)
#
# Settings (environment):
#   HEAD      host name or IP of the rendezvous node (any one of the nodes; required)
#   NNODES    number of nodes (required); torchrun waits until all of them have joined
#   GPUS      processes per node (default: the GPUs nvidia-smi lists)
#   PORT      rendezvous port on HEAD (default 29500)
#   RDZV_ID   job id shared by the nodes of one run (default lv-expert)
#   PRESET    paper settings (default marie2022-mnasnet-expert; marie2022-resnet50-expert, ...)
#   GLOBAL_BATCH  images per optimiser step over all GPUs, passed as --global-batch (default: the
#             preset's batch, the paper's: 320 MnasNet / 384 ResNet50)
#   VENV      a venv with lossyvision installed (optional; default: whatever python is on PATH)
# Everything after the script name goes to `train-expert` and overrides what the script sets
# (a -b/--batch-size or --global-batch there replaces GLOBAL_BATCH).
#
# Matching the paper under DDP: the paper trained with batch 320 (MnasNet) / 384 (ResNet50) on 4
# GPUs with DataParallel, i.e. a GLOBAL batch. train-expert takes a preset's batch as global: each
# of the NNODES x GPUS processes gets batch / (NNODES x GPUS), so 2 nodes x 4 GPUs train on 40 (48)
# images per GPU and the same 320 (384) per optimiser step, with the paper's lr. The global batch
# must be a multiple of the process count (320 = 8 x 40, 16 x 20, 32 x 10; 384 = 8 x 48, 16 x 24,
# 32 x 12); the command refuses one that is not, in one line. Another GLOBAL_BATCH keeps the
# preset's lr: scale --lr yourself (nothing is rescaled automatically).
# The KL term: the presets use --kl-reduction batchmean with alpha = ALPHA_SUM x paper batch (3.2
# for alpha 1e-2 at 320), which gives exactly the paper's gradient under DDP (per process CE_mean +
# alpha KL_sum_local / (B/W), averaged over the W processes = CE over the global batch + ALPHA_SUM x
# KL summed over it). Keep batchmean under DDP: with --kl-reduction sum each process sums its own
# share, and DDP's gradient averaging divides that KL weight by W.
#
# Data and run folder: every node reads the shards and rank 0 writes <out>/last.pt, best.pt,
# log.jsonl; on a restart every rank loads <out>/last.pt. So --shards and --out must be on a
# filesystem all nodes mount (or --shards an s3:// URL). Resume: rerun the same command; when
# <out>/last.pt exists the script adds --resume, and training continues from the last finished
# epoch with the same result as an uninterrupted run.
set -euo pipefail

: "${HEAD:?set HEAD to the host name or IP of the rendezvous node}"
: "${NNODES:?set NNODES to the number of nodes}"
if [[ -n "${VENV:-}" ]]; then
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
fi
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
if [[ -z "$GPUS" || "$GPUS" -lt 1 ]]; then
    echo "no GPUs found (nvidia-smi); set GPUS=N (processes per node)" >&2
    exit 2
fi
PORT=${PORT:-29500}
RDZV_ID=${RDZV_ID:-lv-expert}
PRESET=${PRESET:-marie2022-mnasnet-expert}

args=(--preset "$PRESET")

source "$(dirname "${BASH_SOURCE[0]}")/torchrun-common.sh"
launch train-expert last.pt "$@"
