"""Stage (d) of scripts/gpu_check.sh: what one process cannot show, on W >= 2 processes, each check
against the one-process result computed on every rank from the whole global batch.

    torchrun --nproc_per_node=W benchmarks/multi_gpu_check.py --json OUT --device cuda   # NCCL
    torchrun --nproc_per_node=2 benchmarks/multi_gpu_check.py --json OUT --device cpu    # gloo (CI)
    python benchmarks/multi_gpu_check.py --json OUT --skip "only 1 GPU visible"         # the record of what
                                                                                         # stayed untested

Checks (a collective error is relative: max |distributed - one process| / max |one process|):
- syncbn_bf16_channels_last: SyncBatchNorm under bf16 autocast on channels-last inputs, the ranks'
  rows drawn from different distributions: outputs, gradients and running statistics equal plain
  BatchNorm over the whole batch in one process (CUDA only: torch has no CPU SyncBatchNorm).
- shuffle_bn: `distributed.shuffle_batch` around a BatchNorm network: each rank's restored outputs
  equal one process cutting the permuted global batch into the ranks' parts.
- batchformer_global_gather: BatchFormer over `gather_rows_with_grad` (`batchformer.scope=global`):
  outputs, input and parameter gradients equal one BatchFormer over the whole batch.
- gather_shards_to_main: unequal shards through padded chunks reach rank 0 whole and in rank order.
Each check but the last also measures its control (the same computation without the collective); a
check whose control does not differ clearly from the one-process result could not have failed and
is reported as not discriminating.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ssl_bf import distributed as dist_utils  # noqa: E402

ROWS = 8  # rows per rank
CHECKS = {
    "syncbn_bf16_channels_last": "SyncBatchNorm in bf16 with channels_last across ranks",
    "shuffle_bn": "cross-rank shuffle-BN (shuffle_batch)",
    "batchformer_global_gather": "the global BatchFormer gather (batchformer.scope=global)",
    "gather_shards_to_main": "gather_shards_to_main (the k-NN monitor, embed and evaluate)",
}


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _result(name: str, error: float, tolerance: float, control: Optional[float], **extra) -> dict:
    discriminates = control is None or control > 10 * tolerance
    return {"name": name, "what": CHECKS[name], "max_error": error, "tolerance": tolerance, "control_error": control,
            "discriminates": discriminates, "passed": error <= tolerance and discriminates, **extra}


def _global_batch(world: int, device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    """(W * ROWS, *shape), the same on every rank; rank r's rows shifted by 3r (other statistics)."""
    x = torch.randn(world * ROWS, *shape, generator=torch.Generator().manual_seed(5))
    x += 3.0 * torch.arange(world).repeat_interleave(ROWS).view(-1, *([1] * len(shape))).float()
    return x.to(device)


def _bn_net(device: torch.device) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)).to(device).train()


def check_syncbn(device: torch.device, world: int, rank: int) -> dict:
    x_all = _global_batch(world, device, (3, 16, 16)).contiguous(memory_format=torch.channels_last)
    mine = slice(rank * ROWS, (rank + 1) * ROWS)
    outs, grads, stats = {}, {}, {}
    for kind in ("synced", "one_process", "local"):
        net = _bn_net(device)
        if kind == "synced":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = net.to(memory_format=torch.channels_last)
        x = x_all if kind == "one_process" else x_all[mine]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = net(x)  # (N, 8, 16, 16)
        (y.float() ** 2).sum().div(world * ROWS).backward()
        g = torch.cat([p.grad.flatten() for p in net.parameters()])
        if kind != "one_process":
            dist_utils.all_reduce_(g)  # the gradient of the global loss, as DDP would form it (summed)
        outs[kind] = y if kind != "one_process" else y[mine]
        grads[kind] = g
        stats[kind] = torch.cat([b.flatten() for n, b in net.named_buffers() if "running" in n])
    error = max(_error(outs["synced"], outs["one_process"]), _error(grads["synced"], grads["one_process"]),
                _error(stats["synced"], stats["one_process"]))
    control = max(_error(outs["local"], outs["one_process"]), _error(stats["local"], stats["one_process"]))
    return _result("syncbn_bf16_channels_last", error, 5e-2, control, dtype="bfloat16",
                   memory_format="channels_last", output_is_channels_last=outs["synced"].is_contiguous(
                       memory_format=torch.channels_last))


def check_shuffle_bn(device: torch.device, world: int, rank: int) -> dict:
    x_all = _global_batch(world, device, (3, 16, 16))
    mine = slice(rank * ROWS, (rank + 1) * ROWS)
    net = _bn_net(device)
    torch.manual_seed(11)
    shuffled, restore = dist_utils.shuffle_batch(x_all[mine])
    with torch.no_grad():
        got = restore(net(shuffled))  # (ROWS, 8, 16, 16)
        torch.manual_seed(11)
        perm = dist_utils.broadcast_(torch.randperm(world * ROWS, device=device))  # rank 0's draw, as above
        parts = torch.cat([net(part) for part in x_all[perm].split(ROWS)])  # each rank's part, plain BN
        want = parts[torch.argsort(perm)][mine]
        control = _error(net(x_all[mine]), want)  # no shuffle: each rank normalises its own rows
    error = max(_error(got, want), float(not torch.equal(shuffled, x_all[perm][mine])))
    return _result("shuffle_bn", error, 1e-3, control, dtype="float32")


