#!/usr/bin/env bash
# Rewrites only the resumed part of each expected_losses.json: the losses today's code reaches when
# it resumes the committed 4-step checkpoint to the end (steps 5-16). Steps 1-4, the checkpoints,
# metrics.jsonl and expected_test.safetensors stay as make.sh wrote them in 2026-12-04, and
# tests/test_legacy_checkpoints.py still requires the embeddings bit for bit.
#
# Run once, for issue 25 (2026-12-04, branch augment): the augmentation became torchvision's
# (per-image ColorJitter order, multiplicative brightness, contrast and saturation blended with the
# gray image, a true Gaussian blur, torchvision's crop sampler and antialiased resize). That
# changes every view drawn after the resume on purpose, so the old code's resumed losses cannot be
# reached any more; the old recipe is not kept as an option.
set -euo pipefail
cd "$(dirname "$0")"
SSL_BF=${SSL_BF:-ssl-bf}
NOTE=${NOTE:?"say why the resumed losses are rewritten, e.g. NOTE='issue 25: torchvision augmentation'"}
for name in mocov2_bf mocov3_bf; do
  full=$(mktemp -d)/$name
  cp -r "$name" "$full"
  $SSL_BF pretrain --config "$name/config.yaml" run.dir="$full" train.max_steps=0 train.log_every=1 \
      run.progress=false >/dev/null
  python3 - "$full/metrics.jsonl" "$name/expected_losses.json" "$NOTE" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r and "images_per_s" not in r}
old = json.load(open(sys.argv[2]))
resumed = [s for s in sorted(steps) if s > 4]
assert [steps[s] for s in sorted(steps) if s <= 4] == old["losses"][:4], "steps 1-4 must not move"
json.dump({"steps": sorted(steps), "losses": [steps[s] for s in sorted(steps)],
           "note": f"steps 1-4: the 2026-12-04 code (make.sh); steps {resumed[0]}-{resumed[-1]}: "
                   f"resumed by today's code ({sys.argv[3]})",
           "superseded_resumed_losses": old.get("superseded_resumed_losses", [])
           + [old["losses"][4:]]}, open(sys.argv[2], "w"), indent=1)
PY
  rm -rf "$(dirname "$full")"
done
