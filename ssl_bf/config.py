"""Typed run configuration: dataclasses, YAML presets and `key=value` overrides."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

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
    position: Literal["projection", "backbone"] = "projection"
    layers: int = 1
    heads: int = 4
    dim_feedforward: int = 0  # 0 means "equal to the feature dimension"
    dropout: float = 0.5
    lr_scale: float = 1.0  # lr multiplier for BatchFormer parameters
    weight_decay: Optional[float] = None  # None: the optimiser's weight decay
    # How the key (target) side meets BatchFormer; see docs in ssl_bf/batchformer.py.
    #   pre_only:   keys never pass BatchFormer; both query streams target the plain key (default)
    #   same_batch: keys pass the same BatchFormer in the same batch order, all four stream pairs
    #               (the reference code's behaviour; leaks batch context into the positive pair)
    #   recomposed: keys pass BatchFormer in re-shuffled groups, all four stream pairs
    key_branch: Literal["pre_only", "same_batch", "recomposed"] = "pre_only"
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
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got '{value}'")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if tp is int and isinstance(value, str):
                return int(float(value)) if float(value).is_integer() else int(value)
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {tp.__name__}, got '{value}'") from None
    raise ConfigError(f"{key}: unsupported type {tp}")


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
    return "null" if value is None else str(value)


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Defaults <- YAML preset <- key=value overrides."""
    cfg = Config()
    if path:
        apply_dict(cfg, load_yaml_mapping(path, "config file", error=ConfigError))
    for text in overrides:
        key, value = parse_override(text)
        _apply(cfg, key, value, key)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    if cfg.backbone.name.startswith("vit") and cfg.method == "mocov2" and cfg.moco.split_bn_groups > 1:
        cfg.moco.split_bn_groups = 1  # a ViT has no BatchNorm to split
    if cfg.train.batch_size < 2:
        raise ConfigError("train.batch_size must be at least 2")
    if cfg.train.epochs < 0:
        raise ConfigError(f"train.epochs must be at least 0 (0 saves the untrained network), got {cfg.train.epochs}")
    positive = {"train.log_every": cfg.train.log_every,
                "batchformer.layers": cfg.batchformer.layers, "batchformer.heads": cfg.batchformer.heads,
                "batchformer.recompose_groups": cfg.batchformer.recompose_groups,
                "moco.split_bn_groups": cfg.moco.split_bn_groups, "monitor.knn_k": cfg.monitor.knn_k}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    for key in ("bank_subset", "query_subset"):
        if getattr(cfg.monitor, key) is not None and getattr(cfg.monitor, key) < 1:
            raise ConfigError(f"monitor.{key} must be a positive number of images or null")
    if cfg.monitor.knn_every and cfg.monitor.bank_subset is not None and cfg.monitor.bank_subset < cfg.monitor.knn_k:
        raise ConfigError(f"monitor.bank_subset ({cfg.monitor.bank_subset}) is smaller than monitor.knn_k "
                          f"({cfg.monitor.knn_k}): the k-NN needs at least k bank images")
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
    if cfg.batchformer.enabled and cfg.batchformer.key_branch == "recomposed" \
            and cfg.train.batch_size % cfg.batchformer.recompose_groups:
        raise ConfigError("train.batch_size must be divisible by batchformer.recompose_groups")
    if cfg.data.subset is not None and cfg.data.subset < cfg.train.batch_size:
        raise ConfigError(f"data.subset ({cfg.data.subset}) is smaller than one batch ({cfg.train.batch_size})")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(values: dict) -> Config:
    return apply_dict(Config(), values)


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML, atomically."""
    from .io import atomic_write_bytes

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
