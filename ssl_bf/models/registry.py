"""The methods ssl-bf can train, by name: a method is one MoCoBase subclass registered here.

Nothing outside models/ branches on the method's name: it asks the registered class. A new method
is a subclass passed to `register_method` (tests/test_method_registry.py adds one from a test file
alone, touching no other module)."""
from __future__ import annotations

from typing import Optional

from ..config import Config, ConfigError
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
    """The method's model (`split_bn_groups` None: the method's own choice from the config)."""
    return method_class(cfg.method)(cfg, in_channels, image_size, split_bn_groups)


def build_encoder(cfg: Config, in_channels: int = 3, features: str = "backbone", image_size: int = 224) -> Encoder:
    """An evaluation encoder with the same parameter names as the training model."""
    backbone = build_config_backbone(cfg, in_channels, image_size)
    if features == "backbone":
        return Encoder(backbone)
    if features == "projection":
        return Encoder(backbone, method_class(cfg.method).build_projector(cfg, backbone.feature_dim))
    raise ValueError(f"features must be 'backbone' or 'projection', not '{features}'")
