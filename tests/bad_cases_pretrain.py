"""Bad inputs of `ssl-bf pretrain` and `ssl-bf export`, and config errors (tests/test_bad_inputs.py).

Every case must exit 2 with one clear line naming the file or option, print no traceback, and
leave the finished tiny run ({run}) and any file it names in `unchanged` byte-identical. Cases that
resume onto a modified copy of the run build it in their own scratch folder ({tmp}/run). The tiny
run was trained with `--config {tiny} train.epochs=1 data.subset=256 moco.queue_size=128`, so a
resume that changes nothing else passes those (RESUME below).

Signals (Ctrl-C, SIGTERM) and two live processes on one run folder need real processes: they are
in tests/test_run_guards.py.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil

from bad_inputs_harness import Case, copy_run

RESUME = ["--config", "{tiny}", "train.epochs=1", "data.subset=256", "moco.queue_size=128"]
COPY = "{tmp}/run"
COPY_CKPT = "{tmp}/run/checkpoints/last.pt"
NEW = ["pretrain", "--config", "{tiny}", "run.dir={tmp}/new"]  # a fresh run: must fail before training
# With another config file: the tiny settings as overrides, so nothing big ever starts, and never
# the default run.dir.
SMALL = ["run.dir={tmp}/new", "backbone.stem=small", "backbone.width=8", "moco.dim=32", "moco.hidden_dim=64",
         "moco.queue_size=128", "train.batch_size=64", "data.subset=256", "train.epochs=1", "monitor.knn_every=0",
         "run.tensorboard=false", "run.progress=false"]


def _copy(env, tmp) -> str:
    return copy_run(env, os.path.join(tmp, "run"))


def _copy_with_bad_checkpoint(kind: str):
    def setup(env, tmp):
        run = _copy(env, tmp)
        shutil.copyfile(env.bad[kind], os.path.join(run, "checkpoints", "last.pt"))
    return setup


def _copy_with_edited_checkpoint(edit):
    """A copy of the run whose last.pt is rewritten by `edit(state) -> state`."""
    def setup(env, tmp):
        import torch

        run = _copy(env, tmp)
        path = os.path.join(run, "checkpoints", "last.pt")
        state = torch.load(path, weights_only=True)
        torch.save(edit(state), path)
    return setup


def _without(key):
    def edit(state):
        state.pop(key)
        return state
    return edit


def _with(key, value):
    def edit(state):
        state[key] = value
        return state
    return edit


def _checkpoint_is_a_folder(env, tmp):
    run = _copy(env, tmp)
    path = os.path.join(run, "checkpoints", "last.pt")
    os.unlink(path)
    os.makedirs(path)


_HELD: list[int] = []  # lock file descriptors held by this (test) process, as another pretrain would


def _copy_locked_by_another_process(env, tmp):
    while _HELD:
        os.close(_HELD.pop())
    run = _copy(env, tmp)
    fd = os.open(os.path.join(run, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a second open file description conflicts, even here
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": 4242, "host": "node-elsewhere"}).encode() + b"\n")
    _HELD.append(fd)


def _write(name: str, text: str):
    def setup(env, tmp):
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    return setup


def _save_torch(name: str, make):
    def setup(env, tmp):
        import torch

        torch.save(make(env), os.path.join(tmp, name))
    return setup


def _copy_file(src_key: str, name: str):
    def setup(env, tmp):
        shutil.copyfile(env.paths(tmp)[src_key], os.path.join(tmp, name))
    return setup


def _exported_backbone(env, tmp):
    from ssl_bf.checkpoints.checkpoint import export_backbone

    export_backbone(env.ckpt, os.path.join(tmp, "backbone.pt"))


def _mkdir(name: str):
    def setup(env, tmp):
        os.makedirs(os.path.join(tmp, name))
    return setup


def _second_run(env, tmp):
    copy_run(env, os.path.join(tmp, "other"))


def _ckpt_state(env):
    import torch

    return torch.load(env.ckpt, weights_only=True)


def _resume(*overrides: str) -> list[str]:
    """`pretrain` resuming the copy: RESUME with `overrides` set (a key RESUME sets takes the new
    value in its place: overrides setting one key twice are refused)."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return ["pretrain", *[a for a in RESUME if a.split("=", 1)[0] not in keys], f"run.dir={COPY}", *overrides]


def _changed(id_, *overrides, says, wrong=False):
    """Resume a copy of the finished run with run-defining settings changed."""
    return Case(f"pretrain-resume-changed-{id_}", _resume(*overrides),
                says=(*says, "run.dir"), setup=_copy, unchanged=("{run}", COPY), wrong_result=wrong)


def _config(id_, *overrides, says):
    return Case(f"config-{id_}", [*NEW, *overrides], says=says, unchanged=("{run}", "{tmp}/new"))


