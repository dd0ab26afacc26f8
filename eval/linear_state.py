"""Checkpoints of an image probe (`ssl-bf linear --protocol mocov2|mocov3 --work-dir DIR`).

`DIR/linear-probe.pt` is rewritten atomically by rank 0 after every epoch, and every `save_every`
steps inside an epoch. It holds the head, the optimiser, the epoch, the steps done in it, the
order generator as it stood at the epoch's start (the epoch's order is drawn again from it) and
torch's CPU RNG (every crop and flip draw comes from it, whatever the device), so a probe killed or
preempted mid-way and started again with the same command continues from its last save, mid-epoch
included, with the same draws, and ends where an uninterrupted run ends (exactly on CPU; on a GPU
up to its kernels' float rounding). It also holds what defines the probe (protocol, recipe, seed,
data, a digest of the frozen backbone's weights): a folder holding another probe is refused rather
than continued. `DIR/.lock` keeps a second probe out while one runs (`ssl_bf.run_lock`). The
process count may change between attempts: the global batch, its order and its random draws do
not depend on it.
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional

import torch
from torch import nn

from ssl_bf import distributed as dist_utils
from ssl_bf.atomic_write import write_torch
from ssl_bf.io import UnreadableFileError, load_tensors
from ssl_bf.train.run_lock import RunLock, claim_on_main

STATE_NAME = "linear-probe.pt"
_KEYS = {"head": dict, "optimizer": dict, "epoch": int, "definition": dict, "order_rng": torch.Tensor,
         "torch_rng": torch.Tensor}


class ProbeStateError(ValueError):
    """A work folder whose state cannot be continued by this probe (the message says why and what to do)."""


def state_path(work_dir: str) -> str:
    return os.path.join(work_dir, STATE_NAME)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names and values (parameters and buffers)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _move_aside(path: str) -> str:
    return f"move it aside (mv {path} {path}.bad) to start the probe over, or give another --work-dir"


class ProbeCheckpoint:
    """The work folder of one probe: its lock, its saved state, the resume check."""

    def __init__(self, work_dir: str, definition: dict, device: torch.device):
        self.work_dir = work_dir
        self.path = state_path(work_dir)
        self.definition = definition
        self.device = device
        self.lock = RunLock(work_dir, label="--work-dir", owner="`ssl-bf linear`")

    def __enter__(self) -> "ProbeCheckpoint":
        claim_on_main(self.lock, self.device)  # every rank: the outcome is broadcast
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def load(self) -> Optional[dict]:
        """The saved state after every check, or None when there is none yet."""
        if not os.path.lexists(self.path):
            return None
        if os.path.isdir(self.path):
            raise ProbeStateError(f"{self.path} is a folder, not a probe state; {_move_aside(self.path)}")
        try:
            state = load_tensors(self.path)
        except UnreadableFileError as e:
            raise ProbeStateError(f"cannot resume the probe: {e}; {_move_aside(self.path)}") from None
        wrong = [k for k, t in _KEYS.items() if not isinstance(state, dict) or not isinstance(state.get(k), t)]
        if not wrong and not (type(state.get("batches_done", 0)) is int and state.get("batches_done", 0) >= 0):
            wrong = ["batches_done"]
        if wrong:
            raise ProbeStateError(f"cannot resume the probe: {self.path} is not a probe state written by "
                                  f"`ssl-bf linear` (no valid {', '.join(wrong)}); {_move_aside(self.path)}")
        saved = state["definition"]
        diffs = sorted(k for k in set(saved) | set(self.definition) if saved.get(k) != self.definition.get(k))
        if diffs:
            listed = "; ".join(f"{k}: {saved.get(k)!r} -> {self.definition.get(k)!r}" for k in diffs[:4])
            raise ProbeStateError(f"--work-dir {self.work_dir} holds another probe ({listed}); resume it with the "
                                  f"same arguments and checkpoint, or give another --work-dir")
        return state

    def save(self, head: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, order_rng: torch.Tensor,
             torch_rng: torch.Tensor, batches_done: int = 0) -> None:
        """Rank 0 writes the state after `epoch` whole epochs and `batches_done` steps of the next one
        (atomically; `order_rng`: the order generator at that epoch's start); the others write nothing."""
        if not dist_utils.is_main():
            return
        write_torch({"head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "epoch": int(epoch), "batches_done": int(batches_done),
                     "definition": self.definition,
                     "order_rng": order_rng, "torch_rng": torch_rng,
                     "world_size": dist_utils.world_size()}, self.path, option="--work-dir")
