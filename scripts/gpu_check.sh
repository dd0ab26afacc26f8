#!/usr/bin/env bash
# One short GPU check (under 9 minutes on one H100/H200; every stage fails fast and has a timeout):
#   smoke  a 3-step tiny `torchrun` pretraining on the GPU: a broken install fails in seconds
#   (a)    NCCL really runs: `torchrun --nproc_per_node=1 -m ssl_bf pretrain` with
#          train.process_group=always (backend cpu:gloo,cuda:nccl, NCCL_DEBUG=INFO), 30 steps each of
#          MoCo-v2 + BatchFormer and MoCo-v3 + BatchFormer, ResNet-50 at 224 px, on a generated JPEG
#          image folder (2 classes x 256 train + 32 val, about 500 x 375), 8 DataLoader workers,
#          a tiny k-NN monitor when FAISS and ssl_bf.eval import; checks rc 0, finite losses, and
#          world_size 1 on cuda:0 in the start event; img/s from the epoch records
#   (b)    model step throughput: ResNet-50, 224 px, bf16 autocast + channels-last, synthetic uint8
#          crop pairs on the device (photometric ops + forward/backward/update), MoCo-v2
#          (batch 128) and MoCo-v3 (batch 256), BatchFormer off / on (projection), interleaved
#          rounds, median img/s and each variant's peak memory
#   (d)    several processes against one (benchmarks/multi_gpu_check.py under torchrun, one process
#          per visible GPU, NCCL): SyncBN in bf16 + channels-last, cross-rank shuffle-BN, the global
#          BatchFormer gather, gather_shards_to_main, each against the one-process result; with
#          fewer than 2 GPUs it runs nothing and the summary lists what stayed untested
#   (c)    ours vs the reference MoCo-v2 pipeline (benchmarks/fair_comparison.py), MoCo-v2
#          ResNet-50, same batch and workers, median step times after a warm-up on one long-lived
#          loader: a data-only ratio (TwoCropFolder + photometric ops on the device vs the PIL pipeline with
#          MoCo's own PIL blur), a model-only ratio (ssl-bf's step vs moco/builder.py's on the same
#          views, bf16 + channels-last on both sides) and the end-to-end ratio
# and a summary table, also written to $OUT/gpu_check.json and $OUT/gpu_check.md.
#
#   bash scripts/gpu_check.sh                  # on a GPU machine (exit 2 when no CUDA device is visible)
#   bash scripts/gpu_check.sh --cpu-smoke      # the same stages, tiny, on the CPU; (d) on 2 gloo processes
#   options: --batch-v2 N (128) --batch-v3 N (256) --workers N (8) --run-batch N (64: stage a)
#
# Environment: OUT (default runs/gpu_check; gets gpu_check.{log,json,md} and gpu_check_runs.tar.gz
# with the run logs, metrics and stage records: 4 files), PYTHON (default .venv/bin/python if it
# exists, else python3; torchrun is taken from beside it, else `$PYTHON -m torch.distributed.run`),
# GPU_CHECK_WORK (scratch folder for the JPEGs and run folders, kept; default a temporary folder,
# removed), GPU_CHECK_KNN (auto|on|off: the k-NN monitor in stage a), GPU_CHECK_DEADLINE_S (the
# whole script's time budget, default 540; each stage's timeout is cut to what is left).
#
# Preparing a bare machine whose python has torch but not kornia (e.g. the lent H200 image): carry
# wheels of kornia and kornia_rs (and faiss-cpu for the k-NN monitor, which then also needs
# `pip install --no-deps --no-build-isolation -e .` so that ssl_bf.eval imports) and put them on
# PYTHONPATH before running; ssl_bf itself is found through PYTHONPATH (the repo root).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
T_START=$SECONDS