CASES = [
    # --- resume with settings that define the run changed (the saved config decides) -----------
    # Used to train epoch 2 at lr 0 (the schedule recomputed for the new batch) and exit 0, with
    # config.yaml claiming batch 128 for the whole run.
    Case("pretrain-resume-changed-batch", _resume("train.epochs=2", "train.batch_size=128"),
         says=("train.batch_size: 64 -> 128", "run.dir"), setup=_copy, unchanged=("{run}", COPY), wrong_result=True),
    Case("pretrain-resume-changed-batch-and-lr", _resume("train.epochs=2", "train.batch_size=32", "train.base_lr=0.1"),
         says=("train.batch_size: 64 -> 32", "train.base_lr: 0.06 -> 0.1"), setup=_copy,
         unchanged=("{run}", COPY), wrong_result=True),
    _changed("seed", "seed=1", says=("seed: 0 -> 1",), wrong=True),
    _changed("method", "method=mocov3", "moco.momentum=0.99", says=("method: mocov2 -> mocov3",
                                                                    "moco.momentum: 0.999 -> 0.99"), wrong=True),
    _changed("batchformer", "batchformer.enabled=true", says=("batchformer.enabled: false -> true",), wrong=True),
    _changed("moco-dim", "moco.dim=64", says=("moco.dim: 32 -> 64",)),
    _changed("temperature", "moco.temperature=0.1", says=("moco.temperature: 0.2 -> 0.1",), wrong=True),
    _changed("queue", "moco.queue_size=256", says=("moco.queue_size: 128 -> 256",), wrong=True),
    _changed("width", "backbone.width=16", says=("backbone.width: 8 -> 16",)),
    _changed("augment", "augment.recipe=light", says=("augment.recipe: mocov2 -> light",), wrong=True),
    _changed("subset", "data.subset=320", says=("data.subset: 256 -> 320",), wrong=True),
    _changed("optimizer", "train.optimizer=adamw", says=("train.optimizer: sgd -> adamw",)),
    _changed("weight-decay", "train.weight_decay=0.001", says=("train.weight_decay: 0.0001 -> 0.001",), wrong=True),
    _changed("warmup", "train.epochs=2", "train.warmup_epochs=1", says=("train.warmup_epochs: 0.0 -> 1.0",), wrong=True),
    _changed("several", "seed=3", "train.batch_size=32", "moco.temperature=0.3",
             says=("seed: 0 -> 3", "train.batch_size: 64 -> 32", "moco.temperature: 0.2 -> 0.3"), wrong=True),
    _changed("data-name", "data.name=cifar10", says=("data.name: fashion-mnist -> cifar10",)),
    Case("pretrain-resume-zero-epochs-on-a-trained-run", _resume("train.epochs=0"),
         says=("holds a trained checkpoint", "run.dir"), setup=_copy, unchanged=("{run}", COPY)),
    # --- resume onto a checkpoint that cannot be read: say which file to move aside ---------------
    *[Case(f"pretrain-resume-{kind.replace('_', '-')}-checkpoint", ["pretrain", *RESUME, f"run.dir={COPY}"],
           says=(COPY_CKPT, f"mv {COPY_CKPT}"), setup=_copy_with_bad_checkpoint(kind), unchanged=("{run}", COPY))
      for kind in ("empty", "random", "text", "namespace_pickle", "malicious_pickle")],
    Case("pretrain-resume-checkpoint-without-model", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(COPY_CKPT, "'model'", f"mv {COPY_CKPT}"), setup=_copy_with_edited_checkpoint(_without("model")),
         unchanged=("{run}", COPY)),
    Case("pretrain-resume-checkpoint-without-config", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(COPY_CKPT, "'config'"), setup=_copy_with_edited_checkpoint(_without("config")),
         unchanged=("{run}", COPY)),
    Case("pretrain-resume-checkpoint-of-two-processes", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(COPY_CKPT, "2 processes"), setup=_copy_with_edited_checkpoint(_with("world_size", 2)),
         unchanged=("{run}", COPY)),
    Case("pretrain-resume-checkpoint-is-a-folder", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(COPY_CKPT, "folder"), setup=_checkpoint_is_a_folder, unchanged=("{run}", COPY)),
    Case("pretrain-resume-checkpoint-not-a-dict", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(COPY_CKPT, f"mv {COPY_CKPT}"), setup=_copy_with_edited_checkpoint(lambda s: [1, 2, 3]),
         unchanged=("{run}", COPY)),
    # --- the run folder itself ---------------------------------------------------------------------
    Case("pretrain-run-folder-locked", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=("PID 4242", "node-elsewhere", f"{COPY}/.lock"), setup=_copy_locked_by_another_process,
         unchanged=("{run}", COPY)),
    # the same through `python -m ssl_bf` in a child: the lock is held by another process for real
    Case("pretrain-run-folder-locked-other-process", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=("PID 4242", f"{COPY}/.lock", "another run.dir"), setup=_copy_locked_by_another_process,
         unchanged=("{run}", COPY), subprocess=True),
    Case("pretrain-resume-changed-batch-subprocess", _resume("train.epochs=2", "train.batch_size=128"),
         says=("train.batch_size: 64 -> 128",), setup=_copy, unchanged=("{run}", COPY), subprocess=True,
         wrong_result=True),
    Case("pretrain-run-dir-is-a-file", ["pretrain", "--config", "{tiny}", "run.dir={bad_text}"],
         says=("run.dir", "{bad_text}", "is a file"), unchanged=("{run}", "{bad_text}")),
    Case("pretrain-run-dir-under-a-file", ["pretrain", "--config", "{tiny}", "run.dir={bad_text}/run"],
         says=("run.dir", "{bad_text}", "is a file"), unchanged=("{run}", "{bad_text}")),
    Case("pretrain-run-dir-unwritable", ["pretrain", "--config", "{tiny}", "run.dir=/proc/ssl-bf-nowhere/run"],
         says=("run.dir", "/proc/ssl-bf-nowhere/run")),
    Case("pretrain-json-is-a-folder", [*NEW, "--json", "{tmp}"], says=("--json", "{tmp}", "folder"),
         unchanged=("{run}", "{tmp}/new")),
    Case("pretrain-json-is-a-checkpoint", [*NEW, "--json", "{ckpt}"], says=("--json", "{ckpt}"),
         unchanged=("{run}", "{tmp}/new")),
    Case("pretrain-json-is-the-config", ["pretrain", "--config", "{tmp}/tiny.yaml", "run.dir={tmp}/new", "--json",
                                         "{tmp}/tiny.yaml"], says=("--json", "{tmp}/tiny.yaml"),
         setup=_copy_file("tiny", "tiny.yaml"), unchanged=("{run}", "{tmp}/tiny.yaml", "{tmp}/new")),
    Case("pretrain-json-under-a-file", [*NEW, "--json", "{bad_text}/summary.json"], says=("--json", "{bad_text}"),
         unchanged=("{run}", "{bad_text}", "{tmp}/new")),
    # --- data ----------------------------------------------------------------------------------------
    Case("pretrain-data-root-is-a-file", [*NEW, "data.root={bad_text}"], says=("data.root", "{bad_text}"),
         unchanged=("{run}", "{tmp}/new")),
    Case("pretrain-data-root-missing", [*NEW, "data.root={tmp}/no-such-data"], says=("{tmp}/no-such-data",),
         unchanged=("{run}", "{tmp}/new")),
    Case("pretrain-data-subset-larger-than-the-data", [*NEW, "data.subset=10000000"], says=("data.subset", "10000000"),
         unchanged=("{run}", "{tmp}/new")),
    # --- command line and config files -------------------------------------------------------------
    Case("pretrain-config-file-missing", ["pretrain", "--config", "{tmp}/nope.yaml", *SMALL], says=("{tmp}/nope.yaml",)),
    Case("pretrain-config-file-is-a-folder", ["pretrain", "--config", "{tmp}", *SMALL], says=("{tmp}", "folder")),
    Case("pretrain-config-file-is-binary", ["pretrain", "--config", "{bad_random}", *SMALL], says=("{bad_random}",)),
    Case("pretrain-config-file-is-a-checkpoint", ["pretrain", "--config", "{ckpt}", *SMALL], says=("{ckpt}",)),
    Case("pretrain-unknown-option", [*NEW, "--epochs", "3"], says=("--epochs",)),
    Case("pretrain-override-without-equals", [*NEW, "train.epochs"], says=("train.epochs", "key=value")),
    Case("pretrain-unknown-key", [*NEW, "train.epoch=3"], says=("train.epoch", "train.epochs")),
    Case("config-yaml-broken", ["pretrain", "--config", "{bad_yaml_broken}", *SMALL], says=("{bad_yaml_broken}", "YAML")),
    Case("config-yaml-a-list", ["pretrain", "--config", "{bad_json_list}", *SMALL], says=("{bad_json_list}", "mapping")),
    Case("config-yaml-key-twice", ["pretrain", "--config", "{tmp}/twice.yaml", *SMALL],
         says=("{tmp}/twice.yaml", "'epochs' is given twice"), setup=_write("twice.yaml", "train: {epochs: 2, epochs: 3}\n")),
    Case("config-yaml-nan-lr", ["pretrain", "--config", "{tmp}/nan.yaml", *SMALL], says=("train.base_lr", "nan"),
         setup=_write("nan.yaml", "train: {base_lr: .nan}\n")),
    Case("config-yaml-inf-temperature", ["pretrain", "--config", "{tmp}/inf.yaml", *SMALL], says=("moco.temperature",),
         setup=_write("inf.yaml", "moco: {temperature: .inf}\n")),
    Case("config-yaml-unknown-key", ["pretrain", "--config", "{tmp}/typo.yaml", *SMALL], says=("train.batchsize", "train.batch_size"),
         setup=_write("typo.yaml", "train: {batchsize: 64}\n")),
    Case("config-section-given-a-value", [*NEW, "train=3"], says=("'train' is a section",)),
    # --- config values: one line naming the key and what it must be -------------------------------
    _config("base-lr-negative", "train.base_lr=-0.1", says=("train.base_lr", "positive")),
    _config("base-lr-zero", "train.base_lr=0", says=("train.base_lr", "positive")),
    _config("base-lr-nan", "train.base_lr=nan", says=("train.base_lr", "nan")),
    _config("base-lr-inf", "train.base_lr=inf", says=("train.base_lr", "inf")),
    _config("base-lr-yaml-nan", "train.base_lr=.nan", says=("train.base_lr",)),
    _config("base-lr-text", "train.base_lr=fast", says=("train.base_lr", "fast")),
    _config("base-lr-bool", "train.base_lr=true", says=("train.base_lr",)),
    _config("temperature-zero", "moco.temperature=0", says=("moco.temperature", "positive")),
    _config("temperature-negative", "moco.temperature=-0.2", says=("moco.temperature", "positive")),
    _config("temperature-nan", "moco.temperature=NaN", says=("moco.temperature",)),
    _config("weight-decay-negative", "train.weight_decay=-1e-4", says=("train.weight_decay", "0")),
    _config("batchformer-weight-decay-negative", "batchformer.weight_decay=-0.1", says=("batchformer.weight_decay",)),
    _config("sgd-momentum-above-one", "train.sgd_momentum=1.5", says=("train.sgd_momentum",)),
    _config("sgd-momentum-negative", "train.sgd_momentum=-0.9", says=("train.sgd_momentum",)),
    _config("moco-momentum-above-one", "moco.momentum=1.01", says=("moco.momentum", "[0, 1]")),
    _config("moco-momentum-negative", "moco.momentum=-0.5", says=("moco.momentum", "[0, 1]")),
    _config("dropout-one", "batchformer.dropout=1", says=("batchformer.dropout", "[0, 1)")),
    _config("dropout-negative", "batchformer.dropout=-0.1", says=("batchformer.dropout", "[0, 1)")),
    _config("batch-size-zero", "train.batch_size=0", says=("train.batch_size",)),
    _config("batch-size-negative", "train.batch_size=-64", says=("train.batch_size",)),
    _config("batch-size-fraction", "train.batch_size=64.5", says=("train.batch_size",)),
    _config("batch-size-nan", "train.batch_size=nan", says=("train.batch_size",)),
    _config("epochs-negative", "train.epochs=-1", says=("train.epochs",)),
    _config("epochs-bool", "train.epochs=true", says=("train.epochs",)),
    _config("queue-size-zero", "moco.queue_size=0", says=("moco.queue_size",)),
    _config("moco-dim-zero", "moco.dim=0", says=("moco.dim",)),
    _config("warmup-negative", "train.warmup_epochs=-1", says=("train.warmup_epochs",)),
    _config("warmup-inf", "train.warmup_epochs=inf", says=("train.warmup_epochs",)),
    _config("time-budget-negative", "train.time_budget_min=-5", says=("train.time_budget_min",)),
    _config("time-budget-nan", "train.time_budget_min=nan", says=("train.time_budget_min",)),
    _config("checkpoint-every-negative", "train.checkpoint_every_steps=-1", says=("train.checkpoint_every_steps",)),
    _config("max-steps-negative", "train.max_steps=-1", says=("train.max_steps",)),
    _config("lr-scale-negative", "batchformer.lr_scale=-1", says=("batchformer.lr_scale",)),
    _config("crop-scale-above-one", "augment.crop_scale_min=1.5", says=("augment.crop_scale_min",)),
    _config("jitter-negative", "augment.jitter_strength=-1", says=("augment.jitter_strength",)),
    # Used to train with a hue jitter of +-0.6 turns (wrapping round the hue circle), which
    # torchvision's ColorJitter refuses; the kornia code before it died with a traceback at >= 2.5.
    _config("jitter-hue-past-half-a-turn", "augment.jitter_strength=6", says=("augment.jitter_strength", "at most 5")),
    _config("image-size-negative", "augment.image_size=-32", says=("augment.image_size",)),
    _config("num-workers-negative", "data.num_workers=-2", says=("data.num_workers",)),
    _config("load-size-zero", "data.load_size=0", says=("data.load_size",)),
    _config("data-subset-zero", "data.subset=0", says=("data.subset",)),
    _config("knn-temperature-zero", "monitor.knn_every=1", "monitor.knn_temperature=0",
            says=("monitor.knn_temperature",)),
    _config("knn-every-negative", "monitor.knn_every=-1", says=("monitor.knn_every",)),
    _config("unknown-method", "method=simclr", says=("method", "simclr", "mocov2")),
    _config("unknown-optimizer", "train.optimizer=adam", says=("train.optimizer", "adamw")),
    _config("unknown-backbone", "backbone.name=resnet101", says=("backbone.name", "resnet18")),
    _config("unknown-dataset", "data.name=mnist", says=("data.name", "fashion-mnist")),
    _config("unknown-key-branch", "batchformer.key_branch=both", says=("batchformer.key_branch",)),
    _config("unknown-device", "train.device=tpu", says=("train.device", "tpu")),
    _config("bool-garbage", "batchformer.enabled=maybe", says=("batchformer.enabled",)),
    # --- export: bad checkpoints (one line naming the file) ----------------------------------------
    *[Case(f"export-{kind.replace('_', '-')}-checkpoint", ["export", f"{{bad_{kind}}}", "{tmp}/out.pt"],
           says=(f"{{bad_{kind}}}",), unchanged=("{run}", f"{{bad_{kind}}}"))
      for kind in ("empty", "random", "text", "namespace_pickle", "malicious_pickle")],
    Case("export-missing-checkpoint", ["export", "{tmp}/nope.pt", "{tmp}/out.pt"], says=("{tmp}/nope.pt", "not found")),
    Case("export-checkpoint-is-a-folder", ["export", "{run}", "{tmp}/out.pt"], says=("{run}", "folder")),
    Case("export-embeddings-as-checkpoint", ["export", "{train}", "{tmp}/out.pt"], says=("{train}",),
         unchanged=("{run}", "{train}")),
    Case("export-config-as-checkpoint", ["export", "{config}", "{tmp}/out.pt"], says=("{config}",)),
    Case("export-checkpoint-without-model", ["export", "{tmp}/nomodel.pt", "{tmp}/out.pt"],
         says=("{tmp}/nomodel.pt", "'model'"), setup=_save_torch("nomodel.pt", lambda env: {"step": 3})),
    Case("export-checkpoint-without-config", ["export", "{tmp}/noconfig.pt", "{tmp}/out.pt"],
         says=("{tmp}/noconfig.pt", "'config'"),
         setup=_save_torch("noconfig.pt", lambda env: {"model": _ckpt_state(env)["model"]})),
    Case("export-model-is-not-a-state-dict", ["export", "{tmp}/tensor-model.pt", "{tmp}/out.pt"],
         says=("{tmp}/tensor-model.pt", "'model'"),
         setup=_save_torch("tensor-model.pt", lambda env: {**_ckpt_state(env), "model": [1, 2]})),
    Case("export-checkpoint-without-backbone", ["export", "{tmp}/headless.pt", "{tmp}/out.pt"],
         says=("{tmp}/headless.pt", "backbone"),
         setup=_save_torch("headless.pt", lambda env: {**_ckpt_state(env), "model": {"projector.0.weight": 1}})),
    Case("export-a-bare-tensor", ["export", "{tmp}/tensor.pt", "{tmp}/out.pt"], says=("{tmp}/tensor.pt",),
         setup=_save_torch("tensor.pt", lambda env: __import__("torch").zeros(3))),
    Case("export-an-exported-backbone", ["export", "{tmp}/backbone.pt", "{tmp}/again.pt"],
         says=("{tmp}/backbone.pt", "exported backbone"), setup=_exported_backbone,
         unchanged=("{run}", "{tmp}/backbone.pt", "{tmp}/backbone.json")),
    # --- export: never destroy work ----------------------------------------------------------------
    Case("export-onto-its-own-checkpoint", ["export", "{ckpt}", "{ckpt}"], says=("export OUT", "{ckpt}")),
    Case("export-onto-another-checkpoint", ["export", "{ckpt}", "{tmp}/other/checkpoints/last.pt"],
         says=("export OUT", "training checkpoint"), setup=_second_run, unchanged=("{run}", "{tmp}/other")),
    Case("export-out-is-a-folder", ["export", "{ckpt}", "{tmp}"], says=("export OUT", "folder")),
    Case("export-out-under-a-file", ["export", "{ckpt}", "{bad_text}/out.pt"], says=("export OUT", "{bad_text}"),
         unchanged=("{run}", "{bad_text}")),
    Case("export-out-unwritable", ["export", "{ckpt}", "/proc/ssl-bf-nowhere/out.pt"], says=("export OUT",)),
    Case("export-out-is-json", ["export", "{ckpt}", "{tmp}/out.json"], says=("export OUT", ".json")),
    Case("export-sidecar-is-the-input", ["export", "{tmp}/model.json", "{tmp}/model.pt"],
         says=("{tmp}/model.json",), setup=_copy_file("ckpt", "model.json"), unchanged=("{run}", "{tmp}/model.json")),
    Case("export-sidecar-is-a-folder", ["export", "{ckpt}", "{tmp}/out.pt"], says=("{tmp}/out.json", "folder"),
         setup=_mkdir("out.json"), unchanged=("{run}", "{tmp}/out.json")),
    Case("export-onto-the-run-config", ["export", "{ckpt}", "{config}"], says=("export OUT", "{config}")),
    Case("export-onto-the-run-metrics", ["export", "{ckpt}", "{run}/metrics.jsonl"], says=("export OUT", "metrics.jsonl")),
    Case("export-missing-out-argument", ["export", "{ckpt}"], says=("out",)),
]

