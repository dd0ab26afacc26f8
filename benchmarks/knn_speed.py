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
    python benchmarks/knn_speed.py --imagenet-shape --fraction 0.05 --memory-budget 1.5

`--imagenet-shape`: the ResNet-50 ImageNet shape, 1,281,167 x 2048 bank (10.5 GB float32) and
50,000 queries, k = 20 and 200, both scaled by `--fraction`. The bank and the queries are written
to .npy files and `ssl-bf knn --memory-budget GB` runs on them in a fresh process (so its peak
resident memory is its own), streaming the bank from the file. Reported: the search's GFLOP/s
(2 N Q D / search seconds) as a fraction of a plain sgemm of the block shape that search used
(its FAISS tile: min(Q, 4096) x 2048 @ 2048 x tile), measured after each search (medians of
both), and the child's
peak resident memory against the budget.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from bench_common import parse_args_with_threads

from ssl_bf.knn.vote import knn_accuracy

NOISE = 3.5  # class-blob noise: top-1 well below 100%, so a wrong vote would show


def sgemm_gflops(d: int, repeats: int = 5, rows: int = 4096, cols: int = 16384) -> dict[str, float]:
    """Best sgemm throughput at the k-NN shape: (rows x D) @ (D x cols), default (4096 x D) @ (D x 16384)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, d), dtype=np.float32)
    b = rng.standard_normal((d, cols), dtype=np.float32)
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


IMAGENET_TRAIN, IMAGENET_VAL, RESNET50_DIM = 1_281_167, 50_000, 2048


def write_blobs(path: str, labels_path: str, n: int, d: int, centres: np.ndarray, rng) -> None:
    """Class blobs (N, D) float32 written to a .npy file block by block (never whole in memory)."""
    y = rng.integers(0, len(centres), n)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, 1 << 14):
        rows = slice(s, min(n, s + (1 << 14)))
        x[rows] = centres[y[rows]] + NOISE * rng.standard_normal((rows.stop - rows.start, d), dtype=np.float32)
    x.flush()
    del x
    np.save(labels_path, y)


def imagenet_shape(args) -> None:
    """The streamed exact search at the ImageNet shape (scaled by --fraction), in a fresh process."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    n, q, d = round(IMAGENET_TRAIN * args.fraction), round(IMAGENET_VAL * args.fraction), RESNET50_DIM
    bank_gb = n * d * 4 / 2**30
    folder = tempfile.mkdtemp(prefix="knn-imagenet-", dir=args.work_dir)
    print(f"k-NN at the ImageNet shape x {args.fraction:g}: bank {n} x {d} ({bank_gb:.2f} GB float32), "
          f"{q} queries, k {args.k}, T {args.temperature}, budget {args.memory_budget:g} GB, {folder}", flush=True)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.classes, d), dtype=np.float32)
    paths = {name: os.path.join(folder, f"{name}.npy") for name in ("train", "train_labels", "test", "test_labels")}
    write_blobs(paths["train"], paths["train_labels"], n, d, centres, rng)
    write_blobs(paths["test"], paths["test_labels"], q, d, centres, rng)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    runs, gemms = [], []
    for r in range(args.repeats):
        out = os.path.join(folder, f"knn{r}.json")
        cmd = [sys.executable, "-m", "ssl_bf", "knn", "--train", paths["train"], "--test", paths["test"],
               "--k", *map(str, args.k), "--temperature", *map(str, args.temperature), "--device", "cpu",
               "--memory-budget", str(args.memory_budget), "--no-progress", "--json", out]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"ssl-bf knn failed:\n{done.stderr[-2000:]}")
        runs.append(json.load(open(out)))
        # sgemm of the block shape this search used, right after it (the same load on the machine)
        gemms.append(sgemm_gflops(d, repeats=3, rows=min(q, 4096), cols=runs[-1]["plan"]["database_tile"]))
        print(f"  run {r + 1}: search {runs[-1]['search_seconds']:.2f} s, peak memory "
              f"{runs[-1]['peak_memory_gb']:.2f} GB; sgemm " + ", ".join(f"{k} {v:.1f}" for k, v in gemms[-1].items())
              + " GFLOP/s", flush=True)
    plan = runs[0]["plan"]
    gemm = {k: statistics.median(g[k] for g in gemms) for k in gemms[0]}  # medians, like the search's
    best_gemm = max(gemm.values())
    seconds = statistics.median(r["search_seconds"] for r in runs)
    gflops = 2 * n * q * d / seconds / 1e9
    peak = max(r["peak_memory_gb"] for r in runs)
    print(f"plan: {plan['query_rows']} queries x {plan['bank_rows']} bank rows a block, FAISS tile "
          f"{min(q, 4096)} x {plan['database_tile']}")
    print(f"sgemm GFLOP/s at ({min(q, 4096)} x {d}) @ ({d} x {plan['database_tile']}), median of the runs' "
          f"best of 3: " + ", ".join(f"{k} {v:.1f}" for k, v in gemm.items()))
    print(f"search (median of {len(runs)}): {seconds:.2f} s, {gflops:.1f} GFLOP/s = "
          f"{100 * gflops / best_gemm:.1f}% of sgemm {best_gemm:.1f} GFLOP/s (target >= 80%)")
    print(f"peak resident memory {peak:.2f} GB against the budget {args.memory_budget:g} GB "
          f"({'within' if peak <= args.memory_budget else 'OVER'}); the bank alone is {bank_gb:.2f} GB")
    print("top-1: " + ", ".join(f"k={x['k']} T={x['temperature']} {x['top1']:.2f}%" for x in runs[0]["results"]))
    if not args.keep_files:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


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
    p.add_argument("--imagenet-shape", action="store_true",
                   help="1,281,167 x 2048 bank, 50,000 queries (x --fraction), streamed by `ssl-bf knn`")
    p.add_argument("--fraction", type=float, default=0.05, help="--imagenet-shape: scale of N and Q (default 0.05)")
    p.add_argument("--memory-budget", type=float, default=2.0, metavar="GB",
                   help="--imagenet-shape: `ssl-bf knn --memory-budget` (default 2)")
    p.add_argument("--work-dir", help="--imagenet-shape: where the .npy files go (default: the temp folder)")
    p.add_argument("--keep-files", action="store_true", help="--imagenet-shape: keep the .npy files")
    args = parse_args_with_threads(p)
    if args.imagenet_shape:
        if not 0 < args.fraction <= 1:
            p.error("--fraction must be in (0, 1]")
        imagenet_shape(args)
        return
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