MODE=gpu
BATCH_V2=128 BATCH_V3=256 WORKERS=8 RUN_BATCH=64
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) MODE=cpu-smoke ;;
        --batch-v2) BATCH_V2=${2:?--batch-v2 needs a number}; shift ;;
        --batch-v3) BATCH_V3=${2:?--batch-v3 needs a number}; shift ;;
        --workers) WORKERS=${2:?--workers needs a number}; shift ;;
        --run-batch) RUN_BATCH=${2:?--run-batch needs a number}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
PYTHON_EXE=$(command -v "$PYTHON") || { echo "gpu_check: python '$PYTHON' not found" >&2; exit 1; }
if [ -x "$(dirname "$PYTHON_EXE")/torchrun" ]; then
    TORCHRUN=("$(dirname "$PYTHON_EXE")/torchrun")
else
    TORCHRUN=("$PYTHON" -m torch.distributed.run)
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/gpu_check.json" "$OUT/gpu_check.md" "$OUT/gpu_check_runs.tar.gz"
if [ -n "${GPU_CHECK_WORK:-}" ]; then
    WORK=$GPU_CHECK_WORK KEEP_WORK=1
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ssl-bf-gpu-check.XXXXXX") KEEP_WORK=0
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
rm -rf "$WORK/runs" "$WORK/stages" "$WORK/logs" "$WORK/env.json" "$WORK/prepare.env"
mkdir -p "$WORK/runs" "$WORK/stages" "$WORK/logs"
DATA="$WORK/data"
DEADLINE=$((T_START + ${GPU_CHECK_DEADLINE_S:-540}))

LOG="$OUT/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

if [ "$MODE" = gpu ]; then
    DEVICE=cuda EXPECT_DEVICE=cuda:0 BACKBONE=resnet50 SIZE=224
    CLASSES=2 TRAIN_PER_CLASS=256 VAL_PER_CLASS=32
    RUN_STEPS=30 LOG_EVERY=10 KNN_EVERY=2 BANK=256 QUERY=64
    B_ROUNDS=5 B_STEPS=5 C_BATCH=$BATCH_V2 C_WARMUP=10 C_STEPS=40 C_QUEUE=65536 C_SIZE=$SIZE
    MODEL=()  # the presets as they are
    LIMIT_PREPARE=120 LIMIT_RUN=150 LIMIT_B=200 LIMIT_C=240 LIMIT_D=120
else
    DEVICE=cpu EXPECT_DEVICE=cpu BACKBONE=resnet18 SIZE=64
    CLASSES=2 TRAIN_PER_CLASS=16 VAL_PER_CLASS=4
    RUN_STEPS=6 LOG_EVERY=3 KNN_EVERY=1 BANK=32 QUERY=8 RUN_BATCH=8
    BATCH_V2=8 BATCH_V3=8 WORKERS=1
    B_ROUNDS=2 B_STEPS=1 C_BATCH=4 C_WARMUP=1 C_STEPS=3 C_QUEUE=256 C_SIZE=32  # (c): full-width ResNet-18
    MODEL=(backbone.width=8 moco.hidden_dim=64 moco.pred_hidden_dim=64 moco.queue_size=256)
    LIMIT_PREPARE=60 LIMIT_RUN=60 LIMIT_B=60 LIMIT_C=90 LIMIT_D=60
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny tensors: threads only add contention on a busy CI box
fi
OVERRIDE_ARGS=()
for o in "${MODEL[@]+"${MODEL[@]}"}"; do OVERRIDE_ARGS+=(--override "$o"); done

STAGE=start CARD=""
finish() {
    local rc=$? src
    set +e
    trap - EXIT
    "$PYTHON" benchmarks/gpu_check.py summary --work "$WORK" --out "$OUT" --mode "$MODE" --rc "$rc" \
        --failed-stage "$STAGE" --elapsed $((SECONDS - T_START)) --card "$CARD"
    src=$?
    [ "$rc" = 0 ] && rc=$src
    (cd "$WORK" && tar -czf "$OUT/gpu_check_runs.tar.gz" logs stages $(ls env.json 2>/dev/null))
    [ "$KEEP_WORK" = 1 ] || rm -rf "$WORK"
    echo "== gpu_check exit $rc; files in $OUT"
    exec >&- 2>&-  # let tee finish the log before the script returns
    wait "$TEE_PID" 2>/dev/null
    exit "$rc"
}
trap finish EXIT