# ----------------------------------------------------------------------------------------------
# issue 21, cause 3: an unreadable image in an image folder stops pretraining with one line naming
# it (the crops are cut in DataLoader workers; the monitor reads the val split), never a worker's
# traceback. {tmp}/imgs: 4 images a class in train/ and val/, plus one damaged file.
# ----------------------------------------------------------------------------------------------

FOLDER_RUN = ["pretrain", "--config", "{tiny}", "run.dir={tmp}/run", "data.name=imagefolder", "data.root={tmp}/imgs",
              "data.subset=null", "data.load_size=32", "augment.image_size=32", "augment.recipe=light",
              "train.batch_size=4", "train.epochs=1", "moco.queue_size=16", "data.num_workers=2"]


def _images_with(bad: dict[str, str], per_class: int = 4):
    def setup(env, tmp):
        from image_files import image_folder

        image_folder(os.path.join(tmp, "imgs"), per_class=per_class, bad=bad)
    return setup


CASES += [
    Case("pretrain-unreadable-training-image", FOLDER_RUN,
         says=("data error: unreadable image {tmp}/imgs/train/bee/bad.jpg: OSError: image file is truncated",
               "data.skip_unreadable=true"),
         setup=_images_with({"train/bee/bad": "truncated"}), unchanged=("{run}", "{tmp}/imgs")),
    Case("pretrain-every-training-image-unreadable-with-skip", [*FOLDER_RUN, "data.skip_unreadable=true"],
         says=("data error: no readable image in {tmp}/imgs/train: ",),
         setup=_images_with({"train/ant/a": "empty", "train/ant/b": "text", "train/bee/c": "empty",
                             "train/bee/d": "bomb", "val/ant/e": "empty"}, per_class=0),
         unchanged=("{run}", "{tmp}/imgs")),
    Case("pretrain-unreadable-monitor-image", [*FOLDER_RUN, "monitor.knn_every=1", "monitor.knn_k=3"],
         says=("data error: unreadable image {tmp}/imgs/val/ant/bad.png: ", "cannot identify image file"),
         setup=_images_with({"val/ant/bad": "text"}), unchanged=("{run}", "{tmp}/imgs")),
]

