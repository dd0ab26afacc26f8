"""`ssl-bf evaluate RUN`: embed train/test, k-NN at both standard settings, cached linear probe
and logistic regression.

Layout of a run folder: `RUN/config.yaml`, `RUN/checkpoints/last.pt`. Written here:
- `RUN/embeddings/{train,test}.safetensors` (one file per split, reusable by `knn`/`linear`);
- `RUN/results.json`: a JSON object; this command sets its `knn`, `linear` (cached probe), `logreg`,
  `evaluated` and (a long-tailed run, or `--shots`) `few_shot` keys, each figure with its
  `per_group` (docs/protocols.md), and keeps every other key (the sweep report reads the numbers from it);
- `RUN/evaluations.jsonl`: one line per evaluation, full detail, never rewritten;
- `RUN/linear_head.pt`, `RUN/logreg_head.pt`: the probes' heads.
Paths recorded in these files (the checkpoint, the heads, an embeddings file's checkpoint) are
relative to RUN when they lie inside it, so a run folder can be moved or committed; a path outside
RUN is recorded absolute. Files of older versions, which hold absolute paths, are still read.
All or nothing: every output (RUN's files and --json) passes the output guard before any compute;
everything is written to temp files, moved into place only when every write succeeded; a failed
evaluate leaves RUN, and --json, byte-identical.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import TYPE_CHECKING, Optional, Sequence

from ssl_bf.file_kinds import FileKind
from ssl_bf.run_layout import Owner

from .formats import Embeddings, load_embeddings

if TYPE_CHECKING:
    from .import_choices import ImportChoices

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


def check_run_inputs(run_dir: str, checkpoint: Optional[str], data: Optional[str]) -> None:
    """The run folder and the checkpoint an evaluation reads exist (RUN may be new only with a
    --checkpoint of another project and --data)."""
    if os.path.isfile(run_dir):
        raise ValueError(f"RUN {run_dir} is a file; give the run folder (the one holding checkpoints/)")
    if not os.path.isdir(run_dir) and not (checkpoint and data):
        hint = " (with a --checkpoint of another project, also give --data: RUN is then created)" if checkpoint else ""
        raise FileNotFoundError(f"run folder not found: {run_dir}{hint}")
    ckpt_path = checkpoint or run_paths(run_dir)["checkpoint"]
    if not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path} (has the run finished an epoch?)")


def evaluate_run(run_dir: str, checkpoint: Optional[str] = None, features: str = "backbone",
                 device: str = "auto", batch_size: int = 256, dtype: str = "float32",
                 ks: Sequence[int] = KNN_KS, temperatures: Sequence[float] = KNN_TEMPERATURES,
                 index: str = "flat", memory_budget_gb: float = 2.0,
                 linear: "str | Sequence[str]" = "cached,logreg",
                 reuse_embeddings: bool = False, subset: Optional[int] = None, num_workers: int = 4,
                 seed: int = 0, progress: bool = True, data: Optional[str] = None, root: Optional[str] = None,
                 choices: Optional[ImportChoices] = None, skip_unreadable: bool = False,
                 json_out: Optional[str] = None, shots: Optional[Sequence[int]] = None,
                 draws: Optional[int] = None) -> Optional[dict]:
    """Evaluate a finished run; returns the entry that was recorded.

    All or nothing: everything checkable is checked before any compute (the run folder, the
    checkpoint, RUN/results.json, every file written, k against --subset); the embeddings,
    heads, results and `json_out` are computed in memory, written to temp files, and moved into
    place (the history line appended) only when every one of them was written. A failure leaves
    RUN, and `json_out`, byte-identical.

    Args:
        run_dir: the run folder.
        checkpoint: default RUN/checkpoints/last.pt.
        linear: the probes, 'cached,logreg' (default), one of them, or 'none'.
        reuse_embeddings: keep existing embeddings files made from the same checkpoint file.
        subset: embed only the first N images of each split (smoke tests).
        data, root: the dataset (name or folder); default RUN/config.yaml's. A checkpoint of another
            project records none, so it needs `data`; RUN is then only where the results go (created).
        choices: for a checkpoint of another project, its ViT head count and DINO network (default:
            its format's conventions).
        skip_unreadable: image folders: leave out unreadable images (listed in the embeddings'
            metadata and in `evaluated.unreadable_skipped`) instead of refusing.
        json_out: also write the recorded entry there (`--json`; checked by the caller, with RUN's
            files as inputs it must not replace).
        shots, draws: few-shot probes (`evaluate_few_shot`): None: 100 and 10 shots when the run was
            long-tailed, else none; () none. `draws` seeded draws each (default 5).
    """
    from ssl_bf import distributed as dist_utils
    from ssl_bf.run_config import load_config
    from ssl_bf.devices import resolve_device
    from ssl_bf.knn.vote import knn_evaluate

    from .checkpoints import load_checked_encoder
    from .embed import embed, require_data, resolve_data
    from .cli_common import print_note
    from .evaluate_few_shot import DEFAULT_EVAL_SHOTS, evaluation_groups, few_shot_results, run_is_long_tailed
    from .formats import check_pair
    from .groups import group_accuracy, knn_per_group
    from .linear_cached import probe_cached, probe_logreg

    tic = time.perf_counter()
    probes = parse_probes(linear)
    paths = run_paths(run_dir)
    ckpt_path = checkpoint or paths["checkpoint"]
    check_run_inputs(run_dir, checkpoint, data)
    results = _read_results(paths["results"])
    check_run_outputs(run_dir, ckpt_path)
    kmax = max(int(k) for k in ks)
    if subset is not None and subset < kmax:
        raise ValueError(f"--subset {subset} is smaller than k={kmax} of the k-NN evaluation (its train "
                         f"bank would hold {subset} rows); use --subset {kmax} or more")
    dev = resolve_device(device)
    model, cfg, ckpt = load_checked_encoder(ckpt_path, features=features, device=dev,
                                            what="--checkpoint" if checkpoint else "the run's checkpoint",
                                            choices=choices)
    epoch, step = ckpt.get("epoch"), ckpt.get("step")
    epoch, step = (v if isinstance(v, (int, float)) else None for v in (epoch, step))
    del ckpt
    # an older run folder has no config.yaml: the checkpoint (or an export's sidecar) carries it too
    data_cfg = load_config(paths["config"]).data if os.path.isfile(paths["config"]) else cfg.data
    if data is not None or root is not None:
        data_cfg = copy.copy(data_cfg)
        data_cfg.name, data_cfg.root = resolve_data(data, root) if data is not None else (data_cfg.name, root)
    elif getattr(model, "source_format", None) and not os.path.isfile(paths["config"]):
        require_data(model, None, ckpt_path)  # a checkpoint of another project records no dataset

    # decided before any rank computes, so every rank of a torchrun job takes the same path
    reuse = {split: reuse_embeddings and _reusable(paths[split], ckpt_path, features, run_dir)
             for split in ("train", "test")}
    splits: dict[str, Optional[Embeddings]] = {}
    recorded_ckpt = recorded_path(ckpt_path, run_dir)
    for split in ("train", "test"):  # in memory: written only once everything succeeded
        if reuse[split]:
            splits[split] = load_embeddings(paths[split])
            continue
        emb = embed(ckpt_path, data_cfg.name, split, None, features=features, root=data_cfg.root,
                    batch_size=batch_size, device=str(dev), dtype=dtype, subset=subset,
                    num_workers=num_workers, progress=progress, encoder=(model, cfg), skip_unreadable=skip_unreadable)
        if emb is not None:  # the file goes into RUN/embeddings: its checkpoint as RUN records it
            emb.metadata["checkpoint"] = recorded_ckpt
        splits[split] = emb
    if not dist_utils.is_main():  # torchrun: this rank's shards went to rank 0, which scores them
        return None
    train, test = splits["train"], splits["test"]
    if kmax > len(train):
        raise ValueError(f"k={kmax} of the k-NN evaluation is larger than the train set ({len(train)} rows "
                         f"of {data_cfg.name}); nothing was written. Embed with `ssl-bf embed` and score "
                         f"with `ssl-bf knn --k` values up to {len(train)}")
    check_pair(train, test)
    space, groups, groups_from = evaluation_groups(run_dir, train, subset)
    knn = knn_evaluate(train.embeddings, train.labels, test.embeddings, test.labels, ks, temperatures,
                       num_classes=train.num_classes, index=index, memory_budget_gb=memory_budget_gb,
                       device=device, progress=progress, keep_predictions=True)
    for row in knn.results:
        row["per_group"] = knn_per_group(knn, space, test.labels, (row["k"], row["temperature"]), groups)
    probe_results: dict[str, dict] = {}
    heads = {}
    for name in probes:
        probe = probe_cached if name == "cached" else probe_logreg
        res = probe(train.embeddings, train.labels, test.embeddings, test.labels,
                    num_classes=train.num_classes, seed=seed, device=dev)
        head = paths["head"] if name == "cached" else paths["logreg_head"]
        heads[head] = res
        probe_results[RESULT_KEY[name]] = {**res.to_dict(), "head": recorded_path(head, run_dir),
                                           "per_group": group_accuracy(res.class_hits, res.class_totals, groups)}
    few_shot = few_shot_results(train, test, DEFAULT_EVAL_SHOTS if shots is None else shots, shots is not None,
                                draws, probes if shots is not None or run_is_long_tailed(run_dir) else (),
                                groups, seed, str(dev), lambda text: print_note("ssl-bf evaluate", text))

    evaluated = {"checkpoint": recorded_ckpt, "epoch": epoch,
                 "step": step, "features": features, "dataset": data_cfg.name,
                 "train_rows": len(train), "test_rows": len(test), "dim": train.dim,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - tic, 2)}
    skipped = {split: json.loads(e.metadata["unreadable_skipped"]) for split, e in splits.items()
               if e.metadata.get("unreadable_skipped")}
    if skipped:
        evaluated["unreadable_skipped"] = skipped
    evaluated["groups_from"] = groups_from
    entry = {"knn": knn.results, "linear": probe_results.get("linear"), "logreg": probe_results.get("logreg"),
             "evaluated": evaluated}
    results.update({"knn": knn.results, "evaluated": evaluated})
    results.pop("few_shot", None)  # an older evaluation's few-shot figures must not sit beside these
    if few_shot:
        entry["few_shot"] = results["few_shot"] = few_shot
    for name in LINEAR_PROBES:  # a probe not run now must not sit beside this checkpoint's k-NN
        key = RESULT_KEY[name]
        results.pop(key, None)
        if key in probe_results:
            res = probe_results[key]
            results[key] = {k: res[k] for k in ("protocol", "top1", "top5", "hyperparameters", "note", "per_group")
                            if k in res}
    _commit(run_dir, {s: e for s, e in splits.items() if not reuse[s]}, heads, train.classes, results, dtype,
            entry, json_out)
    return entry


RUN_OUTPUTS = {"train": FileKind.SAFETENSORS, "test": FileKind.SAFETENSORS, "results": FileKind.JSON,
               "history": FileKind.JSON, "head": FileKind.TORCH, "logreg_head": FileKind.TORCH}


def check_run_outputs(run_dir: str, checkpoint: str) -> None:
    """Every file evaluate writes in RUN through the output guard, before any compute (its own
    files: it owns them; never a special file, another kind of file or the checkpoint)."""
    from ssl_bf.outputs import check_output

    paths = run_paths(run_dir)
    for key, kind in RUN_OUTPUTS.items():
        check_output(paths[key], kind, option="evaluate's output", inputs=[checkpoint], owner=Owner.EVALUATE,
                     runs=[run_dir], appended=key == "history")


def _commit(run_dir: str, embeddings: dict[str, Embeddings], heads: dict, classes, results: dict, dtype: str,
            entry: dict, json_out: Optional[str]) -> None:
    """Write the embeddings, heads, results.json and `json_out` to temp files beside their targets,
    then move them all into place and append the history line; if any write fails, every temp
    file is removed and RUN (and `json_out`) are as they were."""
    from ssl_bf.atomic_write import all_or_nothing, append_line, strict_json, write_json

    from .formats import write_embeddings
    from .linear_common import save_head

    paths = run_paths(run_dir)
    own = {"option": "evaluate's output", "owner": Owner.EVALUATE}
    with all_or_nothing():
        for split, emb in embeddings.items():
            write_embeddings(paths[split], emb, dtype, **own)
        for head, res in heads.items():
            save_head(head, res, classes, **own)
        write_json(results, paths["results"], **own, runs=[run_dir])
        if json_out:
            write_json(entry, json_out, option="--json", inputs=list(paths.values()), runs=[run_dir])
        append_line(json.dumps(strict_json(entry), default=str, allow_nan=False), paths["history"], **own)


def recorded_path(path: str, run_dir: str) -> str:
    """`path` as RUN's files record it: relative to RUN when it lies inside RUN (so the folder
    can move), else absolute (a relative path would be read as relative to RUN)."""
    for norm in (os.path.abspath, os.path.realpath):  # RUN or the file may be reached by a link
        rel = os.path.relpath(norm(path), norm(run_dir))
        if rel != os.curdir and rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return rel
    return os.path.abspath(path)


def resolve_recorded(recorded: str, run_dir: str) -> str:
    """A path read from RUN's files: a relative one is relative to RUN; an absolute one (outside
    RUN, or written by an older version) is taken as it is."""
    return recorded if os.path.isabs(recorded) else os.path.join(run_dir, recorded)


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _reusable(path: str, checkpoint: str, features: str, run_dir: str) -> bool:
    """An embeddings file made from this checkpoint file, not older than it, same features.

    The file records its checkpoint relative to RUN (or absolute, when written by an older version
    or outside RUN); it is resolved against RUN as it is now, so a moved run folder still reuses
    its embeddings."""
    if not os.path.isfile(path) or os.path.getmtime(path) < os.path.getmtime(checkpoint):
        return False
    try:
        meta = load_embeddings(path, check=False).metadata
    except ValueError:
        return False
    recorded = meta.get("checkpoint")
    if not recorded or meta.get("features") != features:
        return False
    return _same_file(resolve_recorded(recorded, run_dir), checkpoint)


def _read_results(path: str) -> dict:
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, but evaluate keeps its results in that file; move it away")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); move it away and rerun") from None
    except OSError as err:
        raise ValueError(f"{path} cannot be read ({err.strerror}); fix its permissions or move it away") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, expected a JSON object; move it away")
    return data