# stage_limit SECONDS: the stage's timeout, cut to what is left of the whole budget.
stage_limit() {
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 10 ]; then
        echo "gpu_check: the overall time budget (GPU_CHECK_DEADLINE_S) is spent" >&2
        return 1
    fi
    [ "$1" -lt "$left" ] && left=$1
    echo "$left"
}

# run_stage NAME SECONDS COMMAND...: one stage under a timeout; a failure ends the script.
run_stage() {
    local name=$1 limit rc=0 t0=$SECONDS
    STAGE=$name
    limit=$(stage_limit "$2")
    shift 2
    echo "== [$name] $(date -u +%T) (timeout ${limit} s)"
    timeout -k 15 "$limit" "$@" || rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "gpu_check: stage $name timed out after $limit s" >&2; fi
    [ "$rc" = 0 ] || return "$rc"
    echo "== [$name] done in $((SECONDS - t0)) s"
}

# pretrain_run KEY NAME METHOD STEPS BATCH [overrides...]: torchrun, one process, forced process group.
pretrain_run() {
    local key=$1 name=$2 method=$3 steps=$4 batch=$5 limit port rc=0 t0 t1 wall
    shift 5
    local run_dir="$WORK/runs/$name" log="$WORK/logs/$name.log" knn=(monitor.knn_every=0) expect=()
    if [ "$KNN_MONITOR" = 1 ] && [ "$key" = nccl ]; then
        knn=("monitor.knn_every=$KNN_EVERY" "monitor.bank_subset=$BANK" "monitor.query_subset=$QUERY"
             monitor.full_sets=false)
        expect=(--expect-knn)
    fi
    STAGE=$key
    limit=$(stage_limit "$LIMIT_RUN")
    echo "== [$key: $name] $(date -u +%T) torchrun --nproc_per_node=1 pretrain, $method, $steps steps x $batch (timeout ${limit} s)"
    port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    t0=$(date +%s.%N)
    local overrides=()  # pretrain refuses a key given twice: a later value replaces an earlier one here
    mapfile -t overrides < <("$PYTHON" -c 'import sys
keys = {}
for a in sys.argv[1:]:
    keys[a.split("=", 1)[0]] = a
print("\n".join(keys.values()))' "run.dir=$run_dir" \
        data.name=imagefolder "data.root=$DATA" "data.num_workers=$WORKERS" "train.device=$DEVICE" \
        train.process_group=always "train.max_steps=$steps" "train.batch_size=$batch" \
        "train.log_every=$LOG_EVERY" "augment.image_size=$SIZE" "backbone.name=$BACKBONE" \
        run.tensorboard=false run.progress=false "${knn[@]}" "${MODEL[@]+"${MODEL[@]}"}" "$@")
    NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT timeout -k 15 "$limit" "${TORCHRUN[@]}" --nproc_per_node=1 \
        --master_addr=127.0.0.1 "--master_port=$port" \
        -m ssl_bf pretrain --config "configs/${method}_r50_imagenet.yaml" "${overrides[@]}" > "$log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    if [ "$rc" != 0 ]; then
        [ "$rc" = 124 ] && echo "gpu_check: $name timed out after $limit s" >&2
        echo "-- last lines of $log:"
        tail -n 40 "$log"
    fi
    cp "$run_dir/metrics.jsonl" "$WORK/logs/$name.metrics.jsonl" 2>/dev/null || true
    cp "$run_dir/config.yaml" "$WORK/logs/$name.config.yaml" 2>/dev/null || true
    "$PYTHON" benchmarks/gpu_check.py check-run "$run_dir" --name "$name" --json "$WORK/stages/${key}_$name.json" \
        --log "$log" --rc "$rc" --wall "$wall" --steps "$steps" --batch "$batch" \
        --expect-device "$EXPECT_DEVICE" "${expect[@]+"${expect[@]}"}"
    rm -rf "$run_dir/checkpoints"  # hundreds of MB each at ResNet-50
}

echo "== $(date -u +%FT%TZ) gpu_check $MODE in $ROOT; OUT=$OUT; work $WORK"
echo "python: $PYTHON_EXE; torchrun: ${TORCHRUN[*]}"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total --format=csv || true
    CARD=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n 1 || true)
