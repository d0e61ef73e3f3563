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
#   GLOBAL_BATCH  images per optimiser step over all GPUs (default: the preset's batch, 320 / 384)
#   VENV      a venv with lossyvision installed (optional; default: whatever python is on PATH)
# Everything after the script name goes to `train-expert` and overrides what the script sets.
#
# Matching the paper under DDP: the paper trained with batch 320 (MnasNet) / 384 (ResNet50) on 4
# GPUs with DataParallel and summed the KL term over the whole batch (kl_reduction=sum, alpha 1e-2).
# Under DDP `--batch-size` is per process and each process computes its own loss, then gradients
# are averaged. So this script sets
#   --batch-size GLOBAL_BATCH / (NNODES * GPUS)                      (same images per step)
# The presets already use --kl-reduction batchmean with alpha = ALPHA_SUM * paper batch (3.2 for
# alpha 1e-2 at 320), which gives exactly the paper's gradient under DDP: per process
# CE_mean + alpha*B*KL_sum_local/(B/W), averaged over the W processes = CE over the global batch +
# alpha_sum * KL summed over it. A run given `--kl-reduction sum` is converted the same way below
# (keeping `sum` with a smaller per-process batch would shrink the KL weight by W).
# GLOBAL_BATCH must be a multiple of the number of processes (320 = 8 x 40, 16 x 20, 32 x 10).
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

# The preset's batch, alpha and KL reduction, read from the installed package (one source of truth).
read -r preset_batch preset_alpha preset_kl < <(python - "$PRESET" <<'EOF'
import sys
from lossyvision.train.classifier import PRESETS
p = PRESETS.get(sys.argv[1])
if p is None:
    sys.exit(f"unknown preset {sys.argv[1]!r}; choose one of {', '.join(sorted(PRESETS))}")
print(p.get("batch_size", 64), p.get("alpha", "-"), p.get("kl_reduction", "-"))
EOF
)
GLOBAL_BATCH=${GLOBAL_BATCH:-$preset_batch}
WORLD=$((NNODES * GPUS))
if (( GLOBAL_BATCH % WORLD != 0 )); then
    echo "GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of $WORLD processes ($NNODES nodes x $GPUS); pick a node/GPU count that divides it, or set GLOBAL_BATCH" >&2
    exit 2
fi
args=(--preset "$PRESET" --batch-size $((GLOBAL_BATCH / WORLD)))
if [[ "$preset_kl" == sum && "$WORLD" -gt 1 ]]; then
    alpha=$(python -c "print(round(float('$preset_alpha') * $GLOBAL_BATCH, 12))")
    args+=(--kl-reduction batchmean --alpha "$alpha")
fi

source "$(dirname "${BASH_SOURCE[0]}")/torchrun-common.sh"
launch train-expert last.pt "$@"
