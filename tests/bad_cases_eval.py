"""Bad inputs of the evaluation commands `ssl-bf embed | knn | linear | evaluate` (run by
tests/test_bad_inputs.py; the harness is tests/bad_inputs_harness.py).

Every case exits 2 with one line naming the option or file at fault, and leaves the run, the
embeddings files, the case's scratch folder and every checkpoint byte-identical: nothing is
written. The exceptions are the duplicate k / temperature cases: they are scored once each and
succeed (exit 0) with a note naming the option; they used to add their hits twice (126% top-1).
"""
from __future__ import annotations

import json
import os
import shutil

from bad_inputs_harness import Case

# Every case watches: the run, both embeddings files and the case's scratch folder (so an output
# written before the error shows up), plus whatever a case adds.
WATCH = ("{run}", "{train}", "{test}", "{tmp}")
NP = "--no-progress"
TRAIN_TEST = ["--train", "{train}", "--test", "{test}"]
KNN = ["knn", *TRAIN_TEST, NP]
CACHED = ["linear", "--protocol", "cached", *TRAIN_TEST, "--epochs", "1", NP]
LOGREG = ["linear", "--protocol", "logreg", *TRAIN_TEST, "--max-iter", "5", NP]
EMBED = ["embed", "--checkpoint", "{ckpt}", "--split", "test", "--subset", "40", NP]
EMBED_OUT = [*EMBED, "--out", "{tmp}/out.safetensors"]
MOCOV2 = ["linear", "--protocol", "mocov2", "--checkpoint", "{ckpt}", "--subset", "40", "--epochs", "1", NP]


def given(base: list[str], option: str, value: str) -> list[str]:
    """`base` with `option` set to `value`: its value in `base` replaced (an option given twice is
    refused by every parser), or the pair appended when `base` does not give it."""
    if option in base:
        i = base.index(option)
        return [*base[:i + 1], value, *base[i + 2:]]
    return [*base, option, value]


def case(id: str, argv: list[str], says: tuple[str, ...], *, code: int = 2, watch: tuple[str, ...] = (),
         **kw) -> Case:
    return Case(id, list(argv), code=code, says=says, unchanged=WATCH + tuple(watch), **kw)


# ----------------------------------------------------------------------------------------------
# setups: (env, tmp) -> None, writing the case's bad files into its scratch folder
# ----------------------------------------------------------------------------------------------


def _save_embeddings(path, x, y, **meta):
    from ssl_bf.eval.formats import save_embeddings

    save_embeddings(path, x, y, **meta)


