"""Typed run configuration: dataclasses, YAML presets and `key=value` overrides."""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from .models.vit_shapes import VIT_SHAPES
from .yaml_io import did_you_mean, load_yaml_mapping


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class BackboneConfig:
    name: Literal["resnet18", "resnet34", "resnet50", "vit_small", "vit_tiny"] = "resnet18"
    stem: Literal["imagenet", "small"] = "imagenet"  # small: 3x3 conv, no max-pool (28-32 px images)
    stem_stride: int = 1  # stride of the small stem's conv
    width: int = 64  # ResNet base width (64 = torchvision's)
    patch_size: int = 16  # ViT patch side (16 for 224 px; 4 for 28-32 px images)
    freeze_patch_embed: bool = False  # ViT: keep the patch projection at its random init (MoCo-v3)


@dataclass
class BatchFormerConfig:
    enabled: bool = False
    # projection / backbone: BatchFormer (v1) before the heads; vit_blocks: BatchFormerV2 inside a
    # ViT, between its transformer blocks (ssl_bf/models/batchformer_v2.py)
    position: Literal["projection", "backbone", "vit_blocks"] = "projection"
    insert_after: list[int] = field(default_factory=list)  # vit_blocks: after these blocks (0-based)
    share_across_inserts: bool = True  # vit_blocks: one layer for every insertion point, else one each
    layers: int = 1
    heads: int = 4
    dim_feedforward: int = 0  # 0 means "equal to the feature dimension"
    dropout: float = 0.5
    lr_scale: float = 1.0  # lr multiplier for BatchFormer parameters
    weight_decay: Optional[float] = None  # None: the optimiser's weight decay
    # How the key (target) side meets BatchFormer; see docs in ssl_bf/models/batchformer.py.
    #   pre_only:   keys never pass BatchFormer; both query streams target the plain key (default)
    #   same_batch: keys pass the same BatchFormer in the same batch order, all four stream pairs
    #               (the reference code's behaviour; leaks batch context into the positive pair)
    #   recomposed: keys pass BatchFormer in re-shuffled groups, all four stream pairs
    #   context_matched (MoCo-v2): keys pass BatchFormer as a batch, and every queued negative of
    #               the BatchFormer key stream passes it as one extra member of that same batch,
    #               so positive and negatives share the batch context; all four stream pairs
    #   auto:       the method's default, written into the saved config: MoCo-v2 context_matched
    #               (pre_only where it cannot apply), MoCo-v3 same_batch (docs/batchformer.md)
    key_branch: Literal["auto", "pre_only", "same_batch", "recomposed", "context_matched"] = "auto"
    recompose_groups: int = 4
    enqueue_both: bool = False  # MoCo-v2: also enqueue the BatchFormer key stream
    scope: Literal["local", "global"] = "local"  # attend over the rank's batch or the global batch


@dataclass
class MocoConfig:
    dim: int = 128  # output dimension of the projector
    hidden_dim: int = 2048  # projector hidden width (0: the backbone feature width)
    proj_layers: int = 3  # MoCo-v3 projector depth (MoCo-v2's is fixed at 2)
    pred_hidden_dim: int = 4096  # MoCo-v3 predictor hidden width
    queue_size: int = 65536  # MoCo-v2 only
    temperature: float = 0.2
    momentum: float = 0.999  # MoCo-v2: fixed; MoCo-v3: start of the cosine schedule to 1
    split_bn_groups: int = 8  # single-process shuffle-BN substitute; 1 disables
    shuffle_keys: bool = True


@dataclass
class AugmentConfig:
    recipe: Literal["mocov2", "mocov3", "light"] = "mocov2"
    image_size: int = 0  # 0: the dataset's native size (e.g. 28 for Fashion-MNIST)
    crop_scale_min: float = 0.0  # 0: the recipe's own (mocov2 0.2, mocov3 0.08, light 0.3)
    jitter_strength: float = 1.0  # multiplies the recipe's colour-jitter magnitudes
    blur: bool = True