else
    echo "nvidia-smi: not found"
fi

KNN_MODE=${GPU_CHECK_KNN:-auto}
PREPARE=(--work "$WORK" --folder "$DATA" --classes "$CLASSES" --train-per-class "$TRAIN_PER_CLASS"
         --val-per-class "$VAL_PER_CLASS" --knn "$KNN_MODE")
[ "$MODE" = gpu ] && PREPARE+=(--require-cuda)
run_stage prepare "$LIMIT_PREPARE" "$PYTHON" benchmarks/gpu_check.py prepare "${PREPARE[@]}"
# shellcheck disable=SC1091
source "$WORK/prepare.env"  # KNN_MONITOR=0|1

if [ "$MODE" = gpu ]; then  # a tiny run first: a broken install (CUDA, NCCL, kornia) fails in seconds
    pretrain_run smoke smoke_mocov2_bf mocov2 3 8 batchformer.enabled=true backbone.name=resnet18 \
        backbone.width=8 augment.image_size=64 moco.hidden_dim=64 moco.queue_size=256 train.log_every=1 \
        data.num_workers=2
fi

for method in mocov2 mocov3; do
    pretrain_run nccl "${method}_bf" "$method" "$RUN_STEPS" "$RUN_BATCH" batchformer.enabled=true \
        batchformer.position=projection
done

# (d) several processes against one: every visible GPU (at most 8); 2 gloo processes in the CPU smoke
if [ "$MODE" = gpu ]; then
    NGPU=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
    NPROC=$((NGPU > 8 ? 8 : NGPU)) D_DEVICE=cuda
else
    NGPU=0 NPROC=2 D_DEVICE=cpu
fi
if [ "$NPROC" -ge 2 ]; then
    D_PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    run_stage multi_gpu "$LIMIT_D" "${TORCHRUN[@]}" --nproc_per_node="$NPROC" --master_addr=127.0.0.1 \
        "--master_port=$D_PORT" benchmarks/multi_gpu_check.py --json "$WORK/stages/multi_gpu.json" --device "$D_DEVICE"
else
    run_stage multi_gpu 30 "$PYTHON" benchmarks/multi_gpu_check.py --json "$WORK/stages/multi_gpu.json" \
        --skip "only $NGPU GPU visible: no collective ran between two GPUs"
fi

run_stage throughput "$LIMIT_B" "$PYTHON" benchmarks/gpu_check.py throughput --json "$WORK/stages/throughput.json" \
    --device "$DEVICE" --backbone "$BACKBONE" --size "$SIZE" --batch-v2 "$BATCH_V2" --batch-v3 "$BATCH_V3" \
    --rounds "$B_ROUNDS" --steps "$B_STEPS" "${OVERRIDE_ARGS[@]+"${OVERRIDE_ARGS[@]}"}"

run_stage end_to_end "$LIMIT_C" "$PYTHON" benchmarks/gpu_check.py end-to-end --json "$WORK/stages/end_to_end.json" \
    --folder "$DATA" --device "$DEVICE" --backbone "$BACKBONE" --size "$C_SIZE" --batch "$C_BATCH" \
    --workers "$WORKERS" --warmup "$C_WARMUP" --steps "$C_STEPS" --queue "$C_QUEUE"

STAGE=""