# ----------------------------------------------------------------------------------------------
# Issue 21, cause 1: one output guard for every output (ssl_bf/outputs.py): `pretrain --json`, the
# run folder's own files, `export OUT` and its sidecar. Each is refused before any work, names the
# option or file, and leaves the target and the runs byte-identical (a special file stays special).
# ----------------------------------------------------------------------------------------------
from output_targets import (JSON, LONG_NAME, copy_of, make_bytes, make_chardev, make_fifo,  # noqa: E402
                            make_socket)


def _copy_with(relpath: str, make):
    """A copy of the run whose `relpath` is replaced by what `make(relpath)` creates."""
    def setup(env, tmp):
        run = _copy(env, tmp)
        os.unlink(os.path.join(run, relpath))
        make(os.path.join("run", relpath))(env, tmp)
    return setup


OUTPUT_GUARD_CASES = [
    Case("pretrain-json-a-fifo", [*NEW, "--json", "{tmp}/fifo"], says=("--json", "{tmp}/fifo", "FIFO"),
         setup=make_fifo("fifo"), unchanged=("{run}", "{tmp}")),
    Case("pretrain-json-a-char-device", [*NEW, "--json", "{tmp}/null"], says=("--json", "{tmp}/null"),
         setup=make_chardev("null"), unchanged=("{run}", "{tmp}")),
    Case("pretrain-json-onto-its-own-new-metrics", [*NEW, "--json", "{tmp}/new/metrics.jsonl"],
         says=("--json", "{tmp}/new/metrics.jsonl", "ssl-bf pretrain"), unchanged=("{run}", "{tmp}")),
    Case("pretrain-json-onto-the-resumed-metrics", ["pretrain", *RESUME, f"run.dir={COPY}", "--json",
                                                    f"{COPY}/metrics.jsonl"],
         says=("--json", f"{COPY}/metrics.jsonl"), setup=_copy, unchanged=("{run}", COPY)),
    Case("pretrain-json-onto-another-run-config", [*NEW, "--json", "{config}"], says=("--json", "{config}"),
         unchanged=("{run}", "{tmp}")),
    Case("pretrain-json-onto-a-checkpoint-copy", [*NEW, "--json", "{tmp}/s.json"], says=("--json", "{tmp}/s.json", "torch"),
         setup=copy_of("ckpt", "s.json"), unchanged=("{run}", "{tmp}")),
    Case("pretrain-json-name-too-long", [*NEW, "--json", "{tmp}/" + LONG_NAME], says=("--json", "bytes"),
         unchanged=("{run}", "{tmp}")),
    Case("pretrain-json-trailing-slash", [*NEW, "--json", "{tmp}/s.json/"], says=("--json", "{tmp}/s.json/"),
         unchanged=("{run}", "{tmp}")),
    Case("pretrain-run-metrics-a-fifo", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(f"{COPY}/metrics.jsonl", "FIFO"), setup=_copy_with("metrics.jsonl", make_fifo), unchanged=("{run}", COPY)),
    Case("pretrain-run-config-a-socket", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(f"{COPY}/config.yaml", "socket"), setup=_copy_with("config.yaml", make_socket), unchanged=("{run}", COPY)),
    # export: the named failure replaced an embeddings file with a torch pickle
    Case("export-onto-an-embeddings-file", ["export", "{ckpt}", "{tmp}/test.safetensors"],
         says=("export OUT", "{tmp}/test.safetensors", "safetensors"), setup=copy_of("test", "test.safetensors"),
         unchanged=("{run}", "{tmp}")),
    Case("export-detectron2-onto-a-torch-file", ["export", "{ckpt}", "{tmp}/b.pkl", "--format", "detectron2"],
         says=("export OUT", "{tmp}/b.pkl", "torch"), setup=copy_of("ckpt", "b.pkl"), unchanged=("{run}", "{tmp}")),
    Case("export-out-a-fifo", ["export", "{ckpt}", "{tmp}/out.pt"], says=("export OUT", "{tmp}/out.pt", "FIFO"),
         setup=make_fifo("out.pt"), unchanged=("{run}", "{tmp}")),
    Case("export-out-a-char-device", ["export", "{ckpt}", "{tmp}/null"], says=("export OUT", "{tmp}/null"),
         setup=make_chardev("null"), unchanged=("{run}", "{tmp}")),
    Case("export-sidecar-a-socket", ["export", "{ckpt}", "{tmp}/out.pt"], says=("{tmp}/out.json", "socket"),
         setup=make_socket("out.json"), unchanged=("{run}", "{tmp}")),
    Case("export-sidecar-holds-png", ["export", "{ckpt}", "{tmp}/out.pt"], says=("{tmp}/out.json", "PNG"),
         setup=make_bytes("out.json", b"\x89PNG\r\n\x1a\n" + bytes(32)), unchanged=("{run}", "{tmp}")),
    Case("export-onto-evaluate-head", ["export", "{ckpt}", "{run}/linear_head.pt"],
         says=("export OUT", "{run}/linear_head.pt", "ssl-bf evaluate")),
    Case("export-onto-json-named-pt", ["export", "{ckpt}", "{tmp}/x.pt"], says=("export OUT", "JSON"),
         setup=make_bytes("x.pt", JSON), unchanged=("{run}", "{tmp}")),
    # the sidecar's name is 2 bytes longer than OUT's: refused before the weights are written
    Case("export-sidecar-name-too-long", ["export", "{ckpt}", "{tmp}/" + "o" * 252 + ".pt"],
         says=("export OUT's config file", "bytes"), unchanged=("{run}", "{tmp}")),
    Case("export-out-trailing-slash", ["export", "{ckpt}", "{tmp}/out.pt/"], says=("export OUT", "{tmp}/out.pt/"),
         unchanged=("{run}", "{tmp}")),
]
CASES = CASES + OUTPUT_GUARD_CASES



