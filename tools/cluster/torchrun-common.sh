# Sourced by torchrun-train-*.sh: the parts both launchers share.

# The value of --out (or --out=...) among the arguments, or nothing.
out_arg() {
    local a prev="" out=""
    for a in "$@"; do
        case "$a" in
            --out=*) out=${a#--out=} ;;
            *) [[ "$prev" == --out ]] && out=$a ;;
        esac
        prev=$a
    done
    printf '%s' "$out"
}

# Whether ARGS (after the --) hold one of the options NAMES (as NAME, NAME=V, or -bN for -b).
has_opt() {
    local names=() a n
    while [[ $# -gt 0 && "$1" != -- ]]; do names+=("$1"); shift; done
    shift
    for a in "$@"; do
        for n in "${names[@]}"; do
            case "$a" in
                "$n" | "$n"=*) return 0 ;;
                -b?*) [[ "$n" == -b ]] && return 0 ;;
            esac
        done
    done
    return 1
}

# --global-batch GLOBAL_BATCH when GLOBAL_BATCH is set, unless the arguments give the batch
# themselves (-b per process, or --global-batch). Without either, the command's own default
# applies, and it is global too: the preset's batch (train-expert) or 8 (train-segmentation). The
# command divides it over the WORLD_SIZE processes (and refuses in one line if it does not divide).
add_batch_opts() {
    if [[ -n "${GLOBAL_BATCH:-}" ]] && ! has_opt -b --batch-size --global-batch -- "$@"; then
        args+=(--global-batch "$GLOBAL_BATCH")
    fi
}

# launch COMMAND CHECKPOINT ARGS...: torchrun `lossyvision.cli COMMAND` with the global array
# `args` and ARGS, adding --resume when <--out>/CHECKPOINT exists (a rerun after a failure).
# --max-restarts=0: a failed process ends the run on every node; rerunning the script (or the
# SLURM requeue) resumes from the checkpoint, which a torchrun restart would not (same argv, no --resume).
launch() {
    local cmd=$1 ckpt=$2 out
    shift 2
    out=$(out_arg "$@")
    if [[ -n "$out" && -f "$out/$ckpt" ]]; then
        args+=(--resume)
    fi
    add_batch_opts "$@"
    echo "$(hostname): torchrun $NNODES nodes x $GPUS processes, rendezvous $HEAD:$PORT ($RDZV_ID); $cmd ${args[*]+${args[*]}} $*" >&2
    exec torchrun --nnodes="$NNODES" --nproc-per-node="$GPUS" \
        --rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="$RDZV_ID" --max-restarts=0 \
        -m lossyvision.cli "$cmd" ${args[@]+"${args[@]}"} "$@"
}
