"""Every random number generator a training step uses, seeded, saved and restored as tensors (so
checkpoints stay weights_only-loadable). Restoring rank 0's saved state makes a one-process
resume exact on CPU. `rng_state_problem` checks a saved state before anything is restored."""
from __future__ import annotations

import random
from typing import Any, Callable, Optional

import numpy as np
import torch

MT_WORDS = 624  # an MT19937 state (NumPy's and Python's generators): 624 words and a position
RNG_KEYS = ("torch", "numpy", "python")  # what every saved state holds ("cuda" too, from a GPU run)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """Python's, NumPy's, torch's CPU (and CUDA's) generator states, as tensors."""
    _, keys, pos, *_ = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np.append(keys.astype(np.int64), pos)),
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore a state that `rng_state_problem` accepted."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"].numpy()
    np.random.set_state(("MT19937", numpy_state[:-1].astype(np.uint32), int(numpy_state[-1])))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --- checks of a saved state ------------------------------------------------------------------
def _vector_problem(value: Any, dtype: torch.dtype, size: Optional[int] = None) -> Optional[str]:
    if not isinstance(value, torch.Tensor):
        return f"is a {type(value).__name__}, not a tensor"
    if value.dtype != dtype:
        return f"has dtype {value.dtype}, not {dtype}"
    if value.dim() != 1 or (size is not None and value.numel() != size):
        want = f"({size},)" if size is not None else "a vector"
        return f"has shape {tuple(value.shape)}, not {want}"
    return None


def _generator_problem(value: Any, generator: torch.Generator) -> Optional[str]:
    """torch's own check, on a throwaway generator (the global one is left as it is)."""
    problem = _vector_problem(value, torch.uint8)
    if problem:
        return problem
    try:
        generator.set_state(value.contiguous())
    except (RuntimeError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        return f"is not a state torch accepts ({first})"
    return None


def _mersenne_problem(value: Any) -> Optional[str]:
    """NumPy's and Python's MT19937: 624 words in [0, 2**32) and a position in [0, 624]. Neither
    library checks all of this itself (NumPy would read past its state with a larger position)."""
    problem = _vector_problem(value, torch.int64, MT_WORDS + 1)
    if problem:
        return problem
    words, pos = value[:-1], int(value[-1])
    if bool(((words < 0) | (words >= 2**32)).any()):
        return "holds a word outside [0, 2**32)"
    if not bool(words.any()):
        return "holds only zero words (no seed gives that state)"
    if not 0 <= pos <= MT_WORDS:
        return f"has position {pos}, outside [0, {MT_WORDS}]"
    return None


def rng_state_problem(state: Any, device: torch.device) -> Optional[str]:
    """Why a saved `rng_state` cannot be restored on `device` (naming the entry), or None.

    The CUDA state is checked (on a throwaway generator) only where it would be restored: on a
    CUDA device. Nothing global changes."""
    if not isinstance(state, dict):
        return f"'rng' is a {type(state).__name__}, not a dict of generator states"
    missing = [k for k in RNG_KEYS if k not in state]
    if missing:
        return f"'rng' lacks {', '.join(repr(k) for k in missing)}"
    checks: dict[str, Callable[[Any], Optional[str]]] = {
        "torch": lambda v: _generator_problem(v, torch.Generator()),
        "numpy": _mersenne_problem, "python": _mersenne_problem}
    if device.type == "cuda" and "cuda" in state:
        checks["cuda"] = lambda v: _generator_problem(v, torch.Generator(device=device))
    for name, check in checks.items():
        problem = check(state[name])
        if problem:
            return f"rng['{name}'] {problem}"
    return None