# ===========================================================================================

# issue 21, cause 4 (worktree runfiles): the checkpoint read against its schema, the run folder's
# marker, metrics.jsonl. Each used to print a traceback, shorten the run or log an impossible epoch.
# ==================================================================================================
def _rng(key, value):
    def edit(state):
        state["rng"][key] = value
        return state
    return edit


def _momentum_buffer(shape):
    def edit(state):
        import torch

        entry = state["optimizer"]["state"][0]
        entry["momentum_buffer"] = torch.zeros(shape)
        return state
    return edit


def _model_entry(key, make):
    def edit(state):
        state["model"][key] = make(state["model"][key])
        return state
    return edit


def _edit_optimizer(fn):
    def edit(state):
        fn(state["optimizer"])
        return state
    return edit


def put_metrics(run: str, data) -> None:
    """Replace RUN/metrics.jsonl by `data` (bytes), or by a folder when data is None (also used by
    tests/test_fuzz_run_files.py)."""
    path = os.path.join(run, "metrics.jsonl")
    if os.path.lexists(path):
        os.unlink(path)
    if data is None:
        os.makedirs(path)
    else:
        with open(path, "wb") as f:
            f.write(data)


def _copy_with_metrics(data):
    """A copy of the run whose metrics.jsonl holds `data` (bytes), or a folder when data is None."""
    return lambda env, tmp: put_metrics(_copy(env, tmp), data)


