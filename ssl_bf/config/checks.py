"""The checks every config passes whatever its method: each key's range (from its field's
metadata) and the cross-key rules that types alone cannot express. They read the config and
never change it; a method's own checks live with the method (ssl_bf/models/)."""
from __future__ import annotations

from typing import Any

from .parse import all_keys, key_field
from .schema import Config, ConfigError


def value_of(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def check_ranges(cfg: Config) -> None:
    """Every numeric key inside its declared range (an Optional key left unset is not checked)."""
    for key in all_keys():
        bound = key_field(key).metadata["range"]
        value = value_of(cfg, key)
        if bound is None or value is None:
            continue
        if not bound.contains(value):
            hint = f" ({bound.note})" if bound.note else ""
            raise ConfigError(f"{key} must be {bound.text()}{hint}, got {value}; fix it with {key}=...")


def check_common(cfg: Config) -> None:
    """Cross-key rules that hold for every method."""
    if not cfg.run.dir.strip():
        raise ConfigError("run.dir is empty; give the run folder, e.g. run.dir=runs/my-run")
    if cfg.train.device not in ("auto", "cpu", "cuda") and not (
            cfg.train.device.startswith("cuda:") and cfg.train.device[5:].isdigit()):
        raise ConfigError(f"train.device: '{cfg.train.device}' is not one of auto, cpu, cuda, cuda:N")
    if cfg.monitor.knn_every and cfg.monitor.bank_subset is not None and cfg.monitor.bank_subset < cfg.monitor.knn_k:
        raise ConfigError(f"monitor.bank_subset ({cfg.monitor.bank_subset}) is smaller than monitor.knn_k "
                          f"({cfg.monitor.knn_k}): the k-NN needs at least k bank images")
    bf = cfg.batchformer
    if bf.enabled and bf.position != "vit_blocks" and bf.insert_after:
        raise ConfigError(f"batchformer.insert_after is for batchformer.position=vit_blocks, not "
                          f"'{bf.position}'; drop it with batchformer.insert_after=[]")
    if bf.enabled and bf.position == "projection" and cfg.moco.dim % bf.heads:
        raise ConfigError(f"moco.dim ({cfg.moco.dim}) must be divisible by batchformer.heads ({bf.heads})")
    if bf.enabled and bf.key_branch == "recomposed" and cfg.train.batch_size % bf.recompose_groups:
        raise ConfigError("train.batch_size must be divisible by batchformer.recompose_groups")
    if cfg.data.subset is not None and cfg.data.subset < cfg.train.batch_size:
        raise ConfigError(f"data.subset ({cfg.data.subset}) is smaller than one batch ({cfg.train.batch_size})")
    d = cfg.data
    if d.long_tail.ratio > 1 and d.indices_file is not None:
        raise ConfigError("data.indices_file and data.long_tail.ratio > 1 both choose the training images; give "
                          "one (data.long_tail.ratio=1 or data.indices_file=null)")
    if d.long_tail.ratio > 1 and d.name == "folder":
        raise ConfigError("data.long_tail.ratio > 1 needs class labels, and data.name=folder has none; use "
                          "imagefolder (class folders) or data.long_tail.ratio=1")
    if (d.long_tail.ratio > 1 or d.indices_file is not None) and d.name == "shards":
        raise ConfigError("data.long_tail.ratio and data.indices_file are not supported for shards yet (the "
                          "streams read whole shards); write shards of the chosen images instead")
