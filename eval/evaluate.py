"""`ssl-bf evaluate RUN`: embed train/test, k-NN at both standard settings, cached linear probe
and logistic regression.

Layout of a run folder: `RUN/config.yaml`, `RUN/checkpoints/last.pt`. Written here:
- `RUN/embeddings/{train,test}.safetensors` (one file per split, reusable by `knn`/`linear`);
- `RUN/results.json`: a JSON object; this command sets its `knn`, `linear` (cached probe), `logreg`
  and `evaluated` keys
  and keeps every other key (the sweep report reads the numbers from it);
- `RUN/evaluations.jsonl`: one line per evaluation, full detail, never rewritten;
- `RUN/linear_head.pt`, `RUN/logreg_head.pt`: the probes' heads.
All writes are atomic.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional, Sequence

from .formats import Embeddings, load_embeddings

RESULTS = "results.json"
HISTORY = "evaluations.jsonl"
KNN_KS = (20, 200)
KNN_TEMPERATURES = (0.07, 0.1)  # the table holds (20, 0.07) (DINO) and (200, 0.1) (InstDisc)
LINEAR_PROBES = ("cached", "logreg")
RESULT_KEY = {"cached": "linear", "logreg": "logreg"}  # probe -> its key in results.json


def parse_probes(linear) -> tuple[str, ...]:
    """'cached,logreg' | 'none' | a sequence -> the probes to run, in order, checked."""
    items = linear.split(",") if isinstance(linear, str) else list(linear)
    items = [i.strip() for i in items if i.strip() and i.strip() != "none"]
    bad = [i for i in items if i not in LINEAR_PROBES]
    if bad:
        raise ValueError(f"unknown linear probe(s) {bad}: choose from {list(LINEAR_PROBES)} or 'none'")
    return tuple(dict.fromkeys(items))


def run_paths(run_dir: str) -> dict[str, str]:
    return {"config": os.path.join(run_dir, "config.yaml"),
            "checkpoint": os.path.join(run_dir, "checkpoints", "last.pt"),
            "train": os.path.join(run_dir, "embeddings", "train.safetensors"),
            "test": os.path.join(run_dir, "embeddings", "test.safetensors"),
            "results": os.path.join(run_dir, RESULTS),
            "history": os.path.join(run_dir, HISTORY),
            "head": os.path.join(run_dir, "linear_head.pt"),
            "logreg_head": os.path.join(run_dir, "logreg_head.pt")}


def evaluate_run(run_dir: str, checkpoint: Optional[str] = None, features: str = "backbone",
                 device: str = "auto", batch_size: int = 256, dtype: str = "float32",
                 ks: Sequence[int] = KNN_KS, temperatures: Sequence[float] = KNN_TEMPERATURES,
                 index: str = "flat", memory_budget_gb: float = 2.0,
                 linear: "str | Sequence[str]" = "cached,logreg",
                 reuse_embeddings: bool = False, subset: Optional[int] = None, num_workers: int = 4,
                 seed: int = 0, progress: bool = True) -> dict:
    """Evaluate a finished run; returns the entry that was recorded.

    Args:
        run_dir: the run folder.
        checkpoint: default RUN/checkpoints/last.pt.
        linear: the probes, 'cached,logreg' (default), one of them, or 'none'.
        reuse_embeddings: keep existing embeddings files made from the same checkpoint file.
        subset: embed only the first N images of each split (smoke tests).
    """
    from ssl_bf import distributed as dist_utils
    from ssl_bf.checkpoint import load as load_checkpoint
    from ssl_bf.config import load_config
    from ssl_bf.devices import resolve_device
    from ssl_bf.io import write_json_atomic
    from ssl_bf.knn import knn_evaluate

    from .embed import embed
    from .linear_cached import probe_cached, probe_logreg
    from .linear_common import save_head

    tic = time.perf_counter()
    probes = parse_probes(linear)
    paths = run_paths(run_dir)
    ckpt_path = checkpoint or paths["checkpoint"]
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path} (has the run finished an epoch?)")
    ckpt = load_checkpoint(ckpt_path)
    if os.path.isfile(paths["config"]):
        data_cfg = load_config(paths["config"]).data
    else:  # an older run folder: the checkpoint carries the config as well
        from ssl_bf.config import from_dict

        data_cfg = from_dict(ckpt["config"]).data

    # decided before any rank writes a file, so every rank of a torchrun job takes the same path
    reuse = {split: reuse_embeddings and _reusable(paths[split], ckpt_path, features) for split in ("train", "test")}
    splits: dict[str, Optional[Embeddings]] = {}
    for split in ("train", "test"):
        out = paths[split]
        if reuse[split]:
            splits[split] = load_embeddings(out)
            continue
        splits[split] = embed(ckpt_path, data_cfg.name, split, out, features=features, root=data_cfg.root,
                              batch_size=batch_size, device=device, dtype=dtype, subset=subset,
                              num_workers=num_workers, progress=progress)
    if not dist_utils.is_main():  # torchrun: this rank's shards went to rank 0, which scores them
        return None
    train, test = splits["train"], splits["test"]
    knn = knn_evaluate(train.embeddings, train.labels, test.embeddings, test.labels, ks, temperatures,
                       num_classes=train.num_classes, index=index, memory_budget_gb=memory_budget_gb,
                       device=device, progress=progress)
    probe_results: dict[str, dict] = {}
    for name in probes:
        probe = probe_cached if name == "cached" else probe_logreg
        res = probe(train.embeddings, train.labels, test.embeddings, test.labels,
                    num_classes=train.num_classes, seed=seed, device=resolve_device(device))
        head = paths["head"] if name == "cached" else paths["logreg_head"]
        save_head(head, res, train.classes)
        probe_results[RESULT_KEY[name]] = {**res.to_dict(), "head": head}

    evaluated = {"checkpoint": os.path.abspath(ckpt_path), "epoch": ckpt.get("epoch"),
                 "step": ckpt.get("step"), "features": features, "dataset": data_cfg.name,
                 "train_rows": len(train), "test_rows": len(test), "dim": train.dim,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - tic, 2)}
    entry = {"knn": knn.results, "linear": probe_results.get("linear"), "logreg": probe_results.get("logreg"),
             "evaluated": evaluated}
    results = _read_results(paths["results"])
    results.update({"knn": knn.results, "evaluated": evaluated})
    for name in LINEAR_PROBES:  # a probe not run now must not sit beside this checkpoint's k-NN
        key = RESULT_KEY[name]
        results.pop(key, None)
        if key in probe_results:
            res = probe_results[key]
            results[key] = {k: res[k] for k in ("protocol", "top1", "top5", "hyperparameters", "note") if k in res}
    write_json_atomic(results, paths["results"])
    _append_line(paths["history"], entry)
    return entry


def _reusable(path: str, checkpoint: str, features: str) -> bool:
    """An embeddings file made from this checkpoint file, not older than it, same features."""
    if not os.path.isfile(path) or os.path.getmtime(path) < os.path.getmtime(checkpoint):
        return False
    try:
        meta = load_embeddings(path, check=False).metadata
    except ValueError:
        return False
    return meta.get("checkpoint") == os.path.abspath(checkpoint) and meta.get("features") == features


def _read_results(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); move it away and rerun") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, expected a JSON object; move it away")
    return data


def _append_line(path: str, entry: dict) -> None:
    """Append one JSON line (a single write of a whole line; the file is only ever appended to)."""
    line = json.dumps(entry, default=str) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