def _user_folder(env, tmp):
    """A folder of the user's own files, one named like a run file."""
    os.makedirs(os.path.join(tmp, "mine"))
    with open(os.path.join(tmp, "mine", "config.yaml"), "w") as f:
        f.write("# my own notes, not an ssl-bf config\nlr: 0.1\n")
    with open(os.path.join(tmp, "mine", "notes.txt"), "w") as f:
        f.write("keep me\n")


def _resume_case(id_, edit, says, wrong=False):
    return Case(f"pretrain-resume-checkpoint-{id_}", ["pretrain", *RESUME, f"run.dir={COPY}"],
                says=(COPY_CKPT, *says, f"mv {COPY_CKPT}"), setup=_copy_with_edited_checkpoint(edit),
                unchanged=("{run}", COPY), wrong_result=wrong)


def _torch(fn):
    def make(*args):
        import torch

        return fn(torch, *args)
    return make


_GOOD_METRICS = b'{"event": "start", "step": 0}\n{"step": 2, "epoch": 0, "loss": 4.2}\n'

CASES += [
    # the position: step=-5 used to shorten the run silently, step_in_epoch=999 to log an epoch at 0 img/s
    _resume_case("step-negative", _with("step", -5), ("'step' is -5",), wrong=True),
    _resume_case("step-in-epoch-beyond-the-epoch", _with("step_in_epoch", 999), ("'step_in_epoch' is 999", "4 steps"),
                 wrong=True),
    _resume_case("epoch-beyond-train-epochs", _with("epoch", 7), ("'epoch' is 7", "train.epochs=1"), wrong=True),
    _resume_case("step-inconsistent-with-epoch", _with("step", 3), ("'step' is 3", "'epoch' 1"), wrong=True),
    _resume_case("step-a-string", _with("step", "4"), ("'step'",)),
    _resume_case("world-size-a-string", _with("world_size", "2"), ("'world_size'",)),
    _resume_case("loss-a-string", _with("loss", "low"), ("'loss'",)),
    _resume_case("image-size-of-other-data", _with("image_size", 64), ("'image_size' is 64",)),
    # RNG states: a 7-byte torch state used to be a traceback
    _resume_case("torch-rng-7-bytes", _rng("torch", _torch(lambda t: t.zeros(7, dtype=t.uint8))()),
                 ("rng['torch']",)),
    _resume_case("torch-rng-float", _rng("torch", _torch(lambda t: t.zeros(5056))()), ("rng['torch']", "dtype")),
    _resume_case("numpy-rng-7-values", _rng("numpy", _torch(lambda t: t.zeros(7, dtype=t.int64))()),
                 ("rng['numpy']", "(625,)")),
    _resume_case("numpy-rng-position-past-the-state", _rng("numpy", _torch(
        lambda t: t.cat([t.arange(1, 625, dtype=t.int64), t.tensor([700])]))()), ("rng['numpy']", "position 700")),
    _resume_case("python-rng-word-too-large", _rng("python", _torch(
        lambda t: t.cat([t.full((624,), 2**33, dtype=t.int64), t.tensor([3])]))()), ("rng['python']", "2**32")),
    _resume_case("rng-without-python", lambda s: (s["rng"].pop("python"), s)[1], ("'rng' lacks 'python'",)),
    # the optimiser: a wrong-shape momentum buffer used to be a traceback in the first step
    _resume_case("momentum-buffer-wrong-shape", _momentum_buffer((3,)),
                 ("optimizer['state'][0]['momentum_buffer']", "(3,)")),
    _resume_case("momentum-buffer-dropped", _edit_optimizer(lambda o: o["state"][0].pop("momentum_buffer")),
                 ("optimizer['state'][0]", "'momentum_buffer'")),
    _resume_case("optimizer-without-groups", _edit_optimizer(lambda o: o.update(param_groups=[])),
                 ("'optimizer' has 0 parameter group(s)",)),
    _resume_case("optimizer-setting-a-string", _edit_optimizer(lambda o: o["param_groups"][0].update(momentum="x")),
                 ("optimizer['param_groups'][0]['momentum']",)),
    # the model and MoCo-v2's queue
    _resume_case("queue-pointer-past-the-queue", _model_entry("queue_ptr", _torch(lambda t, v: t.tensor(999))),
                 ("model['queue_ptr'] is 999", "[0, 128)"), wrong=True),
    _resume_case("queue-of-another-size", _model_entry("queue", _torch(lambda t, v: t.zeros(64, v.shape[1]))),
                 ("model['queue']", "(64, 32)")),
    _resume_case("model-weight-nan", _model_entry("queue", lambda v: v.clone().fill_(float("nan"))),
                 ("model['queue']", "NaN")),
    _resume_case("model-key-missing", lambda s: (s["model"].pop("queue"), s)[1], ("'model' lacks 'queue'",)),
    # metrics.jsonl: a garbage line in the middle, or a folder in its place, used to be a traceback
    # after config.yaml had been rewritten
    Case("pretrain-resume-metrics-garbage-line", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(f"{COPY}/metrics.jsonl", "line 2 is not JSON", f"mv {COPY}/metrics.jsonl"),
         setup=_copy_with_metrics(b'{"step": 0}\nnot json\n{"step": 2}\n'), unchanged=("{run}", COPY)),
    Case("pretrain-resume-metrics-is-a-folder", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(f"{COPY}/metrics.jsonl", "folder"), setup=_copy_with_metrics(None), unchanged=("{run}", COPY)),
    Case("pretrain-resume-metrics-not-text", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(f"{COPY}/metrics.jsonl", "binary data"),  # the output guard sees it first
         setup=_copy_with_metrics(b'{"step": 0}\n\xff\xfe\x00\n'),
         unchanged=("{run}", COPY)),
    Case("pretrain-resume-metrics-impossible-accuracy", ["pretrain", *RESUME, f"run.dir={COPY}"],
         says=(f"{COPY}/metrics.jsonl", "line 2", "'knn_top1' = 250"),
         setup=_copy_with_metrics(b'{"step": 0}\n{"event": "knn", "epoch": 0, "step": 4, "knn_top1": 250}\n'),
         unchanged=("{run}", COPY)),
    Case("pretrain-start-metrics-is-a-folder", [*NEW], says=("{tmp}/new/metrics.jsonl", "folder"),
         setup=lambda env, tmp: (os.makedirs(f"{tmp}/new/metrics.jsonl"), open(f"{tmp}/new/.lock", "w").close()),
         unchanged=("{run}", "{tmp}/new")),
    # a torn last line (a kill during a write) is dropped with a note, and the resume goes on
    Case("pretrain-resume-metrics-torn-last-line-is-dropped", ["pretrain", *RESUME, f"run.dir={COPY}"], code=0,
         says=(f"{COPY}/metrics.jsonl", "cut short"), setup=_copy_with_metrics(_GOOD_METRICS + b'{"step": 4, "lo'),
         unchanged=("{run}",)),
    # run.dir: a folder of the user's own files is not a run folder (its config.yaml used to be overwritten)
    Case("pretrain-run-dir-holds-other-files", ["pretrain", "--config", "{tiny}", "run.dir={tmp}/mine"],
         says=("run.dir {tmp}/mine", "config.yaml, notes.txt", "not an ssl-bf run folder", "empty or new run.dir"),
         setup=_user_folder, unchanged=("{run}", "{tmp}/mine"), wrong_result=True),
]

