#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up, start the local 2-node SLURM test cluster,
# run pytest (slow and cluster tests included), stop the cluster even when tests fail.
# Extra arguments go to pytest (e.g. -k knn, -m "not slow and not cluster").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cluster_up=0
if bash tests/cluster/slurm-up.sh; then
  cluster_up=1
  trap 'bash tests/cluster/slurm-down.sh || true' EXIT
elif [ -n "${CI:-}" ]; then
  echo "error: the SLURM test cluster did not start (tests/cluster/slurm-up.sh)" >&2
  exit 1
else
  echo "warning: the SLURM test cluster did not start; cluster tests will be skipped" >&2
fi
# In CI a cluster test must not skip: the cluster tests fail instead of skipping.
[ -n "${CI:-}" ] && export SSL_BF_REQUIRE_SLURM=1
log=$(mktemp)
set +e
.venv/bin/python -m pytest -q -rs --durations=15 "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
if [ -n "${CI:-}" ] && grep -q "SLURM test cluster not running" "$log"; then
  echo "error: cluster tests were skipped in CI" >&2
  exit 1
fi
exit "$rc"