@dataclass
class DataConfig:
    name: Literal["fashion-mnist", "cifar10", "cifar100", "imagefolder", "folder"] = "fashion-mnist"
    root: Optional[str] = None
    subset: Optional[int] = None  # use only the first N training images (smoke runs)
    # Tuning: hold out the last N train images as a validation split. Training uses the rest,
    # the online k-NN scores the held-out images against them, and the test split is never read.
    val_holdout: int = 0
    num_workers: int = 0
    load_size: int = 256  # image folders, evaluation only: shorter side resized to this, centre square
    # (training crops are cut from the whole image in the DataLoader workers)


@dataclass
class TrainConfig:
    epochs: int = 200  # 0: save the untrained network as the checkpoint (a random-init baseline)
    batch_size: int = 256  # per process
    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"
    base_lr: float = 0.03  # lr = base_lr * global_batch / 256
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    warmup_epochs: float = 0.0
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    log_every: int = 50  # steps between step lines in metrics.jsonl; also the host-sync cadence
    # (loss read back, NaN check, time budget) - nothing else leaves the device between them
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    max_steps: int = 0  # stop after this many steps in total (0: no limit)
    time_budget_min: float = 0.0  # stop training (with a checkpoint) after this many minutes
    device: str = "auto"  # auto | cpu | cuda
    # auto: a process group only when WORLD_SIZE > 1; always: also for one process (its collectives
    # then really run, e.g. NCCL at world size 1 in scripts/gpu_check.sh)
    process_group: Literal["auto", "always"] = "auto"


@dataclass
class MonitorConfig:
    knn_every: int = 1  # epochs between online k-NN checks (0: never)
    knn_at_start: bool = False  # also measure the random-init network before training
    full_sets: bool = True  # the start and last checks use the full sets (False: the subsets
    # too, when `ssl-bf evaluate` follows anyway)
    knn_k: int = 20
    knn_temperature: float = 0.07
    bank_subset: Optional[int] = None  # None: the whole train split is the bank
    query_subset: Optional[int] = None  # None: the whole test split


@dataclass
class RunConfig:
    dir: str = "runs/default"
    tensorboard: bool = True
    progress: bool = True


@dataclass
class Config:
    method: Literal["mocov2", "mocov3"] = "mocov2"
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    batchformer: BatchFormerConfig = field(default_factory=BatchFormerConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys += _all_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str) -> ConfigError:
    return ConfigError(f"unknown config key '{key}'{did_you_mean(key, _all_keys(Config), cutoff=0.5)}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from YAML or a CLI string) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: '{value}' is not one of {list(args)}")
        return value
    if origin is list:
        return _coerce_list(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got '{value}'")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return str(value)
    if tp in (int, float):
        if isinstance(value, bool) or isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected {tp.__name__}, got '{value}'")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: expected {tp.__name__}, got '{value}'") from None
        if not math.isfinite(number):  # no config key gives NaN or inf a meaning
            raise ConfigError(f"{key}: expected a finite {tp.__name__}, got '{value}' (NaN and inf mean nothing here)")
        if tp is float:
            return number
        if isinstance(value, int):
            return value
        if not number.is_integer():
            raise ConfigError(f"{key}: expected int (a whole number), got '{value}'")
        try:
            return int(value) if isinstance(value, str) else int(number)
        except ValueError:  # '1e3', '64.0'
            return int(number)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _coerce_list(value: Any, item: Any, key: str) -> list:
    """A YAML list, one bare value, or comma-separated text -> a list of `item`."""
    if isinstance(value, str):
        value = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]


def _apply(obj: Any, key: str, value: Any, full_key: str) -> None:
    head, _, rest = key.partition(".")
    names = {f.name for f in dataclasses.fields(obj)}
    if head not in names:
        raise _unknown_key(full_key)
    tp = typing.get_type_hints(type(obj))[head]
    if dataclasses.is_dataclass(tp):
        if rest:
            _apply(getattr(obj, head), rest, value, full_key)
        elif isinstance(value, dict):
            for k, v in value.items():
                _apply(getattr(obj, head), str(k), v, f"{full_key}.{k}")
        else:
            raise ConfigError(f"'{full_key}' is a section; set one of its keys, e.g. {full_key}.<key>=...")
    else:
        if rest:
            raise _unknown_key(full_key)
        setattr(obj, head, _coerce(value, tp, full_key))