# ==================================================================================================
# Issue 21, cause 5 (configlang): the strict configuration language. YAML 1.2 core for files and
# overrides; keys unique and single-valued; aliases neither recursive nor exploding; sizes bounded;
# the augmentation's and the network's minimum image size; an option or key given twice.
# ==================================================================================================
_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


def _yaml(id_: str, text: str, says: tuple[str, ...], code: int = 2, print_config: bool = False, **kw) -> Case:
    """`pretrain --config {tmp}/c.yaml` (the tiny sizes as overrides) with `text` as the file."""
    return Case(f"config-yaml-{id_}", ["pretrain", "--config", "{tmp}/c.yaml", *SMALL,
                                       *(["--print-config"] if print_config else [])],
                code=code, says=("{tmp}/c.yaml", *says) if code else says, setup=_write("c.yaml", text),
                unchanged=("{run}", "{tmp}"), **kw)


CASES += [
    # YAML 1.1 readings that used to give a wrong number with exit 0
    _yaml("leading-zero-is-decimal", "seed: 010\n", says=("seed: 10\n",), code=0, print_config=True,
          wrong_result=True),
    Case("config-override-leading-zero-is-decimal", [*NEW, "seed=010", "--print-config"], code=0,
         says=("seed: 10\n",), unchanged=("{run}", "{tmp}"), wrong_result=True),
    _yaml("sexagesimal-epochs", "train: {epochs: 1:30}\n", says=("train.epochs", "1:30")),
    _config("override-sexagesimal-epochs", "train.epochs=1:30", says=("train.epochs", "1:30")),
    _config("override-yes-is-not-true", "run.progress=yes", says=("run.progress", "true and false")),
    _config("override-none-is-not-null", "data.subset=none", says=("data.subset", "null or ~")),
    _config("override-underscore-number", "moco.queue_size=1_024", says=("moco.queue_size", "1_024")),
    _yaml("text-key-given-a-number", "run: {dir: 1e3}\n", says=("run.dir", "expected text", "quote")),
    # what used to be a traceback
    _yaml("recursive-alias-mapping", "train: &t {epochs: *t}\n", says=("recursive alias",)),
    _yaml("recursive-alias-list", "batchformer: {insert_after: &l [1, *l]}\n", says=("recursive alias",)),
    _yaml("alias-bomb", _BOMB, says=("alias bomb",)),
    _yaml("complex-key-sequence", "? [train, epochs]\n: 3\n", says=("complex key",)),
    _yaml("complex-key-mapping", "train: {{epochs: 1}: 2}\n", says=("complex key",)),
    _yaml("integer-beyond-64-bits", "seed: 123456789012345678901234567890\n", says=("64 bits",)),
    _yaml("nested-too-deep", "seed: " + "[" * 200 + "]" * 200 + "\n", says=("nested deeper",)),
    _yaml("set-tag", "seed: !!set {a: null}\n", says=("tag",)),
    _yaml("python-tag", "seed: !!python/object/apply:os.system ['touch {tmp}/pwned']\n", says=("tag",)),
    _yaml("key-twice-by-value", "moco: {dim: 32, hidden_dim: 64}\nseed: 1\n~: 2\nnull: 3\n", says=("given twice",)),
    _config("override-recursive-alias", "batchformer.insert_after=&l [*l]", says=("batchformer.insert_after",
                                                                                 "recursive alias")),
    _config("override-unbalanced-bracket", "batchformer.insert_after=[1,3",
            says=("batchformer.insert_after=[1,3", "not valid YAML")),
    _config("override-comma-list-with-a-bracket", "batchformer.insert_after=1,[3",
            says=("batchformer.insert_after", "bracket")),
    _config("override-complex-key", "train={[epochs]: 3}", says=("train={[epochs]: 3}", "complex key")),
    _config("override-key-twice", "seed=1", "seed=2", says=("'seed' is set twice", "seed=1", "seed=2")),
    _config("override-section-and-key", "train={epochs: 1}", "train.epochs=2", says=("'train.epochs' is set twice",)),
    Case("pretrain-config-given-twice", ["pretrain", "--config", "{tiny}", "--config", "{tiny}", "run.dir={tmp}/new"],
         says=("--config", "given twice"), unchanged=("{run}", "{tmp}")),
    Case("pretrain-json-given-twice", [*NEW, "--json", "{tmp}/a.json", "--json", "{tmp}/b.json"],
         says=("--json", "{tmp}/a.json", "{tmp}/b.json", "given twice"), unchanged=("{run}", "{tmp}")),
    # sizes that cannot be allocated: a bound per size key, checked at load time
    _config("moco-dim-cannot-be-allocated", "moco.dim=1e12", says=("moco.dim", "65536", "1000000000000")),
    _config("backbone-width-cannot-be-allocated", "backbone.width=1e9", says=("backbone.width", "1024")),
    _config("queue-size-cannot-be-allocated", "moco.queue_size=1e10", says=("moco.queue_size",)),
    _config("batch-size-cannot-be-allocated", "train.batch_size=1e9", says=("train.batch_size",)),
    _config("hidden-dim-cannot-be-allocated", "moco.hidden_dim=1e8", says=("moco.hidden_dim",)),
    _config("seed-beyond-32-bits", "seed=4294967296", says=("seed", "4294967295")),
    _config("seed-negative", "seed=-1", says=("seed",)),
    _config("jitter-beyond-its-range", "augment.jitter_strength=11", says=("augment.jitter_strength", "10")),
    # the image size the augmentation and the network need
    _config("image-size-not-a-multiple-of-the-patch", "backbone.name=vit_mini", "method=mocov3",
            "backbone.patch_size=7", "augment.image_size=10", says=("augment.image_size=10", "backbone.patch_size=7")),
]