def _raw_safetensors(path, x, y, **metadata):
    """Write an embeddings file as is, unchecked (what another program might have written)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    save_file({"embeddings": torch.from_numpy(np.ascontiguousarray(x)),
               "labels": torch.from_numpy(np.ascontiguousarray(y))}, path, metadata=metadata or None)


def _emb(env, split="train"):
    from ssl_bf.eval.formats import load_embeddings

    return load_embeddings(env.paths("")[split])


def dims_differ(env, tmp):
    import numpy as np

    _save_embeddings(os.path.join(tmp, "d7.safetensors"), np.ones((20, 7), np.float32), np.zeros(20))


def npy_labels_short(env, tmp):
    import numpy as np

    e = _emb(env, "test")
    np.save(os.path.join(tmp, "x.npy"), e.embeddings)
    np.save(os.path.join(tmp, "x_labels.npy"), e.labels[:-1])


def labels_file_short(env, tmp):
    import numpy as np

    np.save(os.path.join(tmp, "short.npy"), _emb(env, "train").labels[:-3])


def labels_file(env, tmp):
    import numpy as np

    np.save(os.path.join(tmp, "l.npy"), _emb(env, "train").labels)


def truncated_safetensors(env, tmp):
    with open(env.paths("")["train"], "rb") as f:
        blob = f.read()
    with open(os.path.join(tmp, "cut.safetensors"), "wb") as f:
        f.write(blob[: len(blob) // 2])


def garbage_safetensors(env, tmp):
    with open(os.path.join(tmp, "junk.safetensors"), "wb") as f:
        f.write(os.urandom(2048))


def safetensors_without_labels(env, tmp):
    import torch
    from safetensors.torch import save_file

    save_file({"embeddings": torch.ones(10, 4)}, os.path.join(tmp, "nolabels.safetensors"))


def nan_embeddings(env, tmp):
    e = _emb(env, "test")
    x = e.embeddings.copy()
    x[[3, 7]] = float("nan")
    _raw_safetensors(os.path.join(tmp, "nan.safetensors"), x, e.labels)


def float_labels(env, tmp):
    import numpy as np

    e = _emb(env, "test")
    np.save(os.path.join(tmp, "f.npy"), e.embeddings)
    np.save(os.path.join(tmp, "f_labels.npy"), e.labels + 0.5)


def other_classes(env, tmp):
    e = _emb(env, "test")
    _save_embeddings(os.path.join(tmp, "other.safetensors"), e.embeddings, e.labels,
                     classes=[f"c{i}" for i in range(10)])


def labels_beyond_classes(env, tmp):
    e = _emb(env, "test")
    labels = e.labels.copy()
    labels[0] = 12
    _raw_safetensors(os.path.join(tmp, "beyond.safetensors"), e.embeddings, labels,
                     classes=json.dumps([str(i) for i in range(10)]))


def _ckpt(env):
    import torch

    return torch.load(env.ckpt, map_location="cpu", weights_only=True)


def _save(obj, path):
    import torch

    torch.save(obj, path)


def ckpt_missing_keys(env, tmp):
    c = _ckpt(env)
    keys = sorted(k for k in c["model"] if k.startswith("backbone."))
    c["model"] = {k: v for k, v in c["model"].items() if k not in keys[: len(keys) // 2]}
    _save(c, os.path.join(tmp, "partial.pt"))


def ckpt_model_not_dict(env, tmp):
    import torch

    c = _ckpt(env)
    c["model"] = torch.zeros(3)
    _save(c, os.path.join(tmp, "flat.pt"))


def ckpt_bad_config(env, tmp):
    c = _ckpt(env)
    c["config"] = {**c["config"], "method": "simclr"}
    _save(c, os.path.join(tmp, "badcfg.pt"))


def ckpt_wrong_shape(env, tmp):
    import torch

    c = _ckpt(env)
    key = next(k for k, v in c["model"].items() if k.startswith("backbone.") and v.ndim == 4)
    c["model"][key] = torch.zeros(*c["model"][key].shape[:-1], c["model"][key].shape[-1] + 2)
    _save(c, os.path.join(tmp, "shape.pt"))


def ckpt_nan_weights(env, tmp):
    c = _ckpt(env)
    for k, v in c["model"].items():
        if k.startswith("backbone.") and v.is_floating_point() and v.ndim == 4:
            v.fill_(float("nan"))
    _save(c, os.path.join(tmp, "nan.pt"))


def ckpt_a_list(env, tmp):
    import torch

    _save([torch.zeros(2)], os.path.join(tmp, "list.pt"))


def unknown_layout(env, tmp):
    import torch

    _save({"net.weight": torch.zeros(2)}, os.path.join(tmp, "backbone.pt"))


def torchvision_resnet(env, tmp):
    """A checkpoint of another project (a plain torchvision ResNet-18 state dict)."""
    import torchvision

    _save(torchvision.models.resnet18().state_dict(), os.path.join(tmp, "tv.pt"))


def backbone_without_sidecar(env, tmp):
    from ssl_bf.checkpoints.checkpoint import backbone_state_dict

    _save(backbone_state_dict(_ckpt(env)["model"]), os.path.join(tmp, "backbone.pt"))


def backbone_broken_sidecar(env, tmp):
    backbone_without_sidecar(env, tmp)
    with open(os.path.join(tmp, "backbone.json"), "w") as f:
        f.write('{"config": ')


def exported_backbone(env, tmp):
    from ssl_bf.checkpoints.checkpoint import export_backbone

    export_backbone(env.ckpt, os.path.join(tmp, "backbone.pt"))


def empty_image_folder(env, tmp):
    os.makedirs(os.path.join(tmp, "imgs", "sub"))
    with open(os.path.join(tmp, "imgs", "notes.txt"), "w") as f:
        f.write("no images here\n")


def rgb_image_folder(env, tmp):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("ant", "bee"):
            folder = os.path.join(tmp, "rgb", split, cls)
            os.makedirs(folder)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), "RGB").save(
                    os.path.join(folder, f"{i}.png"))


def evaluated_run(env, tmp):
    """{tmp}/run: a copy of the run as a finished evaluation leaves it (embeddings, results, history)."""
    run = os.path.join(tmp, "run")
    shutil.copytree(env.run, run)
    os.makedirs(os.path.join(run, "embeddings"))
    for split in ("train", "test"):
        shutil.copy2(env.paths("")[split], os.path.join(run, "embeddings", f"{split}.safetensors"))
    with open(os.path.join(run, "results.json"), "w") as f:
        json.dump({"pretrain": {"loss": 5.0}, "knn": [{"k": 20, "temperature": 0.07, "top1": 50.0}]}, f)
    with open(os.path.join(run, "evaluations.jsonl"), "w") as f:
        f.write('{"knn": []}\n')


def _evaluated_run_with(write):
    def setup(env, tmp):
        evaluated_run(env, tmp)
        write(os.path.join(tmp, "run"))
    return setup


def _text(relpath, text):
    def write(run):
        path = os.path.join(run, relpath)
        os.remove(path) if os.path.isfile(path) else None
        with open(path, "w") as f:
            f.write(text)
    return write


def _folder(relpath):
    def write(run):
        path = os.path.join(run, relpath)
        if os.path.isfile(path):
            os.remove(path)
        os.makedirs(os.path.join(path, "inside"))
        with open(os.path.join(path, "inside", "keep.txt"), "w") as f:
            f.write("keep\n")
    return write


def run_without_checkpoint(env, tmp):
    evaluated_run(env, tmp)
    shutil.rmtree(os.path.join(tmp, "run", "checkpoints"))


def run_with_missing_data(env, tmp):
    import yaml

    evaluated_run(env, tmp)
    path = os.path.join(tmp, "run", "config.yaml")
    with open(path) as f:
        cfg = yaml.safe_load(f)
    cfg["data"]["root"] = os.path.join(tmp, "no-such-data")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)


def run_ckpt_missing_keys(env, tmp):
    evaluated_run(env, tmp)
    ckpt_missing_keys(env, tmp)
    shutil.move(os.path.join(tmp, "partial.pt"), os.path.join(tmp, "run", "checkpoints", "last.pt"))


RUN = "{tmp}/run"
EVAL = ["evaluate", RUN, "--subset", "300", "--device", "cpu", NP]


# ----------------------------------------------------------------------------------------------
# knn
# ----------------------------------------------------------------------------------------------

KNN_CASES = [
    # defect 1: a repeated (k, T) pair added its hits twice (top-1 126%, 252%)
    case("knn-duplicate-k", [*KNN, "--k", "5", "5", "--temperature", "0.1"], ("--k", "once"), code=0,
         wrong_result=True),
    case("knn-duplicate-k-and-temperature", [*KNN, "--k", "5", "20", "5", "--temperature", "0.07", "0.07"],
         ("--k", "--temperature", "once"), code=0, wrong_result=True),
    case("knn-duplicate-temperature", [*KNN, "--k", "5", "--temperature", "0.1", "0.10"],
         ("--temperature", "once"), code=0, wrong_result=True),
    # defect 2: numbers refused at parse time
    case("knn-temperature-nan", [*KNN, "--temperature", "nan"], ("--temperature", "nan"), wrong_result=True),
    case("knn-temperature-inf", [*KNN, "--temperature", "inf"], ("--temperature", "inf")),
    case("knn-temperature-zero", [*KNN, "--temperature", "0"], ("--temperature", "positive")),
    case("knn-temperature-negative", [*KNN, "--temperature", "0.07", "-0.1"], ("--temperature", "-0.1")),
    case("knn-temperature-text", [*KNN, "--temperature", "warm"], ("--temperature", "warm")),
    case("knn-k-zero", [*KNN, "--k", "0"], ("--k", "0")),
    case("knn-k-negative", [*KNN, "--k", "20", "-5"], ("--k", "-5")),
    case("knn-k-fraction", [*KNN, "--k", "2.5"], ("--k", "2.5")),
    case("knn-k-larger-than-train", [*KNN, "--k", "5000"], ("k=5000", "{train}")),
    case("knn-memory-budget-zero", [*KNN, "--memory-budget", "0"], ("--memory-budget",)),
    case("knn-memory-budget-nan", [*KNN, "--memory-budget", "nan"], ("--memory-budget", "nan")),
    case("knn-memory-budget-inf", [*KNN, "--memory-budget", "inf"], ("--memory-budget", "inf")),
    case("knn-recall-sample-negative", [*KNN, "--index", "ivf", "--recall-sample", "-1"], ("--recall-sample",)),
    case("knn-device-tpu", [*KNN, "--device", "tpu"], ("--device", "tpu")),
    case("knn-device-bad-index", [*KNN, "--device", "cuda:one"], ("--device", "cuda:one")),
    case("knn-index-unknown", [*KNN, "--index", "annoy"], ("--index", "annoy")),
    # defect 3/4: outputs checked before any compute
    case("knn-json-is-folder", [*KNN, "--k", "5", "--json", "{tmp}"], ("--json", "{tmp}")),
    case("knn-json-onto-train-input", [*KNN, "--k", "5", "--json", "{train}"], ("--json", "{train}")),
    case("knn-json-onto-labels-input", [*KNN, "--k", "5", "--train-labels", "{tmp}/l.npy", "--json", "{tmp}/l.npy"],
         ("--json", "{tmp}/l.npy"), setup=labels_file),
    case("knn-json-onto-checkpoint", [*KNN, "--k", "5", "--json", "{ckpt}"], ("--json", "{ckpt}")),
    case("knn-json-under-a-file", [*KNN, "--k", "5", "--json", "{bad_text}/knn.json"], ("--json", "{bad_text}"),
         watch=("{bad_text}",)),
    # defect 6: unreadable or wrong files
    case("knn-train-empty-file", given(KNN, "--train", "{bad_empty}"), ("{bad_empty}", "empty")),
    case("knn-train-random-bytes", given(KNN, "--train", "{bad_random}"), ("{bad_random}",)),
    case("knn-train-text-file", given(KNN, "--train", "{bad_text}"), ("{bad_text}",)),
    case("knn-train-namespace-pickle", given(KNN, "--train", "{bad_namespace_pickle}"),
         ("{bad_namespace_pickle}", "argparse.Namespace")),
    case("knn-train-malicious-pickle", given(KNN, "--train", "{bad_malicious_pickle}"), ("{bad_malicious_pickle}",)),
    case("knn-train-is-checkpoint", given(KNN, "--train", "{ckpt}"), ("{ckpt}",)),
    case("knn-train-is-folder", given(KNN, "--train", "{tmp}"), ("{tmp}", "folder")),
    case("knn-train-is-yaml", given(KNN, "--train", "{config}"), ("{config}", ".safetensors")),
    case("knn-test-missing", given(KNN, "--test", "{tmp}/nope.safetensors"), ("{tmp}/nope.safetensors",)),
    case("knn-test-truncated-safetensors", given(KNN, "--test", "{tmp}/cut.safetensors"),
         ("{tmp}/cut.safetensors",), setup=truncated_safetensors),
    case("knn-test-garbage-safetensors", given(KNN, "--test", "{tmp}/junk.safetensors"),
         ("{tmp}/junk.safetensors",), setup=garbage_safetensors),
    case("knn-test-without-labels", given(KNN, "--test", "{tmp}/nolabels.safetensors"),
         ("{tmp}/nolabels.safetensors", "labels"), setup=safetensors_without_labels),
    case("knn-test-dims-differ", given(KNN, "--test", "{tmp}/d7.safetensors"), ("{tmp}/d7.safetensors", "D=7"),
         setup=dims_differ),
    case("knn-test-labels-wrong-length", given(KNN, "--test", "{tmp}/x.npy"), ("{tmp}/x.npy", "labels"),
         setup=npy_labels_short),
    case("knn-train-labels-is-folder", [*KNN, "--train-labels", "{tmp}"], ("{tmp}", "folder")),
    case("knn-train-labels-file-wrong-length", [*KNN, "--train-labels", "{tmp}/short.npy"],
         ("{tmp}/short.npy",), setup=labels_file_short),
    case("knn-test-nan-rows", given(KNN, "--test", "{tmp}/nan.safetensors"), ("{tmp}/nan.safetensors", "NaN"),
         setup=nan_embeddings),
    case("knn-test-fractional-labels", given(KNN, "--test", "{tmp}/f.npy"), ("{tmp}/f_labels.npy", "integers"),
         setup=float_labels),
    case("knn-test-other-class-list", given(KNN, "--test", "{tmp}/other.safetensors"),
         ("{tmp}/other.safetensors", "class"), setup=other_classes),
    case("knn-test-labels-beyond-classes", given(KNN, "--test", "{tmp}/beyond.safetensors"),
         ("{tmp}/beyond.safetensors", "classes"), setup=labels_beyond_classes),
    # scoring a set against itself finds every query as its own neighbour (an inflated number)
    case("knn-train-and-test-same-file", ["knn", "--train", "{train}", "--test", "{train}", NP],
         ("--test", "{train}"), wrong_result=True),
    case("knn-temperature-nan-subprocess", [*KNN, "--temperature", "nan"], ("--temperature",),
         subprocess=True, wrong_result=True),
]

# ----------------------------------------------------------------------------------------------
# embed
# ----------------------------------------------------------------------------------------------

EMBED_CASES = [
    case("embed-checkpoint-empty", [*EMBED_OUT[:2], "{bad_empty}", *EMBED_OUT[3:]], ("{bad_empty}",)),
    case("embed-checkpoint-random-bytes", [*EMBED_OUT[:2], "{bad_random}", *EMBED_OUT[3:]], ("{bad_random}",)),
    case("embed-checkpoint-text-file", [*EMBED_OUT[:2], "{bad_text}", *EMBED_OUT[3:]], ("{bad_text}",)),
    case("embed-checkpoint-namespace-pickle", [*EMBED_OUT[:2], "{bad_namespace_pickle}", *EMBED_OUT[3:]],
         ("{bad_namespace_pickle}", "config")),
    case("embed-checkpoint-malicious-pickle", [*EMBED_OUT[:2], "{bad_malicious_pickle}", *EMBED_OUT[3:]],
         ("{bad_malicious_pickle}",)),
    case("embed-checkpoint-missing", [*EMBED_OUT[:2], "{tmp}/none.pt", *EMBED_OUT[3:]], ("{tmp}/none.pt",)),
    case("embed-checkpoint-is-folder", [*EMBED_OUT[:2], "{run}", *EMBED_OUT[3:]], ("--checkpoint", "{run}")),
    case("embed-checkpoint-is-embeddings", [*EMBED_OUT[:2], "{train}", *EMBED_OUT[3:]], ("--checkpoint", "{train}")),
    case("embed-checkpoint-is-a-list", [*EMBED_OUT[:2], "{tmp}/list.pt", *EMBED_OUT[3:]], ("{tmp}/list.pt",),
         setup=ckpt_a_list),
    case("embed-checkpoint-missing-keys", [*EMBED_OUT[:2], "{tmp}/partial.pt", *EMBED_OUT[3:]],
         ("{tmp}/partial.pt",), setup=ckpt_missing_keys),
    case("embed-checkpoint-model-not-a-dict", [*EMBED_OUT[:2], "{tmp}/flat.pt", *EMBED_OUT[3:]],
         ("{tmp}/flat.pt", "model"), setup=ckpt_model_not_dict),
    case("embed-checkpoint-bad-config", [*EMBED_OUT[:2], "{tmp}/badcfg.pt", *EMBED_OUT[3:]],
         ("{tmp}/badcfg.pt", "simclr"), setup=ckpt_bad_config),
    case("embed-checkpoint-wrong-shape", [*EMBED_OUT[:2], "{tmp}/shape.pt", *EMBED_OUT[3:]],
         ("{tmp}/shape.pt", "shape"), setup=ckpt_wrong_shape),
    case("embed-checkpoint-nan-weights", [*EMBED_OUT[:2], "{tmp}/nan.pt", *EMBED_OUT[3:]],
         ("{tmp}/nan.pt", "NaN"), setup=ckpt_nan_weights),
    case("embed-backbone-without-sidecar", [*EMBED_OUT[:2], "{tmp}/backbone.pt", *EMBED_OUT[3:]],
         ("{tmp}/backbone.json",), setup=backbone_without_sidecar),
    case("embed-backbone-broken-sidecar", [*EMBED_OUT[:2], "{tmp}/backbone.pt", *EMBED_OUT[3:]],
         ("{tmp}/backbone.json",), setup=backbone_broken_sidecar),
    case("embed-backbone-projection-features", [*EMBED_OUT[:2], "{tmp}/backbone.pt", *EMBED_OUT[3:],
                                                "--features", "projection"],
         ("--features", "{tmp}/backbone.pt"), setup=exported_backbone),
    # defect 4: outputs
    case("embed-out-onto-checkpoint", [*EMBED, "--out", "{ckpt}"], ("--out", "{ckpt}")),
    case("embed-out-is-folder", [*EMBED, "--out", "{tmp}"], ("--out", "{tmp}")),
    case("embed-out-onto-own-checkpoint-copy", [*EMBED[:2], "{tmp}/c.pt", *EMBED[3:], "--out", "{tmp}/c.pt"],
         ("--out", "{tmp}/c.pt"), setup=lambda env, tmp: shutil.copy(env.ckpt, os.path.join(tmp, "c.pt"))),
    case("embed-out-not-safetensors", [*EMBED, "--out", "{tmp}/emb.npy"], ("--out", ".safetensors")),
    case("embed-out-under-a-file", [*EMBED, "--out", "{bad_text}/x.safetensors"], ("--out", "{bad_text}"),
         watch=("{bad_text}",)),
    case("embed-json-is-folder", [*EMBED_OUT, "--json", "{tmp}"], ("--json", "{tmp}")),
    case("embed-json-onto-checkpoint", [*EMBED_OUT, "--json", "{ckpt}"], ("--json", "{ckpt}")),
    case("embed-json-onto-backbone-sidecar", [*EMBED_OUT[:2], "{tmp}/backbone.pt", *EMBED_OUT[3:], "--json",
                                              "{tmp}/backbone.json"], ("--json", "{tmp}/backbone.json"),
         setup=exported_backbone),
    case("embed-json-same-as-out", [*EMBED, "--out", "{tmp}/e.safetensors", "--json", "{tmp}/e.safetensors"],
         ("--json", "--out")),
    # defect 2: numbers and names at parse time
    case("embed-batch-size-zero", [*EMBED_OUT, "--batch-size", "0"], ("--batch-size",)),
    case("embed-batch-size-negative", [*EMBED_OUT, "--batch-size", "-8"], ("--batch-size", "-8")),
    case("embed-subset-zero", given(EMBED_OUT, "--subset", "0"), ("--subset",)),
    case("embed-subset-larger-than-split", given(EMBED_OUT, "--subset", "10000000"), ("--subset", "10000000")),
    case("embed-workers-negative", [*EMBED_OUT, "--workers", "-1"], ("--workers", "-1")),
    case("embed-image-size-zero", [*EMBED_OUT, "--image-size", "0"], ("--image-size",)),
    case("embed-device-tpu", [*EMBED_OUT, "--device", "tpu"], ("--device", "tpu")),
    case("embed-split-unknown", [*EMBED_OUT[:4], "val", *EMBED_OUT[5:]], ("--split", "val")),
    case("embed-dtype-unknown", [*EMBED_OUT, "--dtype", "int8"], ("--dtype", "int8")),
    # data
    case("embed-data-folder-without-images", [*EMBED_OUT, "--data", "{tmp}/imgs"], ("{tmp}/imgs", "no images"),
         setup=empty_image_folder),
    case("embed-data-unknown-name", [*EMBED_OUT, "--data", "imagenet-22k"], ("--data", "imagenet-22k")),
    case("embed-data-root-missing", [*EMBED_OUT, "--data", "cifar10", "--root", "{tmp}/nowhere"],
         ("{tmp}/nowhere",)),
    case("embed-data-wrong-channels", [*EMBED[:5], *EMBED[7:], "--out", "{tmp}/o.safetensors",
                                       "--data", "{tmp}/rgb"], ("{tmp}/rgb", "channels"),
         setup=rgb_image_folder),
]

# ----------------------------------------------------------------------------------------------
# linear
# ----------------------------------------------------------------------------------------------

LINEAR_CASES = [
    # defect 2: hyperparameters at parse time (some used to print a number from an untrained head)
    case("linear-lrs-zero", [*CACHED, "--lrs", "0"], ("--lrs",), wrong_result=True),
    case("linear-lrs-nan", [*CACHED, "--lrs", "0.1", "nan"], ("--lrs", "nan")),
    case("linear-lrs-inf", [*CACHED, "--lrs", "inf"], ("--lrs", "inf")),
    case("linear-lrs-negative", [*CACHED, "--lrs", "-1"], ("--lrs", "-1")),
    case("linear-lr-zero", [*MOCOV2, "--lr", "0"], ("--lr",)),
    case("linear-l2-nan", [*LOGREG, "--l2", "nan"], ("--l2", "nan")),
    case("linear-l2-zero", [*LOGREG, "--l2", "0"], ("--l2",)),
    case("linear-l2-negative", [*LOGREG, "--l2", "0.001", "-0.001"], ("--l2", "-0.001")),
    case("linear-max-iter-zero", [*LOGREG[:-3], "--max-iter", "0", NP], ("--max-iter",), wrong_result=True),
    case("linear-epochs-zero", [*CACHED[:-3], "--epochs", "0", NP], ("--epochs",)),
    case("linear-batch-size-zero", [*CACHED, "--batch-size", "0"], ("--batch-size",)),
    case("linear-weight-decay-negative", [*CACHED, "--weight-decay", "-0.1"], ("--weight-decay", "-0.1")),
    case("linear-weight-decay-nan", [*CACHED, "--weight-decay", "nan"], ("--weight-decay", "nan")),
    case("linear-val-fraction-one", [*CACHED, "--val-fraction", "1"], ("--val-fraction",)),
    case("linear-val-fraction-zero", [*LOGREG, "--val-fraction", "0"], ("--val-fraction",)),
    case("linear-seed-negative", [*CACHED, "--seed", "-3"], ("--seed", "-3")),
    case("linear-subset-zero", given(MOCOV2, "--subset", "0"), ("--subset",)),
    case("linear-workers-negative", [*MOCOV2, "--workers", "-2"], ("--workers", "-2")),
    case("linear-image-size-zero", [*MOCOV2, "--image-size", "0"], ("--image-size",)),
    case("linear-save-every-zero", [*MOCOV2, "--work-dir", "{tmp}/probe", "--save-every", "0"], ("--save-every",)),
    case("linear-save-every-without-work-dir", [*MOCOV2, "--save-every", "5"], ("--save-every", "--work-dir")),
    case("linear-device-tpu", [*CACHED, "--device", "tpu"], ("--device", "tpu")),
    case("linear-protocol-unknown", ["linear", "--protocol", "svm", *TRAIN_TEST, NP], ("--protocol", "svm")),
    # defect 6: checkpoints
    case("linear-checkpoint-empty", [*MOCOV2[:4], "{bad_empty}", *MOCOV2[5:]], ("{bad_empty}",)),
    case("linear-checkpoint-random-bytes", ["linear", "--protocol", "mocov3", "--checkpoint", "{bad_random}", NP],
         ("{bad_random}",)),
    case("linear-checkpoint-text-file", [*MOCOV2[:4], "{bad_text}", *MOCOV2[5:]], ("{bad_text}",)),
    case("linear-checkpoint-namespace-pickle", ["linear", "--protocol", "cached", "--checkpoint",
                                                "{bad_namespace_pickle}", NP],
         ("{bad_namespace_pickle}", "config")),
    case("linear-checkpoint-malicious-pickle", ["linear", "--protocol", "logreg", "--checkpoint",
                                                "{bad_malicious_pickle}", NP], ("{bad_malicious_pickle}",)),
    case("linear-checkpoint-is-embeddings", [*MOCOV2[:4], "{train}", *MOCOV2[5:]], ("--checkpoint", "{train}")),
    case("linear-checkpoint-missing-keys", [*MOCOV2[:4], "{tmp}/partial.pt", *MOCOV2[5:]],
         ("{tmp}/partial.pt",), setup=ckpt_missing_keys),
    case("linear-checkpoint-missing", [*MOCOV2[:4], "{tmp}/nope.pt", *MOCOV2[5:]], ("{tmp}/nope.pt",)),
    case("linear-data-wrong-channels", [*MOCOV2, "--data", "{tmp}/rgb"], ("{tmp}/rgb", "channels"),
         setup=rgb_image_folder),
    # defect 4: outputs
    case("linear-save-head-onto-checkpoint", [*CACHED, "--save-head", "{ckpt}"], ("--save-head", "{ckpt}")),
    case("linear-save-head-onto-train-input", [*CACHED, "--save-head", "{train}"], ("--save-head", "{train}")),
    case("linear-save-head-onto-own-checkpoint", [*MOCOV2[:4], "{tmp}/c.pt", *MOCOV2[5:], "--save-head",
                                                  "{tmp}/c.pt"], ("--save-head", "{tmp}/c.pt"),
         setup=lambda env, tmp: shutil.copy(env.ckpt, os.path.join(tmp, "c.pt"))),
    case("linear-save-head-is-folder", [*LOGREG, "--save-head", "{tmp}"], ("--save-head", "{tmp}")),
    case("linear-json-onto-test-input", [*LOGREG, "--json", "{test}"], ("--json", "{test}")),
    case("linear-json-is-folder", [*CACHED, "--json", "{tmp}"], ("--json", "{tmp}")),
    case("linear-json-onto-checkpoint", [*CACHED, "--json", "{ckpt}"], ("--json", "{ckpt}")),
    case("linear-json-same-as-save-head", [*CACHED, "--json", "{tmp}/h.pt", "--save-head", "{tmp}/h.pt"],
         ("--json", "--save-head")),
    # embeddings files
    case("linear-test-dims-differ", given(CACHED, "--test", "{tmp}/d7.safetensors"), ("{tmp}/d7.safetensors", "D=7"),
         setup=dims_differ),
    case("linear-test-labels-wrong-length", given(LOGREG, "--test", "{tmp}/x.npy"), ("{tmp}/x.npy",),
         setup=npy_labels_short),
    case("linear-train-random-bytes", given(CACHED, "--train", "{bad_random}"), ("{bad_random}",)),
    case("linear-train-nan-rows", given(LOGREG, "--train", "{tmp}/nan.safetensors"), ("{tmp}/nan.safetensors", "NaN"),
         setup=nan_embeddings),
    case("linear-train-only", ["linear", "--protocol", "cached", "--train", "{train}", NP], ("--test",)),
    case("linear-test-only-with-checkpoint", ["linear", "--protocol", "logreg", "--checkpoint", "{ckpt}", "--test",
                                              "{test}", NP], ("--train", "--test")),
    case("linear-image-protocol-given-embeddings", [*MOCOV2, *TRAIN_TEST], ("--train", "mocov2")),
    case("linear-train-and-test-same-file", ["linear", "--protocol", "logreg", "--train", "{test}", "--test",
                                             "{test}", "--max-iter", "5", NP], ("--test", "{test}"),
         wrong_result=True),
]

# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------

EVALUATE_CASES = [
    case("evaluate-run-missing", ["evaluate", "{tmp}/nope", NP], ("{tmp}/nope",)),
    case("evaluate-run-is-a-file", ["evaluate", "{bad_text}", NP], ("{bad_text}",), watch=("{bad_text}",)),
    case("evaluate-run-without-checkpoint", EVAL, ("{tmp}/run/checkpoints/last.pt",), setup=run_without_checkpoint),
    case("evaluate-checkpoint-empty", [*EVAL, "--checkpoint", "{bad_empty}"], ("{bad_empty}",), setup=evaluated_run),
    case("evaluate-checkpoint-random-bytes", [*EVAL, "--checkpoint", "{bad_random}"], ("{bad_random}",),
         setup=evaluated_run),
    case("evaluate-checkpoint-text-file", [*EVAL, "--checkpoint", "{bad_text}"], ("{bad_text}",),
         setup=evaluated_run),
    case("evaluate-checkpoint-namespace-pickle", [*EVAL, "--checkpoint", "{bad_namespace_pickle}"],
         ("{bad_namespace_pickle}", "config"), setup=evaluated_run),
    case("evaluate-checkpoint-malicious-pickle", [*EVAL, "--checkpoint", "{bad_malicious_pickle}"],
         ("{bad_malicious_pickle}",), setup=evaluated_run),
    case("evaluate-checkpoint-is-embeddings", [*EVAL, "--checkpoint", "{train}"], ("--checkpoint", "{train}"),
         setup=evaluated_run),
    case("evaluate-checkpoint-missing-keys", EVAL, ("{tmp}/run/checkpoints/last.pt",), setup=run_ckpt_missing_keys),
    # defect 5: a failed evaluate used to have overwritten RUN/embeddings/ already
    case("evaluate-results-json-corrupt", EVAL, ("{tmp}/run/results.json", "JSON"),
         setup=_evaluated_run_with(_text("results.json", '{"knn": [1, 2'))),
    case("evaluate-results-json-a-list", EVAL, ("{tmp}/run/results.json", "object"),
         setup=_evaluated_run_with(_text("results.json", "[1, 2, 3]\n"))),
    case("evaluate-results-json-a-folder", EVAL, ("{tmp}/run/results.json", "folder"),
         setup=_evaluated_run_with(_folder("results.json"))),
    case("evaluate-history-a-folder", EVAL, ("{tmp}/run/evaluations.jsonl", "folder"),
         setup=_evaluated_run_with(_folder("evaluations.jsonl"))),
    case("evaluate-embeddings-path-a-folder", EVAL, ("{tmp}/run/embeddings/test.safetensors", "folder"),
         setup=_evaluated_run_with(_folder("embeddings/test.safetensors"))),
    case("evaluate-embeddings-folder-a-file", EVAL, ("{tmp}/run/embeddings",),
         setup=_evaluated_run_with(lambda run: (shutil.rmtree(os.path.join(run, "embeddings")),
                                                _text("embeddings", "not a folder\n")(run)))),
    case("evaluate-projection-of-exported-backbone", [*EVAL, "--checkpoint", "{tmp}/backbone.pt", "--features",
                                                      "projection"], ("--features", "{tmp}/backbone.pt"),
         setup=lambda env, tmp: (evaluated_run(env, tmp), exported_backbone(env, tmp))),
    case("evaluate-k-larger-than-subset", given(EVAL, "--subset", "100"), ("--subset", "200"), setup=evaluated_run),
    case("evaluate-config-broken", EVAL, ("{tmp}/run/config.yaml",),
         setup=_evaluated_run_with(_text("config.yaml", "method: [mocov2\n  seed: {\n"))),
    case("evaluate-data-missing", EVAL, ("{tmp}/no-such-data",), setup=run_with_missing_data),
    # defect 4: outputs
    case("evaluate-json-onto-checkpoint", [*EVAL, "--json", "{tmp}/run/checkpoints/last.pt"],
         ("--json", "{tmp}/run/checkpoints/last.pt"), setup=evaluated_run),
    case("evaluate-json-onto-results", [*EVAL, "--json", "{tmp}/run/results.json"],
         ("--json", "{tmp}/run/results.json"), setup=evaluated_run),
    case("evaluate-json-onto-embeddings", [*EVAL, "--json", "{tmp}/run/embeddings/train.safetensors"],
         ("--json", "{tmp}/run/embeddings/train.safetensors"), setup=evaluated_run),
    case("evaluate-json-is-folder", [*EVAL, "--json", "{tmp}/run"], ("--json", "{tmp}/run"), setup=evaluated_run),
    # defect 2: parse time
    case("evaluate-batch-size-zero", [*EVAL, "--batch-size", "0"], ("--batch-size",), setup=evaluated_run),
    case("evaluate-memory-budget-nan", [*EVAL, "--memory-budget", "nan"], ("--memory-budget",), setup=evaluated_run),
    case("evaluate-subset-zero", given(EVAL, "--subset", "0"), ("--subset",), setup=evaluated_run),
    case("evaluate-workers-negative", [*EVAL, "--workers", "-1"], ("--workers",), setup=evaluated_run),
    case("evaluate-seed-negative", [*EVAL, "--seed", "-1"], ("--seed",), setup=evaluated_run),
    case("evaluate-device-tpu", given(EVAL, "--device", "tpu"), ("--device", "tpu"), setup=evaluated_run),
    case("evaluate-linear-unknown-probe", [*EVAL, "--linear", "cached,svm"], ("--linear", "svm"),
         setup=evaluated_run),
    case("evaluate-index-unknown", [*EVAL, "--index", "lsh"], ("--index", "lsh"), setup=evaluated_run),
]

INSPECT = ["inspect", "{ckpt}"]

INSPECT_CASES = [
    case("inspect-empty", ["inspect", "{bad_empty}"], ("{bad_empty}", "empty")),
    case("inspect-random-bytes", ["inspect", "{bad_random}"], ("{bad_random}", "not a torch checkpoint")),
    case("inspect-text-file", ["inspect", "{bad_text}"], ("{bad_text}",)),
    case("inspect-malicious-pickle", ["inspect", "{bad_malicious_pickle}"], ("{bad_malicious_pickle}", "system")),
    case("inspect-missing", ["inspect", "{tmp}/none.pt"], ("{tmp}/none.pt",)),
    case("inspect-folder", ["inspect", "{run}"], ("{run}", "folder")),
    case("inspect-embeddings-file", ["inspect", "{train}"], ("{train}", "embeddings")),
    case("inspect-a-list", ["inspect", "{tmp}/list.pt"], ("{tmp}/list.pt", "list"), setup=ckpt_a_list),
    case("inspect-unknown-layout", ["inspect", "{tmp}/backbone.pt"], ("{tmp}/backbone.pt", "Known formats"),
         setup=unknown_layout),
    case("inspect-vit-heads-on-sslbf", [*INSPECT, "--vit-heads", "6"], ("--vit-heads", "{ckpt}")),
    case("inspect-vit-heads-zero", [*INSPECT, "--vit-heads", "0"], ("--vit-heads",)),
    case("inspect-dino-network-on-sslbf", [*INSPECT, "--dino-network", "student"], ("--dino-network", "{ckpt}")),
    case("embed-dino-network-on-sslbf", [*EMBED_OUT, "--dino-network", "teacher"], ("--dino-network", "{ckpt}")),
    case("embed-dino-network-on-torchvision", [*EMBED_OUT[:2], "{tmp}/tv.pt", *EMBED_OUT[3:], "--data",
                                               "fashion-mnist", "--dino-network", "student"],
         ("--dino-network", "torchvision"), setup=torchvision_resnet),
    case("inspect-json-onto-checkpoint", [*INSPECT, "--json", "{ckpt}"], ("--json", "{ckpt}")),
    case("inspect-json-is-folder", [*INSPECT, "--json", "{tmp}"], ("--json", "{tmp}")),
    case("embed-foreign-without-data", [*EMBED_OUT[:2], "{tmp}/tv.pt", *EMBED_OUT[3:]], ("--data", "torchvision"),
         setup=torchvision_resnet),
    case("embed-foreign-projection", [*EMBED_OUT[:2], "{tmp}/tv.pt", *EMBED_OUT[3:], "--data", "fashion-mnist",
                                      "--features", "projection"], ("--features", "torchvision"),
         setup=torchvision_resnet),
]

CASES = KNN_CASES + EMBED_CASES + LINEAR_CASES + EVALUATE_CASES + INSPECT_CASES

# ----------------------------------------------------------------------------------------------
# issue 21, cause 3: unreadable images in image folders (embed, linear, evaluate).
# Without --skip-unreadable: exit 2, one line naming the file, nothing written. With it: exit 0,
# and the written file's rows are exactly the readable images, with their own paths and labels,
# the bad file listed in its metadata (`check`). Each case builds {tmp}/imgs (3 images a class
# in val/ant and val/bee, plus one damaged file val/ant/bad.*) and a 3-channel checkpoint {tmp}/rgb.pt.
# ----------------------------------------------------------------------------------------------

IMAGE_DAMAGES = ("truncated", "empty", "text", "bomb", "bomb-over-twice")
BAD_IMAGE = {"truncated": "{tmp}/imgs/val/ant/bad.jpg", "empty": "{tmp}/imgs/val/ant/bad.jpg",
             "text": "{tmp}/imgs/val/ant/bad.png", "bomb": "{tmp}/imgs/val/ant/bad.png",
             "bomb-over-twice": "{tmp}/imgs/val/ant/bad.png"}
IMAGE_SAYS = {"truncated": "image file is truncated", "empty": "cannot identify image file",
              "text": "cannot identify image file", "bomb": "decompression-bomb limit",
              "bomb-over-twice": "decompression-bomb limit"}
EMBED_IMAGES = ["embed", "--checkpoint", "{tmp}/rgb.pt", "--data", "{tmp}/imgs", "--split", "test", "--out",
                "{tmp}/out.safetensors", "--workers", "2", "--batch-size", "2", NP]


def unreadable_image_folder(damage: str, every_image: bool = False):
    def setup(env, tmp):
        from image_files import image_folder, rgb_checkpoint

        rgb_checkpoint(os.path.join(tmp, "rgb.pt"))
        image_folder(os.path.join(tmp, "imgs"), per_class=0 if every_image else 3,
                     bad={"val/ant/bad": damage, **({"val/bee/bad": damage, "train/ant/x": damage} if every_image
                                                   else {})})
    return setup


def rows_are_the_readable_images(bad_name: str):
    def check(tmp):
        from ssl_bf.data import find_images
        from ssl_bf.eval.formats import load_embeddings

        bad = os.path.join(tmp, "imgs", "val", "ant", bad_name)
        emb = load_embeddings(os.path.join(tmp, "out.safetensors"))
        readable = [p for cls in ("ant", "bee") for p in find_images(os.path.join(tmp, "imgs", "val", cls)) if p != bad]
        assert emb.image_paths == readable and len(emb) == 6
        assert emb.labels.tolist() == [("ant", "bee").index(os.path.basename(os.path.dirname(p))) for p in readable]
        assert json.loads(emb.metadata["unreadable_skipped"]) == [bad]
    return check


def _image_cases():
    cases = []
    for damage in IMAGE_DAMAGES:
        bad = BAD_IMAGE[damage]
        cases.append(Case(f"embed-unreadable-image-{damage}", EMBED_IMAGES, code=2,
                          says=(f"unreadable image {bad}: ", IMAGE_SAYS[damage], "--skip-unreadable"),
                          setup=unreadable_image_folder(damage), unchanged=WATCH, wrong_result=True))
        cases.append(Case(f"embed-skip-unreadable-image-{damage}", [*EMBED_IMAGES, "--skip-unreadable"], code=0,
                          says=(f"left out unreadable image {bad} (", IMAGE_SAYS[damage]),
                          setup=unreadable_image_folder(damage), unchanged=("{run}", "{train}", "{test}", "{tmp}/imgs"),
                          check=rows_are_the_readable_images(os.path.basename(bad)), wrong_result=True))
    every = unreadable_image_folder("truncated", every_image=True)
    cases += [
        Case("embed-every-image-unreadable", EMBED_IMAGES, says=("unreadable image {tmp}/imgs/val/ant/bad.jpg: ",),
             setup=every, unchanged=WATCH),
        Case("embed-skip-unreadable-every-image-unreadable", [*EMBED_IMAGES, "--skip-unreadable"],
             says=("no readable image in {tmp}/imgs/val: 2 of its 2 images are unreadable (the first, "
                   "{tmp}/imgs/val/ant/bad.jpg: OSError: image file is truncated",), setup=every, unchanged=WATCH),
        Case("linear-mocov2-unreadable-image", ["linear", "--protocol", "mocov2", "--checkpoint", "{tmp}/rgb.pt",
                                                "--data", "{tmp}/imgs", "--epochs", "1", "--batch-size", "4",
                                                "--workers", "2", NP, "--json", "{tmp}/lin.json"],
             says=("unreadable image {tmp}/imgs/val/ant/bad.jpg: ",), setup=unreadable_image_folder("truncated"),
             unchanged=WATCH),
        Case("linear-logreg-unreadable-image", ["linear", "--protocol", "logreg", "--checkpoint", "{tmp}/rgb.pt",
                                                "--data", "{tmp}/imgs", "--workers", "2", NP, "--json", "{tmp}/l.json"],
             says=("unreadable image {tmp}/imgs/val/ant/bad.png: ",), setup=unreadable_image_folder("text"),
             unchanged=WATCH),
        Case("evaluate-unreadable-image", ["evaluate", "{run}", "--checkpoint", "{tmp}/rgb.pt", "--data", "{tmp}/imgs",
                                           "--linear", "none", "--workers", "2", NP],
             says=("unreadable image {tmp}/imgs/val/ant/bad.jpg: ",), setup=unreadable_image_folder("empty"),
             unchanged=WATCH),
    ]
    return cases


UNREADABLE_IMAGE_CASES = _image_cases()
CASES += UNREADABLE_IMAGE_CASES

# ----------------------------------------------------------------------------------------------
# Issue 21, cause 1: one output guard for every output (ssl_bf/outputs.py). Every case is refused
# before any compute, names the option, and leaves the target (a special file stays special), the
# run and the scratch folder byte-identical.
# ----------------------------------------------------------------------------------------------
from output_targets import (JSON, LONG_NAME, PNG, both, copy_of, make_bytes, make_chardev,  # noqa: E402
                            make_fifo, make_link, make_socket)

KNN_JSON = [*KNN, "--k", "5", "--json"]
LOGREG_JSON = [*LOGREG, "--json"]
INSPECT_JSON = [*INSPECT, "--json"]
EMBED_JSON = [*EMBED_OUT, "--json"]

OUTPUT_GUARD_CASES = [
    # special files: the atomic rename used to replace them with a regular file
    case("knn-json-a-char-device", [*KNN_JSON, "{tmp}/null"], ("--json", "{tmp}/null"), setup=make_chardev("null")),
    case("knn-json-a-fifo", [*KNN_JSON, "{tmp}/fifo"], ("--json", "{tmp}/fifo", "FIFO"), setup=make_fifo("fifo")),
    case("knn-json-a-socket", [*KNN_JSON, "{tmp}/sock"], ("--json", "{tmp}/sock", "socket"),
         setup=make_socket("sock")),
    case("knn-json-a-link-to-a-fifo", [*KNN_JSON, "{tmp}/link"], ("--json", "{tmp}/link", "FIFO"),
         setup=both(make_fifo("fifo"), make_link("link", "fifo"))),
    case("knn-json-a-dangling-link", [*KNN_JSON, "{tmp}/link"], ("--json", "{tmp}/link", "dangling"),
         setup=make_link("link", "nowhere.json")),
    case("linear-json-a-fifo", [*LOGREG_JSON, "{tmp}/fifo"], ("--json", "{tmp}/fifo"), setup=make_fifo("fifo")),
    case("linear-save-head-a-char-device", [*LOGREG, "--save-head", "{tmp}/null"], ("--save-head", "{tmp}/null"),
         setup=make_chardev("null")),
    case("embed-out-a-fifo", [*EMBED, "--out", "{tmp}/e.safetensors"], ("--out", "{tmp}/e.safetensors", "FIFO"),
         setup=make_fifo("e.safetensors")),
    case("embed-json-a-socket", [*EMBED_JSON, "{tmp}/sock"], ("--json", "{tmp}/sock"), setup=make_socket("sock")),
    case("inspect-json-a-fifo", [*INSPECT_JSON, "{tmp}/fifo"], ("--json", "{tmp}/fifo"), setup=make_fifo("fifo")),
    case("evaluate-json-a-char-device", [*EVAL, "--json", "{tmp}/null"], ("--json", "{tmp}/null"),
         setup=both(evaluated_run, make_chardev("null"))),
    case("evaluate-results-json-a-fifo", EVAL, ("{tmp}/run/results.json", "FIFO"),
         setup=both(evaluated_run, lambda env, tmp: os.unlink(os.path.join(tmp, "run", "results.json")),
                    make_fifo("run/results.json"))),
    case("evaluate-history-a-socket", EVAL, ("{tmp}/run/evaluations.jsonl", "socket"),
         setup=both(evaluated_run, lambda env, tmp: os.unlink(os.path.join(tmp, "run", "evaluations.jsonl")),
                    make_socket("run/evaluations.jsonl"))),
    # a run folder's files, written only by the command that owns them
    case("knn-json-onto-run-config", [*KNN_JSON, "{config}"], ("--json", "{config}", "ssl-bf pretrain")),
    case("knn-json-onto-run-metrics", [*KNN_JSON, "{run}/metrics.jsonl"], ("--json", "{run}/metrics.jsonl")),
    case("knn-json-onto-run-results-not-yet-written", [*KNN_JSON, "{run}/results.json"],
         ("--json", "{run}/results.json", "ssl-bf evaluate")),
    case("linear-json-onto-run-metrics", [*LOGREG_JSON, "{run}/metrics.jsonl"], ("--json", "{run}/metrics.jsonl")),
    case("linear-save-head-onto-evaluate-head", [*LOGREG, "--save-head", "{tmp}/run/linear_head.pt"],
         ("--save-head", "{tmp}/run/linear_head.pt", "ssl-bf evaluate"), setup=evaluated_run),
    case("embed-json-onto-run-config", [*EMBED_JSON, "{config}"], ("--json", "{config}")),
    case("embed-out-into-run-checkpoints", [*EMBED, "--out", "{run}/checkpoints/e.safetensors"],
         ("--out", "{run}/checkpoints/e.safetensors", "ssl-bf pretrain")),
    case("inspect-json-onto-run-metrics", [*INSPECT_JSON, "{run}/metrics.jsonl"], ("--json", "{run}/metrics.jsonl")),
    case("evaluate-json-onto-run-metrics", [*EVAL, "--json", "{tmp}/run/metrics.jsonl"],
         ("--json", "{tmp}/run/metrics.jsonl", "ssl-bf pretrain"), setup=evaluated_run),
    case("evaluate-json-onto-run-history", [*EVAL, "--json", "{tmp}/run/evaluations.jsonl"],
         ("--json", "{tmp}/run/evaluations.jsonl"), setup=evaluated_run),
    # an existing file of another kind (recognised by its bytes, whatever its name)
    case("knn-json-onto-an-embeddings-file-named-json", [*KNN_JSON, "{tmp}/e.json"],
         ("--json", "{tmp}/e.json", "safetensors"), setup=copy_of("test", "e.json")),
    case("knn-json-onto-a-png", [*KNN_JSON, "{tmp}/plot.png"], ("--json", "{tmp}/plot.png", "PNG"),
         setup=make_bytes("plot.png", PNG)),
    case("linear-save-head-onto-json", [*LOGREG, "--save-head", "{tmp}/h.pt"], ("--save-head", "{tmp}/h.pt", "JSON"),
         setup=make_bytes("h.pt", JSON)),
    case("embed-out-onto-a-json-file", [*EMBED, "--out", "{tmp}/e.safetensors"],
         ("--out", "{tmp}/e.safetensors", "JSON"), setup=make_bytes("e.safetensors", JSON)),
    case("inspect-json-onto-a-checkpoint-copy", [*INSPECT_JSON, "{tmp}/c.json"], ("--json", "{tmp}/c.json", "torch"),
         setup=copy_of("ckpt", "c.json")),
    case("evaluate-json-onto-a-png", [*EVAL, "--json", "{tmp}/e.json"], ("--json", "{tmp}/e.json", "PNG"),
         setup=both(evaluated_run, make_bytes("e.json", PNG))),
    # names the file system refuses: refused up front, not after the work naming a temp file
    case("knn-json-name-too-long", [*KNN_JSON, "{tmp}/" + LONG_NAME], ("--json", "bytes")),
    case("knn-json-trailing-slash", [*KNN_JSON, "{tmp}/out.json/"], ("--json", "{tmp}/out.json/")),
    case("linear-save-head-name-too-long", [*LOGREG, "--save-head", "{tmp}/" + LONG_NAME], ("--save-head", "bytes")),
    case("embed-out-name-too-long", [*EMBED, "--out", "{tmp}/" + "e" * 300 + ".safetensors"], ("--out", "bytes")),
    case("embed-json-trailing-slash", [*EMBED_JSON, "{tmp}/s/"], ("--json", "{tmp}/s/")),
    case("inspect-json-name-too-long", [*INSPECT_JSON, "{tmp}/" + LONG_NAME], ("--json", "bytes")),
    # evaluate is all or nothing: a --json it cannot write used to leave RUN's files rewritten
    case("evaluate-json-name-too-long", [*EVAL, "--json", "{tmp}/" + LONG_NAME], ("--json", "bytes"),
         setup=evaluated_run),
    case("evaluate-json-trailing-slash", [*EVAL, "--json", "{tmp}/e.json/"], ("--json", "{tmp}/e.json/"),
         setup=evaluated_run),
]
CASES = CASES + OUTPUT_GUARD_CASES


# ==================================================================================================
# Issue 21, cause 5 (configlang): an option given twice never silently drops the first (list
# options merge, single-value options are refused), in every subcommand's parser.
# ==================================================================================================
CASES += [
    case("knn-json-given-twice", [*KNN, "--json", "{tmp}/a.json", "--json", "{tmp}/b.json"],
         ("--json", "{tmp}/a.json", "{tmp}/b.json", "given twice")),
    case("knn-train-given-twice", [*KNN, "--train", "{test}"], ("--train", "given twice")),
    case("knn-index-given-twice", [*KNN, "--index", "flat", "--index", "hnsw"], ("--index", "given twice")),
    case("embed-split-given-twice", [*EMBED_OUT, "--split", "train"], ("--split", "given twice")),
    case("linear-protocol-given-twice", [*CACHED, "--protocol", "logreg"], ("--protocol", "given twice")),
    case("evaluate-checkpoint-given-twice", ["evaluate", "{run}", "--checkpoint", "{ckpt}", "--checkpoint", "{ckpt}",
                                             NP], ("--checkpoint", "given twice")),
    case("inspect-json-given-twice", ["inspect", "{ckpt}", "--json", "{tmp}/a.json", "--json", "{tmp}/b.json"],
         ("--json", "given twice")),
]


# ==================================================================================================
# Issue 22, parts 2-3 (lteval): per-group accuracy and few-shot / low-label probes. A shot count
# no class can give, a fraction outside (0, 1), class counts that do not fit the classes and
# thresholds in the wrong order are refused (exit 2, naming the option and the file or class)
# before anything is written.
# ==================================================================================================
def _npy_counts(counts):
    def setup(env, tmp):
        import numpy as np

        np.save(os.path.join(tmp, "counts.npy"), np.asarray(counts))
    return setup


GROUP_COUNTS = "{tmp}/counts.npy"
CASES += [
    case("knn-shots-above-the-smallest-class", [*KNN, "--shots", "1000"], ("--shots 1000", "class", "smallest")),
    case("linear-shots-above-the-smallest-class", [*LOGREG, "--shots", "1000", "--json", "{tmp}/l.json"],
         ("--shots 1000", "class", "smallest")),
    case("evaluate-shots-above-the-smallest-class", [*EVAL, "--shots", "1000", "--draws", "1"],
         ("--shots 1000", "class", "smallest"), setup=evaluated_run),
    case("knn-shots-zero", [*KNN, "--shots", "0"], ("--shots", "at least 1")),
    case("linear-shots-zero", [*CACHED, "--shots", "0"], ("--shots", "at least 1")),
    case("evaluate-shots-zero", [*EVAL, "--shots", "0"], ("--shots", "at least 1"), setup=evaluated_run),
    case("linear-label-fraction-zero", [*LOGREG, "--label-fraction", "0"], ("--label-fraction", "between 0 and 1")),
    case("linear-label-fraction-above-one", [*LOGREG, "--label-fraction", "1.5"],
         ("--label-fraction", "between 0 and 1")),
    case("linear-shots-with-an-image-protocol", [*MOCOV2, "--shots", "5"], ("--shots", "--protocol cached")),
    case("linear-shots-and-label-fraction", [*LOGREG, "--shots", "5", "--label-fraction", "0.1"],
         ("--shots", "--label-fraction", "one of them")),
    case("knn-group-counts-wrong-length", [*KNN, "--group-counts", GROUP_COUNTS, "--json", "{tmp}/k.json"],
         ("--group-counts", GROUP_COUNTS, "3 counts", "10 classes"), setup=_npy_counts([5, 4, 3])),
    case("linear-group-counts-wrong-length", [*LOGREG, "--group-counts", "{tmp}/counts.json"],
         ("--group-counts", "{tmp}/counts.json", "11 counts"),
         setup=make_bytes("counts.json", b"[" + b"1," * 10 + b"1]")),
    case("knn-group-counts-negative", [*KNN, "--group-counts", GROUP_COUNTS],
         ("--group-counts", GROUP_COUNTS, "negative", "class 3"), setup=_npy_counts([9, 8, 7, -1, 5, 4, 3, 2, 1, 1])),
    case("linear-group-counts-not-a-file", [*CACHED, "--group-counts", "{tmp}/none.npy"],
         ("--group-counts", "{tmp}/none.npy", "no such file")),
    case("knn-group-counts-a-folder", [*KNN, "--group-counts", "{tmp}"], ("--group-counts", "{tmp}", "not a file")),
    case("knn-group-counts-not-counts", [*KNN, "--group-counts", "{tmp}/counts.json"],
         ("--group-counts", "{tmp}/counts.json", "JSON list"), setup=make_bytes("counts.json", b'{"a": 1}')),
    case("knn-group-thresholds-low-above-high", [*KNN, "--group-thresholds", "20", "100"],
         ("--group-thresholds", "LOW is above HIGH")),
    case("linear-group-thresholds-low-above-high", [*LOGREG, "--group-thresholds", "5", "50", "--json", "{tmp}/l.json"],
         ("--group-thresholds", "LOW is above HIGH")),
]


def _data_indices(content):
    """RUN/data_indices.npy of an evaluated run: an array (saved) or raw bytes."""
    def write(run):
        import numpy as np

        path = os.path.join(run, "data_indices.npy")
        if isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        else:
            np.save(path, np.asarray(content))
    return _evaluated_run_with(write)


CASES += [
    case("evaluate-data-indices-negative", EVAL, ("{tmp}/run/data_indices.npy", "-4"),
         setup=_data_indices([0, 1, -4])),
    case("evaluate-data-indices-twice", EVAL, ("{tmp}/run/data_indices.npy", "twice"), setup=_data_indices([3, 3, 5])),
    case("evaluate-data-indices-not-npy", EVAL, ("{tmp}/run/data_indices.npy", "not a readable .npy"),
         setup=_data_indices(b"not an array")),
]
