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
    echo "$(hostname): torchrun $NNODES nodes x $GPUS processes, rendezvous $HEAD:$PORT ($RDZV_ID); $cmd ${args[*]} $*" >&2
    exec torchrun --nnodes="$NNODES" --nproc-per-node="$GPUS" \
        --rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="$RDZV_ID" --max-restarts=0 \
        -m lossyvision.cli "$cmd" "${args[@]}" "$@"
}
