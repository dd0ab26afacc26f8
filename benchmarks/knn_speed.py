"""k-NN speed: ssl-bf (one FAISS search for max k) against the DINO-style torch reference.

Both score the same (k, T) pairs on the same random embeddings, side by side in one run,
alternating, and report medians:
- ours: `ssl_bf.knn.knn_accuracy` end to end (normalise, build IndexFlatIP, one search for
  max(k), slice every (k, T));
- reference: chunks of 100 queries (DINO's 100 chunks of a 10k test set), one torch matmul per
  chunk against the normalised train matrix, then `topk` separately for each k and a one-hot vote.
Effective GFLOP/s = 2 * N * Q * D / seconds, printed beside this machine's sgemm GFLOP/s (torch and
numpy BLAS at the k-NN shape, the best of the two).

    python benchmarks/knn_speed.py            # 1,000,000 x 256 train, 10,000 test, k = 20 and 200
    python benchmarks/knn_speed.py --quick    # 100,000 x 256 train, 2,000 test
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from bench_common import parse_args_with_threads

from ssl_bf.knn import knn_accuracy

NOISE = 3.5  # class-blob noise: top-1 well below 100%, so a wrong vote would show


def sgemm_gflops(d: int, repeats: int = 5) -> dict[str, float]:
    """Best sgemm throughput at the k-NN shape: (4096 x D) @ (D x 16384)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, d), dtype=np.float32)
    b = rng.standard_normal((d, 16384), dtype=np.float32)
    flops = 2 * a.shape[0] * d * b.shape[1]
    out = {}
    for name, fn in [("torch", lambda: torch.from_numpy(a) @ torch.from_numpy(b)), ("numpy", lambda: a @ b)]:
        fn()
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tic)
        out[name] = flops / min(times) / 1e9
    return out


def torch_reference(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor,
                    ks, temperatures, num_classes: int, chunk: int = 100) -> list[dict]:
    """DINO-style: matmul per chunk of queries, then topk separately for each k, one-hot vote."""
    train_n = torch.nn.functional.normalize(train, dim=1)
    test_n = torch.nn.functional.normalize(test, dim=1)
    top1 = {(k, t): 0 for k in ks for t in temperatures}
    for start in range(0, len(test_n), chunk):
        q = test_n[start:start + chunk]  # (B, D)
        y = test_y[start:start + chunk]
        sims = q @ train_n.T  # (B, N)
        for k in ks:
            s, idx = sims.topk(k, dim=1)  # (B, k), recomputed for every k
            onehot = torch.zeros(len(q) * k, num_classes).scatter_(1, train_y[idx].view(-1, 1), 1)
            for t in temperatures:
                w = (s / t).exp().view(-1, k, 1)
                scores = (onehot.view(len(q), k, num_classes) * w).sum(1)  # (B, C)
                top1[(k, t)] += int((scores.argmax(1) == y).sum())
    return [{"k": k, "temperature": t, "top1": 100.0 * top1[(k, t)] / len(test)} for k, t in top1]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=1_000_000)
    p.add_argument("--test", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--k", type=int, nargs="+", default=[20, 200])
    p.add_argument("--temperature", type=float, nargs="+", default=[0.07])
    p.add_argument("--repeats", type=int, default=3, help="runs of each (median reported)")
    p.add_argument("--quick", action="store_true", help="100k x 256 train, 2k test")
    args = parse_args_with_threads(p)
    if args.quick:
        args.train, args.test = 100_000, 2_000
    n, q, d = args.train, args.test, args.dim
    print(f"k-NN benchmark: train {n} x {d}, test {q}, k {args.k}, T {args.temperature}, "
          f"{torch.get_num_threads()} torch threads")
    gemm = sgemm_gflops(d)
    best_gemm = max(gemm.values())
    print("sgemm GFLOP/s at (4096 x D) @ (D x 16384): " + ", ".join(f"{k} {v:.1f}" for k, v in gemm.items()))

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.classes, d), dtype=np.float32)
    train_y = rng.integers(0, args.classes, n)
    test_y = rng.integers(0, args.classes, q)
    train = np.empty((n, d), np.float32)
    for s in range(0, n, 1 << 16):  # blocks: no float64 temporaries of the full matrix
        rows = slice(s, min(n, s + (1 << 16)))
        noise = rng.standard_normal((rows.stop - rows.start, d), dtype=np.float32)
        train[rows] = centres[train_y[rows]] + NOISE * noise
    test = centres[test_y] + NOISE * rng.standard_normal((q, d), dtype=np.float32)
    print(f"data ready, peak RSS {peak_rss_gib():.2f} GiB")

    ours_t, ref_t, ours_res, ref_res = [], [], None, None
    train_t, train_yt = torch.from_numpy(train), torch.from_numpy(train_y)
    test_t, test_yt = torch.from_numpy(test), torch.from_numpy(test_y)
    for r in range(args.repeats):
        tic = time.perf_counter()
        ours_res = knn_accuracy(train, train_y, test, test_y, ks=args.k, temperatures=args.temperature,
                                num_classes=args.classes)
        ours_t.append(time.perf_counter() - tic)
        if r == 0:
            rss_ours = peak_rss_gib()
        tic = time.perf_counter()
        ref_res = torch_reference(train_t, train_yt, test_t, test_yt, args.k, args.temperature, args.classes)
        ref_t.append(time.perf_counter() - tic)
        print(f"  run {r + 1}: ours {ours_t[-1]:.2f} s, torch reference {ref_t[-1]:.2f} s", flush=True)
    ours_s, ref_s = statistics.median(ours_t), statistics.median(ref_t)
    flops = 2 * n * q * d
    agree = all(abs(a["top1"] - b["top1"]) < 0.05 for a, b in zip(ours_res, ref_res))
    print()
    print(f"{'':22s}{'median s':>10s}{'GFLOP/s':>10s}{'% of sgemm':>12s}")
    for name, s in [("ours (FAISS flat)", ours_s), ("torch reference", ref_s)]:
        print(f"{name:22s}{s:10.2f}{flops / s / 1e9:10.1f}{100 * flops / s / 1e9 / best_gemm:11.1f}%")
    print(f"speed-up: {ref_s / ours_s:.2f}x (target >= 2x); ours at {100 * flops / ours_s / 1e9 / best_gemm:.0f}% "
          f"of sgemm {best_gemm:.1f} GFLOP/s (target >= 50%)")
    shown = ", ".join(f"k={a['k']} T={a['temperature']} {a['top1']:.2f}%" for a in ours_res)
    print(f"top-1 agree: {agree} ({shown})")
    print(f"peak RSS after ours (data included): {rss_ours:.2f} GiB; after both: {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
