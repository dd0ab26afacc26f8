"""What a run folder remembers: which keys define a run, and what a resume changes.

A run folder is one run: the keys that define it are fixed by its first start, and a resume
(`ssl-bf pretrain` on a folder that holds RUN/checkpoints/last.pt) must give the same values. Each
key's `Role` (in its field's metadata, ssl_bf/config/schema.py) says which kind it is:

- DEFINES: the model, the data it sees, the loss and the optimiser's trajectory; a change is refused.
- FREE (and PRESENTATION, its subset): how the run is executed, logged, checkpointed, stopped and
  monitored; free to change. Two runs that differ only in PRESENTATION keys are the same variant.
- EXTEND_ONLY (train.epochs): may grow, never shrink. The lr cosine (and MoCo-v3's momentum
  schedule) is a function of (step, epochs x steps per epoch): with more epochs the remaining steps
  follow the cosine of the NEW total from the resume step on (the lr jumps onto the new curve
  there; the steps already trained are not redone).
"""
from __future__ import annotations

from typing import Any

from .parse import all_keys, coerce, flatten, key_field, key_type, migrate, same_value, to_dict
from .schema import Config, ConfigError, Role


def _keys_with(*roles: Role) -> frozenset[str]:
    return frozenset(k for k in all_keys() if key_field(k).metadata["role"] in roles)


RUN_DEFINING = _keys_with(Role.DEFINES)
PRESENTATION_ONLY = _keys_with(Role.PRESENTATION)
RESUME_SAFE = _keys_with(Role.FREE, Role.PRESENTATION)
EXTEND_ONLY = _keys_with(Role.EXTEND_ONLY)


def resume_differences(saved: dict, cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, saved value, given value) for every run-defining setting that `cfg` changes from the
    `saved` config (a checkpoint's nested dict), and train.epochs when it shrinks. A key the saved
    config lacks (written before the key existed) counts at its default."""
    flat_saved, defaults, given = flatten(migrate(saved)), flatten(to_dict(Config())), flatten(to_dict(cfg))
    diffs = []
    for key in all_keys():
        if key not in RUN_DEFINING and key not in EXTEND_ONLY:
            continue
        old = flat_saved.get(key, defaults[key])
        try:
            old = coerce(old, key_type(key), key)
        except ConfigError:
            pass  # compared as stored: it differs from any valid value
        new = given[key]
        if key in EXTEND_ONLY:
            if isinstance(old, (int, float)) and not isinstance(old, bool) and new >= old:
                continue
        elif same_value(key, old, new):
            continue
        diffs.append((key, old, new))
    return diffs