def apply_dict(cfg: Config, values: dict, prefix: str = "") -> Config:
    """Set every (nested) key of `values` on `cfg`, validating names and types."""
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            apply_dict(cfg, v, key + ".")
        else:
            _apply(cfg, key, v, key)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=3' -> ('a.b', 3); the value is parsed as YAML (so 1e-3, true, null work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def format_override_value(value: Any) -> str:
    """A config value as a `key=value` override spells it (parse_override reads it back): true,
    false, null, else str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):  # one shell word: [1,3]
        return "[" + ",".join(format_override_value(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _key_type(key: str) -> Any:
    """The annotated type of a dotted config key, or None when there is no such key."""
    cls: Any = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def _is_text(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) is typing.Union and str in typing.get_args(tp))


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Defaults <- YAML preset <- key=value overrides.

    A text key (run.dir, data.root, train.device) takes an override's text as written (so
    `run.dir=on` is the folder 'on', not true); every other value is read as YAML.
    """
    cfg = Config()
    if path:
        apply_dict(cfg, load_yaml_mapping(path, "config file", error=ConfigError, unique_keys=True))
    for text in overrides:
        key, value = parse_override(text)
        if _is_text(_key_type(key)):
            value = text.split("=", 1)[1]
        _apply(cfg, key, value, key)
    validate(cfg)
    return cfg


