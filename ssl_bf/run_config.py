"""A run's config as every command gets it: read (ssl_bf/config/), completed by its method
(`auto` and null keys take the method's defaults) and checked, in that order. The checks read the
config and never change it; the result is what a run saves in RUN/config.yaml."""
from __future__ import annotations

from typing import Optional

from .config import Config, check_common, check_ranges, from_dict, read_config
from .models.registry import check_config, method_class, resolve_config


def finish_config(cfg: Config) -> Config:
    """`cfg` (typed, as read) resolved by its method and checked: a new Config (ConfigError)."""
    resolved = resolve_config(cfg)
    check_ranges(resolved)
    check_common(resolved)
    check_config(resolved)
    return resolved


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Defaults <- YAML preset <- key=value overrides, resolved by the method and checked."""
    return finish_config(read_config(path, overrides))


def saved_config(values: dict) -> Config:
    """A saved config (a checkpoint's, an export's sidecar) as a Config: types checked, renamed
    values migrated, the method known (ConfigError otherwise). Saved configs are already resolved."""
    cfg = from_dict(values)
    method_class(cfg.method)
    return cfg
