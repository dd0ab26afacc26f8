"""Linear-probe speed on cached features: ssl-bf `cached` and `logreg` against scikit-learn.

The same 60,000 x 512 train / 10,000 x 512 test features for everyone, side by side in one run
(alternating), medians reported:
- sklearn: `LogisticRegression(solver="lbfgs")` with its defaults (C=1, max_iter=100) and, for
  reference, run to convergence (max_iter=1000);
- ours `logreg`: L-BFGS, an L2 sweep of 4 values (fit jointly on 8,192 rows) chosen on a held-out
  10% of train, then a warm-started refit on all rows;
- ours `logreg`, one fit at the L2 the sweep chose, on the 90% not held out (one fit's cost);
- ours `cached`: SGD, 8 learning rates at once, chosen on the held-out 10%, then refit
  (10 epochs, the default; and 5 epochs).
Features: Fashion-MNIST pixels through a fixed random ReLU layer (784 -> 512, seed 0), a
non-trivial problem of the right shape; Gaussian class blobs when Fashion-MNIST is missing.

    python benchmarks/linear_speed.py            # 60k x 512
    python benchmarks/linear_speed.py --quick    # 10k x 512 train, 2k test, no converged sklearn
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch

from bench_common import parse_args_with_threads


def features(n_train: int, n_test: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    g = torch.Generator().manual_seed(0)
    try:
        from ssl_bf.data import DataError, build_dataset

        tr, te = build_dataset("fashion-mnist", split="train"), build_dataset("fashion-mnist", split="test")
        proj = torch.randn(784, dim, generator=g) / 28

        def f(ds, n):
            x = ds.images[:n].reshape(min(n, len(ds)), -1).float() / 255
            return torch.relu(x @ proj).numpy(), ds.labels[:n].numpy()

        return (*f(tr, n_train), *f(te, n_test), "Fashion-MNIST random ReLU features")
    except (ImportError, DataError):
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(10, dim))
        ytr, yte = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
        xtr = (centres[ytr] + 3 * rng.normal(size=(n_train, dim))).astype(np.float32)
        xte = (centres[yte] + 3 * rng.normal(size=(n_test, dim))).astype(np.float32)
        return xtr, ytr, xte, yte, "Gaussian blobs (Fashion-MNIST not found)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=60_000)
    p.add_argument("--test", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3, help="runs of each fast method (median reported)")
    p.add_argument("--converged-repeats", type=int, default=1,
                   help="runs of sklearn max_iter=1000 (slow; 0 skips it)")
    p.add_argument("--quick", action="store_true", help="10k train, 2k test, skip converged sklearn")
    args = parse_args_with_threads(p)
    if args.quick:
        args.train, args.test, args.converged_repeats = 10_000, 2_000, 0

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from ssl_bf.eval.linear_cached import probe_cached, probe_logreg
    from ssl_bf.eval.linear_common import recipe_for

    xtr, ytr, xte, yte, source = features(args.train, args.test, args.dim)
    print(f"linear benchmark: {len(xtr)} x {xtr.shape[1]} train, {len(xte)} test ({source}), "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}")

    def sklearn(max_iter: int):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = LogisticRegression(C=1.0, max_iter=max_iter).fit(xtr, ytr)
            return 100.0 * model.score(xte, yte)
        return run

    chosen = {}

    def logreg_sweep() -> float:
        res = probe_logreg(xtr, ytr, xte, yte)
        chosen["l2"] = res.hyperparameters["l2"]
        return res.top1

    methods = {
        "sklearn lbfgs (defaults, max_iter=100)": (sklearn(100), args.repeats),
        "ours logreg (4-value L2 sweep + refit)": (logreg_sweep, args.repeats),
        "ours logreg (one fit at the chosen L2)": (
            lambda: probe_logreg(xtr, ytr, xte, yte, l2s=(chosen["l2"],), refit=False, sweep_rows=None).top1,
            args.repeats),
        "ours cached (8-lr SGD sweep + refit)": (lambda: probe_cached(xtr, ytr, xte, yte).top1, args.repeats),
        "ours cached, 5 epochs": (
            lambda: probe_cached(xtr, ytr, xte, yte, recipe=recipe_for("cached", epochs=5)).top1, args.repeats),
        "sklearn lbfgs converged (max_iter=1000)": (sklearn(1000), args.converged_repeats),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    top1: dict[str, float] = {}
    for r in range(max(args.repeats, args.converged_repeats)):
        for name, (fn, reps) in methods.items():
            if r >= reps:
                continue
            tic = time.perf_counter()
            top1[name] = fn()
            times[name].append(time.perf_counter() - tic)
            print(f"  run {r + 1}: {name}: {times[name][-1]:.2f} s, top-1 {top1[name]:.2f}%", flush=True)

    base = "sklearn lbfgs (defaults, max_iter=100)"
    conv = "sklearn lbfgs converged (max_iter=1000)"
    med = {name: statistics.median(t) for name, t in times.items() if t}
    print()
    print(f"{'method':42s}{'median s':>10s}{'top-1 %':>9s}{'speed-up':>10s}")
    for name, s in med.items():
        print(f"{name:42s}{s:10.2f}{top1[name]:9.2f}{med[base] / s:9.2f}x")
    for name in [n for n in med if n.startswith("ours")]:
        verdict = ("met" if med[base] / med[name] >= 5 and top1[name] >= top1[base] else "NOT met")
        line = (f"{name}: {med[base] / med[name]:.2f}x faster than sklearn defaults "
                f"({top1[name] - top1[base]:+.2f} top-1); target (>= 5x, >= top-1) {verdict}")
        if conv in med:
            line += f"; vs converged sklearn {med[conv] / med[name]:.1f}x ({top1[name] - top1[conv]:+.2f} top-1)"
        print(line)


if __name__ == "__main__":
    main()
