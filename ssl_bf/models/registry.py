"""The methods ssl-bf can train, by name: a method is one MoCoBase subclass registered here.

Nothing outside models/ branches on the method's name: it asks the registered class. A new method
is a subclass passed to `register_method` (tests/test_method_registry.py adds one from a test file
alone, touching no other module)."""
from __future__ import annotations

import os
from typing import Callable, Optional, TypeVar

import torch
from torch import nn

from ..cli_args import one_line
from ..config import Config, ConfigError, value_of
from .base import Encoder, MoCoBase, build_config_backbone
from .mocov2 import MoCoV2
from .mocov3 import MoCoV3

METHODS: dict[str, type[MoCoBase]] = {cls.name: cls for cls in (MoCoV2, MoCoV3)}


def register_method(cls: type[MoCoBase]) -> type[MoCoBase]:
    """Class decorator: make `cls` available as `method: <cls.name>`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"a method named '{cls.name}' is already registered ({METHODS[cls.name].__name__})")
    METHODS[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    METHODS.pop(name, None)


def method_class(name: str) -> type[MoCoBase]:
    """The registered class of method `name` (ConfigError naming the choices otherwise)."""
    if name not in METHODS:
        raise ConfigError(f"method: '{name}' is not one of {list(METHODS)}")
    return METHODS[name]


def resolve_config(cfg: Config) -> Config:
    """`cfg` with its method's defaults filled in (a copy; `cfg` is not changed)."""
    return method_class(cfg.method).resolve(cfg)


def check_config(cfg: Config) -> None:
    """The method's own checks of a resolved config (ConfigError)."""
    method_class(cfg.method).check_config(cfg)


def build_model(cfg: Config, in_channels: int = 3, image_size: int = 224,
                split_bn_groups: Optional[int] = None) -> MoCoBase:
    """The method's model (`split_bn_groups` None: the method's own choice from the config). A
    config whose model cannot be built is a ConfigError naming the keys (`guarded_build`)."""
    return guarded_build(cfg, image_size, lambda: method_class(cfg.method)(cfg, in_channels, image_size,
                                                                           split_bn_groups))


def build_encoder(cfg: Config, in_channels: int = 3, features: str = "backbone", image_size: int = 224) -> Encoder:
    """An evaluation encoder with the same parameter names as the training model."""
    if features not in ("backbone", "projection"):
        raise ValueError(f"features must be 'backbone' or 'projection', not '{features}'")

    def build() -> Encoder:
        backbone = build_config_backbone(cfg, in_channels, image_size)
        if features == "backbone":
            return Encoder(backbone)
        return Encoder(backbone, method_class(cfg.method).build_projector(cfg, backbone.feature_dim))
    return guarded_build(cfg, image_size, build)


M = TypeVar("M", bound=nn.Module)


def guarded_build(cfg: Config, image_size: int, build: Callable[[], M]) -> M:
    """`build()`, or a ConfigError naming the config keys at fault, one line, never a traceback:

    - the model's weights and buffers would not fit in the memory this process can still get
      (measured first by building it on the meta device, which allocates nothing);
    - the allocation fails anyway (MemoryError, an allocator's RuntimeError);
    - the network refuses the config (a ValueError: e.g. an image size the ViT's patch grid does
      not divide).
    """
    with torch.random.fork_rng(devices=[]):  # the meta build must not move the seeded RNG
        try:
            with torch.device("meta"):
                needed = _model_bytes(build())
        except Exception:  # noqa: BLE001 - the real build below reports what is wrong
            needed = None
    copies = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))  # one model per process on this host
    free = _available_bytes()
    if needed is not None and free is not None and needed * copies > free:
        raise ConfigError(f"the {cfg.method} model needs {needed / 2 ** 30:.1f} GiB for its weights alone"
                          f"{f' in each of {copies} processes' if copies > 1 else ''}, more than the "
                          f"{free / 2 ** 30:.1f} GiB of memory left; {_size_keys(cfg)}")
    try:
        return build()
    except ValueError as err:
        raise ConfigError(f"the model cannot be built from this config: {err} ({_shape_keys(cfg, image_size)})") \
            from None
    except (MemoryError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not _allocation_failure(err):
            raise
        raise ConfigError(f"building the {cfg.method} model ran out of memory ({one_line(err, 160)}); "
                          f"{_size_keys(cfg)}") from None


def _model_bytes(model: nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _available_bytes() -> Optional[int]:
    """Memory this process can still allocate: the host's MemAvailable, or less under a cgroup
    limit; None when neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit.isdigit():
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _allocation_failure(err: RuntimeError) -> bool:
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "alloc" in text


# The keys that grow the model's weights and buffers (with backbone.name), named when it does not fit.
MEMORY_KEYS = ("backbone.width", "moco.dim", "moco.hidden_dim", "moco.pred_hidden_dim", "moco.proj_layers",
               "moco.queue_size", "batchformer.layers", "batchformer.dim_feedforward")


def _size_keys(cfg: Config) -> str:
    """'lower the sizes that set it: backbone.name=..., moco.dim=...': MEMORY_KEYS above their
    defaults (all of them when none is)."""
    defaults = Config()
    raised = [k for k in MEMORY_KEYS if value_of(cfg, k) > value_of(defaults, k)]
    return (f"lower the sizes that set it (backbone.name={cfg.backbone.name}): "
            + ", ".join(f"{k}={value_of(cfg, k)}" for k in (raised or MEMORY_KEYS)))


def _shape_keys(cfg: Config, image_size: int) -> str:
    size = f"augment.image_size={cfg.augment.image_size}" if cfg.augment.image_size else \
        f"augment.image_size=0: the data's {image_size} px"
    return f"backbone.name={cfg.backbone.name}, backbone.patch_size={cfg.backbone.patch_size}, {size}"
