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


def _changed(id_, *overrides, says, wrong=False):
    """Resume a copy of the finished run with run-defining settings changed."""
    return Case(f"pretrain-resume-changed-{id_}", ["pretrain", *RESUME, f"run.dir={COPY}", *overrides],
                says=(*says, "run.dir"), setup=_copy, unchanged=("{run}", COPY), wrong_result=wrong)


def _config(id_, *overrides, says):
    return Case(f"config-{id_}", [*NEW, *overrides], says=says, unchanged=("{run}", "{tmp}/new"))


CASES = [
    # --- resume with settings that define the run changed (the saved config decides) -----------
    # Used to train epoch 2 at lr 0 (the schedule recomputed for the new batch) and exit 0, with
    # config.yaml claiming batch 128 for the whole run.
    Case("pretrain-resume-changed-batch", ["pretrain", *RESUME, f"run.dir={COPY}", "train.epochs=2",
                                           "train.batch_size=128"],
         says=("train.batch_size: 64 -> 128", "run.dir"), setup=_copy, unchanged=("{run}", COPY), wrong_result=True),
    Case("pretrain-resume-changed-batch-and-lr", ["pretrain", *RESUME, f"run.dir={COPY}", "train.epochs=2",
                                                  "train.batch_size=32", "train.base_lr=0.1"],
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
    Case("pretrain-resume-zero-epochs-on-a-trained-run", ["pretrain", *RESUME, f"run.dir={COPY}", "train.epochs=0"],
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
    Case("pretrain-resume-changed-batch-subprocess", ["pretrain", *RESUME, f"run.dir={COPY}", "train.epochs=2",
                                                      "train.batch_size=128"],
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
