#!/bin/bash
# Multi-node segmentation training (paper 2: DeepLabv3+ on Cityscapes) with torchrun + DDP.
# Run the SAME command on every node:
#
#   HEAD=gpu-node-0 NNODES=2 tools/cluster/torchrun-train-segmentation.sh \
#       --shards /shared/shards/cityscapes --variant bpg-qp41 --out /shared/runs/seg-CO
#
# (SLURM: tools/cluster/slurm-train-segmentation.sbatch does exactly this with srun.)
#
# Settings (environment):
#   HEAD      host name or IP of the rendezvous node (any one of the nodes; required)
#   NNODES    number of nodes (required)
#   GPUS      processes per node (default: the GPUs nvidia-smi lists)
#   PORT      rendezvous port on HEAD (default 29500)
#   RDZV_ID   job id shared by the nodes of one run (default lv-seg)
#   GLOBAL_BATCH  images per optimiser step over all GPUs, passed as --global-batch (default: the
#             command's, 8, the paper's)
#   VENV      a venv with lossyvision installed (optional)
# Everything after the script name goes to `train-segmentation` and overrides what the script sets
# (a -b/--batch-size or --global-batch there replaces GLOBAL_BATCH).
#
# Paper settings: the command's defaults ARE paper 2's recipe (DeepLabv3+, resnet101, output
# stride 16, 768x768 crops, scale 0.5-2.0, SGD lr 0.01 poly 0.9, 90k iterations, batch 8); there is
# no preset to pass. Its batch is global: each of the NNODES x GPUS processes takes 8 / (NNODES x
# GPUS), so 8 GPUs -> 1 image each, with SyncBatchNorm over all of them (on by default under DDP).
# The batch must divide over the processes (8: 1, 2, 4 or 8 GPUs; the command refuses others in one
# line). More than 8 GPUs cannot keep the paper's batch; a larger GLOBAL_BATCH is a different
# recipe: the lr is not rescaled, scale --lr and --steps yourself.
#
# Data and run folder: --shards and --out must be on a filesystem all nodes mount (or --shards an
# s3:// URL). Resume: rerun the same command; when <out>/checkpoints/last.pt exists the script
# adds --resume (checkpoints every --ckpt-every steps, 2000 by default).
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
RDZV_ID=${RDZV_ID:-lv-seg}
args=()

source "$(dirname "${BASH_SOURCE[0]}")/torchrun-common.sh"
launch train-segmentation checkpoints/last.pt "$@"
