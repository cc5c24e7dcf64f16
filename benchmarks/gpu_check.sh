#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go, every result under one folder (default outputs/gpu-check):
# the gpu-marked tests, a bf16 and an fp16 training run of the quickstart recipe (real weights; it falls back
# loudly to captioning-tiny without the weights packages), and the speed benchmark
# in bf16, and on a machine with two GPUs a 2-process FSDP2 run. --dry-run prints the commands instead of running them. Run from the repository root.
set -uo pipefail

DRY=0
OUT=outputs/gpu-check
PY=${PYTHON:-python}
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT="$2"; shift ;;
        *) echo "usage: $0 [--dry-run] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done

status=0
run() {  # run NAME CMD...: CMD's output to $OUT/NAME.log, one ok / FAIL line each
    local name=$1; shift
    if [ "$DRY" = 1 ]; then
        echo "$* > $OUT/$name.log 2>&1"
        return
    fi
    if "$@" > "$OUT/$name.log" 2>&1; then echo "ok   $name"; else echo "FAIL $name (see $OUT/$name.log)"; status=1; fi
}

[ "$DRY" = 1 ] || mkdir -p "$OUT"
run tests-gpu "$PY" -m pytest -q -p no:cacheprovider -m gpu tests --junitxml="$OUT/tests-gpu.xml"
run make-data "$PY" -m mmtransfer.cli make-data data/synthetic
for precision in bf16 fp16; do
    run "train-$precision" "$PY" -m mmtransfer.cli train quickstart "precision=$precision" \
        "output_dir=$OUT/train-$precision"
done
run speed-bf16 "$PY" benchmarks/speed.py --device cuda --precision bf16 --out "$OUT/speed-bf16.json"
# FSDP2 on 2 GPUs (NCCL) through Accelerate's own plugin, when the machine has two; the CPU path is
# tests/test_fsdp.py
if [ "$DRY" = 1 ] || [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    run fsdp-2gpu "$PY" -m accelerate.commands.launch --use_fsdp --fsdp_version 2 --num_processes 2 \
        -m mmtransfer.cli train captioning-tiny stages.0.steps=20 "output_dir=$OUT/fsdp-2gpu"
fi
exit $status