def _value(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# Ranges of numeric keys, checked at load time: key -> (low, high, low inclusive, high inclusive,
# what the value means when it needs saying). None: no bound on that side.
_RANGES: dict[str, tuple[Optional[float], Optional[float], bool, bool, str]] = {
    "train.base_lr": (0, None, False, True, "the peak lr is base_lr x global batch / 256"),
    "moco.temperature": (0, None, False, True, "the InfoNCE logits are divided by it"),
    "monitor.knn_temperature": (0, None, False, True, "the k-NN vote weights are exp(sim / T)"),
    "train.weight_decay": (0, None, True, True, ""),
    "batchformer.weight_decay": (0, None, True, True, "or null for the optimiser's"),
    "batchformer.lr_scale": (0, None, True, True, "0 freezes BatchFormer"),
    "train.sgd_momentum": (0, 1, True, False, ""),
    "moco.momentum": (0, 1, True, True, "the key encoder's EMA coefficient"),
    "batchformer.dropout": (0, 1, True, False, ""),
    "train.warmup_epochs": (0, None, True, True, ""),
    "train.time_budget_min": (0, None, True, True, "0: no budget"),
    "augment.crop_scale_min": (0, 1, True, True, "0: the recipe's own"),
    "augment.jitter_strength": (0, None, True, True, ""),
    "train.epochs": (0, None, True, True, "0 saves the untrained network"),
    "train.batch_size": (2, None, True, True, "per process"),
    "train.log_every": (1, None, True, True, ""),
    "train.checkpoint_every_steps": (0, None, True, True, "0: only at epoch ends"),
    "train.max_steps": (0, None, True, True, "0: no limit"),
    "batchformer.layers": (1, None, True, True, ""),
    "batchformer.heads": (1, None, True, True, ""),
    "batchformer.dim_feedforward": (0, None, True, True, "0: the feature dimension"),
    "batchformer.recompose_groups": (1, None, True, True, ""),
    "moco.dim": (1, None, True, True, ""),
    "moco.hidden_dim": (0, None, True, True, "0: the backbone feature width"),
    "moco.proj_layers": (1, None, True, True, ""),
    "moco.pred_hidden_dim": (1, None, True, True, ""),
    "moco.queue_size": (1, None, True, True, ""),
    "moco.split_bn_groups": (1, None, True, True, "1 disables"),
    "backbone.stem_stride": (1, None, True, True, ""),
    "backbone.width": (1, None, True, True, ""),
    "backbone.patch_size": (1, None, True, True, ""),
    "augment.image_size": (0, None, True, True, "0: the dataset's native size"),
    "data.subset": (1, None, True, True, "or null for all images"),
    "data.val_holdout": (0, None, True, True, "0: no validation split"),
    "data.num_workers": (0, None, True, True, ""),
    "data.load_size": (1, None, True, True, ""),
    "monitor.knn_every": (0, None, True, True, "0: never"),
    "monitor.knn_k": (1, None, True, True, ""),
    "monitor.bank_subset": (1, None, True, True, "or null for the whole train split"),
    "monitor.query_subset": (1, None, True, True, "or null for the whole test split"),
}


def _range_text(low, high, low_in, high_in) -> str:
    if high is None:
        if low == 0 and not low_in:
            return "positive"
        return f"at least {low:g}" if low_in else f"greater than {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def _check_ranges(cfg: Config) -> None:
    for key, (low, high, low_in, high_in, note) in _RANGES.items():
        value = _value(cfg, key)
        if value is None:  # an Optional key left unset
            continue
        ok = math.isfinite(value) and (low is None or (value >= low if low_in else value > low)) \
            and (high is None or (value <= high if high_in else value < high))
        if not ok:
            hint = f" ({note})" if note else ""
            raise ConfigError(f"{key} must be {_range_text(low, high, low_in, high_in)}{hint}, got {value}; "
                              f"fix it with {key}=...")


# key_branch=auto resolves per method: the card's wiring (keys through BatchFormer) wherever a
# leak-free one exists and was not worse in the ablation (README "Results"). MoCo-v2's needs the
# queue to hold BatchFormer's input, so elsewhere (backbone, vit_blocks, enqueue_both) it is pre_only.
DEFAULT_KEY_BRANCH = {"mocov2": "context_matched", "mocov3": "same_batch"}


def _auto_key_branch(cfg: "Config") -> str:
    branch = DEFAULT_KEY_BRANCH.get(cfg.method, "pre_only")
    if branch == "context_matched" and (cfg.batchformer.position != "projection" or cfg.batchformer.enqueue_both):
        return "pre_only"
    return branch


def validate(cfg: Config) -> None:
    """Ranges and cross-field checks that types alone cannot express."""
    if cfg.backbone.name.startswith("vit") and cfg.method == "mocov2" and cfg.moco.split_bn_groups > 1:
        cfg.moco.split_bn_groups = 1  # a ViT has no BatchNorm to split
    _check_ranges(cfg)
    if cfg.batchformer.key_branch == "auto":
        cfg.batchformer.key_branch = _auto_key_branch(cfg)
    if not cfg.run.dir.strip():
        raise ConfigError("run.dir is empty; give the run folder, e.g. run.dir=runs/my-run")
    if cfg.train.device not in ("auto", "cpu", "cuda") and not (
            cfg.train.device.startswith("cuda:") and cfg.train.device[5:].isdigit()):
        raise ConfigError(f"train.device: '{cfg.train.device}' is not one of auto, cpu, cuda, cuda:N")
    if cfg.monitor.knn_every and cfg.monitor.bank_subset is not None and cfg.monitor.bank_subset < cfg.monitor.knn_k:
        raise ConfigError(f"monitor.bank_subset ({cfg.monitor.bank_subset}) is smaller than monitor.knn_k "
                          f"({cfg.monitor.knn_k}): the k-NN needs at least k bank images")
    _check_vit_blocks(cfg)
    if cfg.batchformer.enabled:
        dim = cfg.moco.dim if cfg.batchformer.position == "projection" else None
        if dim and dim % cfg.batchformer.heads:
            raise ConfigError(f"moco.dim ({dim}) must be divisible by batchformer.heads ({cfg.batchformer.heads})")
        if cfg.batchformer.enqueue_both and cfg.method == "mocov2" and cfg.batchformer.key_branch != "pre_only" \
                and cfg.moco.queue_size % (2 * cfg.train.batch_size):
            raise ConfigError("with batchformer.enqueue_both, moco.queue_size must be a multiple of 2 x train.batch_size")
    if cfg.method == "mocov2" and cfg.moco.queue_size % cfg.train.batch_size:
        raise ConfigError(
            f"moco.queue_size ({cfg.moco.queue_size}) must be a multiple of train.batch_size "
            f"({cfg.train.batch_size}) so that whole batches are enqueued")
    if cfg.method == "mocov2" and cfg.moco.split_bn_groups > 1 and cfg.train.batch_size % cfg.moco.split_bn_groups:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) must be divisible by moco.split_bn_groups "
            f"({cfg.moco.split_bn_groups})")
    if cfg.batchformer.enabled and cfg.batchformer.key_branch == "context_matched":
        if cfg.method != "mocov2":
            raise ConfigError("batchformer.key_branch=context_matched is MoCo-v2's (it treats the queue); MoCo-v3's "
                              "in-batch negatives already share the batch context: use same_batch")
        if cfg.batchformer.position != "projection":
            raise ConfigError("batchformer.key_branch=context_matched needs batchformer.position=projection "
                              "(the queue holds projected keys, so only they can pass BatchFormer)")
        if cfg.batchformer.enqueue_both:
            raise ConfigError("batchformer.enqueue_both does not combine with key_branch=context_matched "
                              "(its queue holds plain keys; BatchFormer is applied to them at every step)")
    if cfg.batchformer.enabled and cfg.batchformer.key_branch == "recomposed" \
            and cfg.train.batch_size % cfg.batchformer.recompose_groups:
        raise ConfigError("train.batch_size must be divisible by batchformer.recompose_groups")
    if cfg.data.subset is not None and cfg.data.subset < cfg.train.batch_size:
        raise ConfigError(f"data.subset ({cfg.data.subset}) is smaller than one batch ({cfg.train.batch_size})")