def check_batchformer_gather(device: torch.device, world: int, rank: int) -> dict:
    from ssl_bf.models.batchformer import BatchFormer

    feats = torch.randn(world * ROWS, 32, generator=torch.Generator().manual_seed(7)).to(device)
    mine = slice(rank * ROWS, (rank + 1) * ROWS)
    results = {}
    for kind in ("global", "one_process", "local"):
        torch.manual_seed(1)
        bf = BatchFormer(32, heads=4, dropout=0.0).to(device).train()
        x = (feats if kind == "one_process" else feats[mine]).clone().requires_grad_(True)
        out = bf.transform(x, dist_utils.gather_rows_with_grad if kind == "global" else None)
        (out ** 2).sum().backward()  # one process: the loss of every rank's rows together
        out = out[mine] if kind == "one_process" else out  # (ROWS, 32)
        g = torch.cat([p.grad.flatten() for p in bf.parameters()])
        if kind != "one_process":
            dist_utils.all_reduce_(g)
        x_grad = x.grad[mine] if kind == "one_process" else x.grad
        results[kind] = (out.detach(), x_grad, g)
    error = max(_error(a, b) for a, b in zip(results["global"], results["one_process"]))
    control = _error(results["local"][0], results["one_process"][0])
    return _result("batchformer_global_gather", error, 1e-4, control, dtype="float32")


def check_gather_shards(device: torch.device, world: int, rank: int) -> dict:
    sizes = [5 + 3 * r for r in range(world)]  # unequal shards; chunks of 4 rows: several, padded
    shard = lambda r: torch.arange(sizes[r] * 4, dtype=torch.float32).view(-1, 4) + 1000 * r  # noqa: E731
    labels = lambda r: torch.arange(sizes[r], dtype=torch.int64) + 100 * r  # noqa: E731
    got = dist_utils.gather_shards_to_main(shard(rank), device, chunk_rows=4)
    got_labels = dist_utils.gather_shards_to_main(labels(rank), device, chunk_rows=4)
    if rank == 0:
        ok = torch.equal(got, torch.cat([shard(r) for r in range(world)])) and \
            torch.equal(got_labels, torch.cat([labels(r) for r in range(world)])) and got.device.type == "cpu"
    else:
        ok = got is None and got_labels is None
    return _result("gather_shards_to_main", 0.0 if ok else 1.0, 0.0, None, dtype="float32 and int64",
                   rows=sizes)


def run_checks(device: torch.device) -> tuple[list[dict], list[str]]:
    """Every check this device supports, on every rank; results agreed over the ranks (worst error)."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 checks in fp32
    checks = {"shuffle_bn": check_shuffle_bn, "batchformer_global_gather": check_batchformer_gather,
              "gather_shards_to_main": check_gather_shards}
    untested = []
    if device.type == "cuda":
        checks = {"syncbn_bf16_channels_last": check_syncbn, **checks}
    else:
        untested.append(f"{CHECKS['syncbn_bf16_channels_last']}: torch has no SyncBatchNorm on a CPU")
    results = []
    for name, check in checks.items():
        try:
            r = check(device, world, rank)
        except Exception as err:  # e.g. a kernel this build lacks (every rank alike): recorded, the next check runs
            r = {**_result(name, float("inf"), 0.0, None), "error": f"{type(err).__name__}: {err}"}
        worst = dist_utils.all_reduce_(torch.tensor([r["max_error"], -float(r["passed"])], device=device), "max")
        r["max_error"], r["passed"] = float(worst[0]), bool(worst[1] < 0)  # passed on every rank
        results.append(r)
    return results, untested


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--skip", metavar="REASON", help="run nothing; record every check as untested, and why")
    args = p.parse_args(argv)
    if args.skip:
        record = {"ran": False, "reason": args.skip, "checks": [], "untested": list(CHECKS.values())}
        _write(record, args.json)
        print(f"multi-process checks NOT run ({args.skip}); untested: {'; '.join(CHECKS.values())}", flush=True)
        return 0
    from ssl_bf.devices import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(1)
    dist_utils.init_distributed(device, force=True)
    results, untested = run_checks(device)
    world, backend = dist_utils.world_size(), dist_utils.backend_spec(device)
    if dist_utils.is_main():
        _write({"ran": True, "world_size": world, "backend": backend, "device": device.type, "checks": results,
                "untested": untested, "passed": all(r["passed"] for r in results)}, args.json)
        for r in results:
            control = "" if r["control_error"] is None else f", without the collective {r['control_error']:.2g}"
            print(f"{r['name']:26s} {'passed' if r['passed'] else 'FAILED'}: error {r['max_error']:.2g} "
                  f"(tolerance {r['tolerance']:.0g}{control}) over {world} processes, {backend}"
                  + (f"; {r['error']}" if "error" in r else ""), flush=True)
        for line in untested:
            print(f"untested here: {line}", flush=True)
    dist_utils.shut_down(wait=True)
    return 0 if all(r["passed"] for r in results) else 1


def _write(record: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
