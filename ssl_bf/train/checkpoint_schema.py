"""What a resumable checkpoint (RUN/checkpoints/last.pt) holds, field by field.

`RunFolder._check_state` (run_folder.py) applies this schema before anything in a checkpoint is
used or anything in the run folder is written; each function here returns the problem of the
first bad field, naming it (e.g. "'step' is -5 ..."), or None. Two levels:

- `fields_problem`: what the config alone decides: the position's types and ranges, the saved
  process count, and the RNG states (each generator's own check, on a throwaway generator);
- `layout_problem`: what only the trainer's set-up knows (`TrainingLayout`): steps per epoch
  (step == epoch * steps_per_epoch + step_in_epoch), the model's keys, shapes and dtypes, the
  optimiser's groups and per-parameter state, and every pointer buffer (`X_ptr` indexes the rows
  of `X`, e.g. MoCo-v2's queue).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .rng import rng_state_problem

# What a resumable checkpoint must hold (and the type of each entry).
CHECKPOINT_KEYS = {"model": dict, "optimizer": dict, "config": dict, "epoch": int, "step": int,
                   "step_in_epoch": int, "rng": dict}
POINTER_SUFFIX = "_ptr"  # a model buffer `X_ptr` is a row index into the buffer `X`


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    return type(v).__name__


def missing_keys(state: dict) -> list[str]:
    """The CHECKPOINT_KEYS that `state` lacks or holds with another type."""
    return [k for k, t in CHECKPOINT_KEYS.items() if not isinstance(state.get(k), t)
            or (t is int and isinstance(state.get(k), bool))]


# --- level 1: what the config decides -----------------------------------------------------------
def fields_problem(state: dict, epochs: int, device: torch.device) -> Optional[str]:
    """The position, the optional scalar fields and the RNG states of a checkpoint whose
    CHECKPOINT_KEYS have their types; `epochs` is train.epochs of the run being resumed."""
    step, epoch, in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
    if step < 0:
        return f"'step' is {step}; it must be 0 or more"
    if not 0 <= epoch <= epochs:
        return f"'epoch' is {epoch}; it must lie in [0, {epochs}] (train.epochs={epochs})"
    if in_epoch < 0:
        return f"'step_in_epoch' is {in_epoch}; it must be 0 or more"
    for key in ("world_size", "in_channels", "image_size"):
        if key in state and not (_is_int(state[key]) and state[key] >= 1):
            return f"'{key}' is {state[key]!r:.60}; it must be a whole number of 1 or more"
    if "loss" in state and not _is_number(state["loss"]):
        return f"'loss' is a {_kind(state['loss'])}; it must be a number (NaN before the first step)"
    return rng_state_problem(state["rng"], device)


# --- level 2: what the trainer built ------------------------------------------------------------
@dataclass(frozen=True)
class TrainingLayout:
    """What the trainer built from the config, that a checkpoint of this run must match."""

    steps_per_epoch: int
    epochs: int
    in_channels: int
    image_size: int
    model: dict[str, tuple[tuple[int, ...], torch.dtype]]  # state-dict key -> (shape, dtype)
    groups: list[list[tuple[int, ...]]]  # optimiser param group -> its parameters' shapes, in order
    settings: list[dict[str, Any]]  # optimiser param group -> its scalar settings (no params)
    state_kinds: dict[str, str]  # per-parameter optimiser state name -> "param", "scalar" or "none"

    @classmethod
    def of(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
           in_channels: int, image_size: int) -> "TrainingLayout":
        return cls(steps_per_epoch, epochs, in_channels, image_size,
                   model={k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()},
                   groups=[[tuple(p.shape) for p in g["params"]] for g in optimizer.param_groups],
                   settings=[{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
                   state_kinds=optimizer_state_kinds(optimizer))


def optimizer_state_kinds(optimizer: torch.optim.Optimizer) -> dict[str, str]:
    """What this optimiser keeps per parameter after a step ({name: "param" | "scalar" | "none"}),
    found by one step of its class, built from its defaults (those its constructor takes), on a
    throwaway (2, 3) parameter; {} when that fails (then only the generic rules apply)."""
    cls = type(optimizer)
    accepted = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    settings = {k: v for k, v in optimizer.defaults.items() if takes_any or k in accepted}
    probe = torch.zeros(2, 3, requires_grad=True)
    try:
        twin = cls([probe], **settings)
        probe.grad = torch.ones_like(probe)
        twin.step()
    except (TypeError, ValueError, RuntimeError):
        return {}
    kinds = {}
    for name, value in twin.state[probe].items():
        if value is None:
            kinds[name] = "none"
        elif isinstance(value, torch.Tensor) and tuple(value.shape) == (2, 3):
            kinds[name] = "param"
        else:
            kinds[name] = "scalar"
    return kinds


def layout_problem(state: dict, layout: TrainingLayout) -> Optional[str]:
    """The position against the steps per epoch, then the model, the optimiser and the input sizes."""
    return (_position_problem(state, layout) or _model_problem(state["model"], layout)
            or _optimizer_problem(state["optimizer"], layout) or _input_problem(state, layout))


def _position_problem(state: dict, layout: TrainingLayout) -> Optional[str]:
    spe = layout.steps_per_epoch
    step, epoch, in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
    if in_epoch > spe:  # spe itself: the epoch's steps are done, its end (the monitor, the epoch line) is not
        return f"'step_in_epoch' is {in_epoch}; an epoch of this run has {spe} steps, so it must lie in [0, {spe}]"
    if step != epoch * spe + in_epoch:
        return (f"'step' is {step}, but 'epoch' {epoch} and 'step_in_epoch' {in_epoch} place the run at step "
                f"{epoch * spe + in_epoch} ({spe} steps per epoch)")
    if epoch == layout.epochs and in_epoch:
        return f"'step_in_epoch' is {in_epoch} after the last epoch ({epoch}); it must be 0 there"
    return None


def _tensor_problem(name: str, value: Any, shape: tuple[int, ...], dtype: Optional[torch.dtype],
                    owner: str = "this run's model") -> Optional[str]:
    """`value` must be a tensor of `shape` (and `dtype`, when given) with finite values; `owner`:
    what the message says has that shape."""
    if not isinstance(value, torch.Tensor):
        return f"{name} is a {_kind(value)}, not a tensor"
    if tuple(value.shape) != shape:
        return f"{name} has shape {tuple(value.shape)}, but {owner} has {shape}"
    if dtype is not None and value.dtype != dtype:
        return f"{name} has dtype {value.dtype}, but {owner} has {dtype}"
    if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
        return f"{name} holds NaN or infinite values"
    return None


def _listed(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _model_problem(model: dict, layout: TrainingLayout) -> Optional[str]:
    missing = [k for k in layout.model if k not in model]
    if missing:
        return f"'model' lacks {_listed(missing)} of this run's model"
    unknown = [str(k) for k in model if k not in layout.model]
    if unknown:
        return f"'model' holds {_listed(unknown)}, which this run's model does not have"
    for key, (shape, dtype) in layout.model.items():
        problem = _tensor_problem(f"model['{key}']", model[key], shape, dtype)
        if problem:
            return problem
    for key in layout.model:
        base = key[:-len(POINTER_SUFFIX)]
        if key.endswith(POINTER_SUFFIX) and base in layout.model and layout.model[base][0]:
            rows, ptr = layout.model[base][0][0], model[key]
            if ptr.is_floating_point() or ptr.numel() != 1 or not 0 <= int(ptr) < rows:
                shown = int(ptr) if ptr.numel() == 1 and not ptr.is_floating_point() else f"of shape {tuple(ptr.shape)}"
                return f"model['{key}'] is {shown}; it must be a row of '{base}', in [0, {rows})"
    return None


def _setting_problem(name: str, built: Any, saved: Any) -> Optional[str]:
    """A saved optimiser setting must be of the built one's kind (a bool, a finite number, or a
    tuple of finite numbers); other settings (names, None) are not checked."""
    if isinstance(built, bool):
        ok = isinstance(saved, bool)
    elif _is_number(built):
        ok = _is_number(saved) and math.isfinite(saved)
    elif isinstance(built, tuple) and all(_is_number(b) for b in built):
        ok = isinstance(saved, (tuple, list)) and len(saved) == len(built) and \
            all(_is_number(s) and math.isfinite(s) for s in saved)
    else:
        return None
    return None if ok else f"{name} is {saved!r:.60}; it must be like {built!r}"


def _group_problem(i: int, group: Any, first_id: int, layout: TrainingLayout) -> Optional[str]:
    where = f"optimizer['param_groups'][{i}]"
    if not isinstance(group, dict):
        return f"{where} is a {_kind(group)}, not a dict"
    ids = list(range(first_id, first_id + len(layout.groups[i])))
    if group.get("params") != ids:
        return f"{where}['params'] does not list this run's parameter ids {first_id}..{first_id + len(ids) - 1}"
    for name, built in layout.settings[i].items():
        if name in group:
            problem = _setting_problem(f"{where}['{name}']", built, group[name])
            if problem:
                return problem
    return None


def _entry_problem(pid: Any, entry: Any, shapes: dict[int, tuple[int, ...]], kinds: dict[str, str]) -> Optional[str]:
    where = f"optimizer['state'][{pid!r:.20}]"
    if not _is_int(pid) or pid not in shapes:
        return f"{where} is not the state of a parameter of this run (ids 0..{len(shapes) - 1})"
    if not isinstance(entry, dict):
        return f"{where} is a {_kind(entry)}, not a dict"
    missing = [n for n in kinds if n not in entry]
    if missing:
        return f"{where} lacks {_listed(missing)}"
    for name, value in entry.items():
        kind = kinds.get(name)
        field = f"{where}['{name}']"
        if value is None:
            if kind not in (None, "none"):
                return f"{field} is None; this optimiser keeps a tensor there"
        elif kind == "param" or (kind is None and isinstance(value, torch.Tensor) and value.dim() > 0):
            problem = _tensor_problem(field, value, shapes[pid], None, owner="its parameter")
            if problem:
                return problem
            if not value.is_floating_point():
                return f"{field} has dtype {value.dtype}; it must be a floating-point tensor"
        else:
            scalar = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
            if not (_is_number(scalar) and math.isfinite(scalar) and scalar >= 0):
                shown = repr(scalar)[:40] if _is_number(scalar) else f"a {_kind(value)}"
                return f"{field} is {shown}; it must be a finite number of 0 or more (a step count)"
    return None


def _optimizer_problem(optimizer: dict, layout: TrainingLayout) -> Optional[str]:
    groups, state = optimizer.get("param_groups"), optimizer.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict):
        return "'optimizer' must hold 'param_groups' (a list) and 'state' (a dict)"
    if len(groups) != len(layout.groups):
        return (f"'optimizer' has {len(groups)} parameter group(s); this run's optimiser has "
                f"{len(layout.groups)}")
    first = 0
    for i, group in enumerate(groups):
        problem = _group_problem(i, group, first, layout)
        if problem:
            return problem
        first += len(layout.groups[i])
    shapes = dict(enumerate(shape for group in layout.groups for shape in group))
    for pid, entry in state.items():
        problem = _entry_problem(pid, entry, shapes, layout.state_kinds)
        if problem:
            return problem
    return None


def _input_problem(state: dict, layout: TrainingLayout) -> Optional[str]:
    for key, built in (("in_channels", layout.in_channels), ("image_size", layout.image_size)):
        if key in state and state[key] != built:
            return f"'{key}' is {state[key]}; this run's data gives {built}"
    return None