# --- long-tailed pretraining sets (issue 22): data.long_tail and data.indices_file ----------------
def _index_file(values, dtype="int64"):
    """A setup writing {tmp}/idx.npy with `values` as `dtype`."""
    def setup(env, tmp):
        import numpy as np

        np.save(os.path.join(tmp, "idx.npy"), np.asarray(values, dtype=dtype), allow_pickle=False)
    return setup


def _long_tail(id_, *overrides, says, setup=None, unchanged=("{run}", "{tmp}/new")):
    return Case(f"config-long-tail-{id_}", [*NEW, *overrides], says=says, setup=setup, unchanged=unchanged)


CASES += [
    _long_tail("ratio-below-one", "data.long_tail.ratio=0.5", says=("data.long_tail.ratio", "at least 1")),
    _long_tail("ratio-empties-a-class", "data.long_tail.ratio=7000",
               says=("data.long_tail.ratio=7000", "leaves class 9 without images", "at most 6000")),
    _long_tail("indices-file-missing", "data.indices_file={tmp}/none.npy",
               says=("data.indices_file {tmp}/none.npy", "does not exist")),
    _long_tail("indices-file-out-of-range", "data.indices_file={tmp}/idx.npy", setup=_index_file([0, 1, 60000]),
               says=("data.indices_file {tmp}/idx.npy", "index 60000", "outside the train split"),
               unchanged=("{run}", "{tmp}/new", "{tmp}/idx.npy")),
    _long_tail("indices-file-out-of-range-of-holdout", "data.indices_file={tmp}/idx.npy", "data.val_holdout=1000",
               setup=_index_file(list(range(500)) + [59500]),
               says=("data.indices_file {tmp}/idx.npy", "index 59500", "data.val_holdout=1000"),
               unchanged=("{run}", "{tmp}/new", "{tmp}/idx.npy")),
    _long_tail("indices-file-duplicates", "data.indices_file={tmp}/idx.npy", setup=_index_file([3, 1, 3, 7]),
               says=("data.indices_file {tmp}/idx.npy", "listed twice"),
               unchanged=("{run}", "{tmp}/new", "{tmp}/idx.npy")),
    _long_tail("indices-file-fractions", "data.indices_file={tmp}/idx.npy", setup=_index_file([0.5, 1.0], "float64"),
               says=("data.indices_file {tmp}/idx.npy", "must be integers"),
               unchanged=("{run}", "{tmp}/new", "{tmp}/idx.npy")),
    _long_tail("indices-file-text-array", "data.indices_file={tmp}/idx.npy", setup=_index_file(["1", "2"], "<U3"),
               says=("data.indices_file {tmp}/idx.npy", "must be integers"),
               unchanged=("{run}", "{tmp}/new", "{tmp}/idx.npy")),
    _long_tail("indices-file-not-npy", "data.indices_file={tmp}/idx.npy",
               setup=lambda env, tmp: open(os.path.join(tmp, "idx.npy"), "wb").write(b"not an array"),
               says=("data.indices_file {tmp}/idx.npy", "not a readable .npy")),
    _long_tail("ratio-with-unlabelled-folder", "data.name=folder", "data.root={tmp}", "data.long_tail.ratio=10",
               says=("data.long_tail.ratio", "data.name=folder", "no")),
    _long_tail("ratio-and-indices-file", "data.long_tail.ratio=10", "data.indices_file={tmp}/idx.npy",
               setup=_index_file([0, 1, 2]), says=("data.indices_file", "data.long_tail.ratio", "give one"),
               unchanged=("{run}", "{tmp}/new", "{tmp}/idx.npy")),
]
