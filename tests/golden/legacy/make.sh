#!/usr/bin/env bash
# Made once, with the code of commit cb6c0e9 (2026-12-04, before the core was regrouped into
# models/ train/ knn/ checkpoints/): small training checkpoints in the layout of that day, and what
# that code computed from them. tests/test_legacy_checkpoints.py requires today's code to resume
# them to the same losses and to embed them to the same features, bit for bit (CPU).
# Not rerun by the tests: the files it wrote are committed.
set -euo pipefail
cd "$(dirname "$0")"
SSL_BF=${SSL_BF:-ssl-bf}
make_one() {  # name, overrides...
  local name=$1; shift
  rm -rf "$name" "/tmp/legacy-$name-full"
  # the committed state: stopped (with a checkpoint) after 4 of 16 steps
  $SSL_BF pretrain --config ../../../configs/tiny.yaml "$@" train.max_steps=4 train.log_every=1 \
      run.dir="$name" >/dev/null
  # what that code does next: the same command, resumed to the end in a copy
  cp -r "$name" "/tmp/legacy-$name-full"
  $SSL_BF pretrain --config ../../../configs/tiny.yaml "$@" train.log_every=1 \
      run.dir="/tmp/legacy-$name-full" >/dev/null
  python3 - "/tmp/legacy-$name-full/metrics.jsonl" "$name/expected_losses.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r and "epoch" in r and "images_per_s" not in r}
json.dump({"steps": sorted(steps), "losses": [steps[s] for s in sorted(steps)]}, open(sys.argv[2], "w"), indent=1)
PY
  # evaluation of the committed checkpoint: backbone features of the first 256 test images
  $SSL_BF embed --checkpoint "$name/checkpoints/last.pt" --split test --subset 256 --no-progress \
      --device cpu --out "$name/expected_test.safetensors" >/dev/null
  rm -rf "$name/tensorboard" "/tmp/legacy-$name-full"
}
make_one mocov2_bf batchformer.enabled=true
make_one mocov3_bf method=mocov3 batchformer.enabled=true train.optimizer=lars train.base_lr=0.5 \
    train.weight_decay=1e-6 moco.temperature=1.0 moco.momentum=0.99
