#!/usr/bin/env bash
# The GPU table of docs/results.md: MoCo-v2 on Fashion-MNIST for 100 epochs with BatchFormer off
# and on (configs/gpu_fmnist.yaml), the two runs side by side on one GPU, then `ssl-bf evaluate`.
#
#   bash scripts/gpu_fmnist.sh [OUT_DIR] [extra key=value overrides...]
#
# Environment: SSL_BF_GPU_RUNS (the run folders, default runs/gpu_fmnist; must not hold runs yet),
# SSL_BF_DATA_ROOT (a folder with the four Fashion-MNIST .gz files; default: the
# Debian package's folder), SSL_BF_BUDGET_MIN (a per-run safety stop, default 7 minutes: a run that
# reaches it stops early, checkpointed, and its epoch count shows it), SSL_BF_DEVICE (default cuda),
# SSL_BF_EVAL_ARGS (extra `ssl-bf evaluate` arguments, e.g. "--subset 1000" for a dry run),
# SSL_BF_SKIP_SMOKE=1 (skip the smoke stage, once the install is known to work).
# Writes OUT_DIR/gpu_runs.tar.gz (config, metrics, results of each run) and OUT_DIR/gpu_fmnist.log.
set -uo pipefail
OUT_DIR="${1:-runs/gpu_fmnist_out}"; shift || true
ROOT="${SSL_BF_DATA_ROOT:-/usr/share/datasets/fashion-mnist}"
BUDGET="${SSL_BF_BUDGET_MIN:-7}"
DEVICE="${SSL_BF_DEVICE:-cuda}"
RUNS="${SSL_BF_GPU_RUNS:-runs/gpu_fmnist}"
if [ -e "$RUNS/bf_false" ] || [ -e "$RUNS/bf_true" ]; then
    # A rerun would resume (or, with other overrides, silently extend) the earlier runs.
    echo "gpu_fmnist: $RUNS already holds runs; move it away or set SSL_BF_GPU_RUNS" >&2
    exit 2
fi
mkdir -p "$OUT_DIR" "$RUNS"
LOG="$OUT_DIR/gpu_fmnist.log"
exec > >(tee -a "$LOG") 2>&1

echo "== $(date -u +%FT%TZ) gpu_fmnist: budget ${BUDGET} min per run, device $DEVICE, data $ROOT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
nproc

# A 20-step smoke run and a quick evaluation first: a broken install fails in seconds, not minutes.
T0=$(date +%s)
if [ "${SSL_BF_SKIP_SMOKE:-0}" != 1 ]; then
    ssl-bf pretrain --config configs/gpu_fmnist.yaml "run.dir=$RUNS/smoke" "data.root=$ROOT" "train.device=$DEVICE" \
        train.max_steps=20 monitor.knn_every=0 "$@" > "$OUT_DIR/smoke.log" 2>&1 \
        && ssl-bf evaluate "$RUNS/smoke" --device auto --no-progress --subset 2000 >> "$OUT_DIR/smoke.log" 2>&1
    smoke=$?
    tail -n 20 "$OUT_DIR/smoke.log"
    echo "== smoke: $(( $(date +%s) - T0 )) s, rc $smoke"
    [ "$smoke" = 0 ] || exit "$smoke"
    rm -rf "$RUNS/smoke"
fi

T0=$(date +%s)
pids=()
for bf in false true; do
    name="bf_$bf"
    # 8 CPU threads each: the two runs share the machine's cores.
    OMP_NUM_THREADS=8 ssl-bf pretrain --config configs/gpu_fmnist.yaml \
        "run.dir=$RUNS/$name" "batchformer.enabled=$bf" "data.root=$ROOT" "train.device=$DEVICE" \
        "train.time_budget_min=$BUDGET" "$@" > "$OUT_DIR/pretrain_$name.log" 2>&1 &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
T1=$(date +%s)
echo "== pretraining (both runs, side by side): $((T1 - T0)) s, rc $rc"
for bf in false true; do tail -n 4 "$OUT_DIR/pretrain_bf_$bf.log"; done

pids=()
for bf in false true; do
    # --device auto: embed on the GPU; k-NN with faiss-cpu, whichever FAISS build is installed.
    OMP_NUM_THREADS=8 ssl-bf evaluate "$RUNS/bf_$bf" --device auto --no-progress ${SSL_BF_EVAL_ARGS:-} \
        > "$OUT_DIR/evaluate_bf_$bf.log" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || rc=1; done
echo "== evaluation: $(( $(date +%s) - T1 )) s, rc $rc"
for bf in false true; do echo "-- bf_$bf"; cat "$OUT_DIR/evaluate_bf_$bf.log"; done

tar -czf "$OUT_DIR/gpu_runs.tar.gz" --exclude='*.pt' --exclude='embeddings' --exclude='tensorboard' "$RUNS"
echo "== total $(( $(date +%s) - T0 )) s; wrote $OUT_DIR/gpu_runs.tar.gz"
exit $rc