# The key branches BatchFormerV2 (position vit_blocks) implements on the key side.
VIT_BLOCKS_KEY_BRANCHES = ("pre_only", "same_batch", "recomposed")


def _check_vit_blocks(cfg: Config) -> None:
    """BatchFormerV2's settings: a ViT, valid distinct block indices, a width the heads divide."""
    bf = cfg.batchformer
    if not bf.enabled:
        return
    if bf.position != "vit_blocks":
        if bf.insert_after:
            raise ConfigError(f"batchformer.insert_after is for batchformer.position=vit_blocks, not "
                              f"'{bf.position}'; drop it with batchformer.insert_after=[]")
        return
    if not cfg.backbone.name.startswith("vit"):
        raise ConfigError(f"batchformer.position=vit_blocks needs a ViT backbone, got backbone.name="
                          f"{cfg.backbone.name}; use backbone.name=vit_tiny or vit_small")
    shape = VIT_SHAPES[cfg.backbone.name]
    blocks = f"{cfg.backbone.name} has blocks 0-{shape.layers - 1}"
    if not bf.insert_after:
        raise ConfigError(f"batchformer.position=vit_blocks needs batchformer.insert_after, the blocks to insert "
                          f"BatchFormerV2 after, e.g. batchformer.insert_after=[{shape.layers // 2 - 1}] ({blocks})")
    if len(set(bf.insert_after)) != len(bf.insert_after) or any(not 0 <= i < shape.layers for i in bf.insert_after):
        raise ConfigError(f"batchformer.insert_after must list distinct block indices of the ViT ({blocks}), "
                          f"got {bf.insert_after}")
    if shape.dim % bf.heads:
        raise ConfigError(f"the ViT width ({shape.dim}) must be divisible by batchformer.heads ({bf.heads})")
    if bf.key_branch not in VIT_BLOCKS_KEY_BRANCHES:
        raise ConfigError(f"batchformer.key_branch={bf.key_branch} is not available with position=vit_blocks; "
                          f"choose one of {', '.join(VIT_BLOCKS_KEY_BRANCHES)}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(values: dict) -> Config:
    return apply_dict(Config(), values)


# --- what a run folder remembers -----------------------------------------------------------------
# A run folder is one run: the settings that define it are fixed by its first start, and a resume
# (`ssl-bf pretrain` on a folder that holds RUN/checkpoints/last.pt) must give the same values;
# `resume_differences` lists those it changes. Every key of the schema is in exactly one set
# (tests/test_config.py checks it), so a new key must be classified to exist.

# The model, the data it sees, the loss and the optimiser's trajectory.
RUN_DEFINING = frozenset({
    "method", "seed",
    "backbone.name", "backbone.stem", "backbone.stem_stride", "backbone.width", "backbone.patch_size",
    "backbone.freeze_patch_embed",
    "batchformer.enabled", "batchformer.position", "batchformer.insert_after", "batchformer.share_across_inserts",
    "batchformer.layers", "batchformer.heads",
    "batchformer.dim_feedforward", "batchformer.dropout", "batchformer.lr_scale", "batchformer.weight_decay",
    "batchformer.key_branch", "batchformer.recompose_groups", "batchformer.enqueue_both", "batchformer.scope",
    "moco.dim", "moco.hidden_dim", "moco.proj_layers", "moco.pred_hidden_dim", "moco.queue_size",
    "moco.temperature", "moco.momentum", "moco.split_bn_groups", "moco.shuffle_keys",
    "augment.recipe", "augment.image_size", "augment.crop_scale_min", "augment.jitter_strength", "augment.blur",
    "data.name", "data.root", "data.subset", "data.val_holdout",
    "train.batch_size", "train.optimizer", "train.base_lr", "train.weight_decay", "train.sgd_momentum",
    "train.warmup_epochs",
})

# Where a run writes and how it shows progress: two runs that differ only here are the same variant.
PRESENTATION_ONLY = frozenset({"run.dir", "run.tensorboard", "run.progress"})

# How the run is executed, logged, checkpointed, stopped and monitored: free to change on resume.
# (data.load_size is the image-folder size of the k-NN monitor's evaluation images only.)
RESUME_SAFE = frozenset({
    "train.amp", "train.channels_last", "train.log_every", "train.checkpoint_every_steps", "train.max_steps",
    "train.time_budget_min", "train.device", "train.process_group",
    "data.num_workers", "data.load_size",
    "monitor.knn_every", "monitor.knn_at_start", "monitor.full_sets", "monitor.knn_k", "monitor.knn_temperature",
    "monitor.bank_subset", "monitor.query_subset",
}) | PRESENTATION_ONLY

# May grow on resume, never shrink. The lr cosine (and MoCo-v3's momentum schedule) is a function
# of (step, epochs x steps per epoch): with more epochs the remaining steps follow the cosine of the
# NEW total from the resume step on (the lr jumps up from the old curve to the new one there; the
# steps already trained are not redone), exactly as if the run had been started with the new total
# and that part of the curve skipped.
EXTEND_ONLY = frozenset({"train.epochs"})


def all_keys() -> list[str]:
    """Every config key, dotted ('train.batch_size'), in schema order."""
    return _all_keys(Config)


def flatten(values: dict, prefix: str = "") -> dict:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}."""
    flat = {}
    for k, v in values.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _same(key: str, saved: Any, given: Any) -> bool:
    if key == "data.root" and isinstance(saved, str) and isinstance(given, str):
        return os.path.normpath(os.path.expanduser(saved)) == os.path.normpath(os.path.expanduser(given))
    return saved == given


def resume_differences(saved: dict, cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, saved value, given value) for every run-defining setting that `cfg` changes from the
    `saved` config (a checkpoint's nested dict), and train.epochs when it shrinks. A key the saved
    config lacks (written before the key existed) counts at its default."""
    flat_saved, defaults, given = flatten(saved), flatten(to_dict(Config())), flatten(to_dict(cfg))
    diffs = []
    for key in all_keys():
        if key not in RUN_DEFINING and key not in EXTEND_ONLY:
            continue
        old = flat_saved.get(key, defaults[key])
        try:
            old = _coerce(old, _key_type(key), key)
        except ConfigError:
            pass  # compared as stored: it differs from any valid value
        new = given[key]
        if key in EXTEND_ONLY:
            if isinstance(old, (int, float)) and not isinstance(old, bool) and new >= old:
                continue
        elif _same(key, old, new):
            continue
        diffs.append((key, old, new))
    return diffs


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML, atomically."""
    from .io import atomic_write_bytes

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
