"""Per-step training figures kept on the device, read back in one host sync every `log_every` steps.

A GPU step must never wait for the host: the loss, the lr and the model's diagnostics stay device
tensors until `sync()`, which packs them with the stop flags into one vector, agrees the flags
across ranks with one all-reduce (on the training device), and reads everything with one copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from .. import distributed as dist_utils


@dataclass
class SyncResult:
    """What one sync read back: the records of the steps to log, every step loss, and the flags."""

    records: list[dict]
    losses: list[float]
    non_finite: bool  # some rank saw a NaN/inf loss since the last sync
    over_budget: bool  # some rank's time budget is spent
    first_bad_step: Optional[int] = None  # this rank's first non-finite step, if any


@dataclass
class StepStats:
    """Accumulates (step, loss) for every step and the full diagnostics of the steps to log."""

    device: torch.device
    pending_steps: list[int] = field(default_factory=list)
    pending_losses: list[torch.Tensor] = field(default_factory=list)  # 0-d device tensors
    to_log: list[tuple[int, int, float, dict[str, torch.Tensor]]] = field(default_factory=list)

    def add(self, step: int, epoch: int, lr: float, out: dict[str, torch.Tensor], log: bool) -> None:
        """Record one finished step; `out` holds the model's 0-d device tensors ('loss' first)."""
        loss = out["loss"].detach()
        self.pending_steps.append(step)
        self.pending_losses.append(loss)
        if log:
            diagnostics = {k: v.detach() for k, v in out.items() if k != "loss"}
            self.to_log.append((step, epoch, lr, {"loss": loss, **diagnostics}))

    def __len__(self) -> int:
        return len(self.pending_steps)

    def locally_finite(self) -> bool:
        """This rank's pending losses are all finite (one host sync; no collective: safe in a
        signal handler)."""
        if not self.pending_losses:
            return True
        return bool(torch.isfinite(torch.stack(self.pending_losses)).all())

    def sync(self, over_budget: bool = False) -> SyncResult:
        """Read everything pending with one collective and one device-to-host copy, then clear."""
        losses = torch.stack(self.pending_losses) if self.pending_losses else \
            torch.zeros(0, device=self.device)  # (P,)
        bad = (~torch.isfinite(losses)).any().to(torch.float64).view(1)
        budget = torch.full((1,), float(over_budget), dtype=torch.float64, device=self.device)
        flags = dist_utils.all_reduce_(torch.cat([bad, budget]), op="max")  # (2,) agreed by all ranks
        logged = [v.to(torch.float64).view(1) for *_, values in self.to_log for v in values.values()]
        packed = torch.cat([flags, losses.to(torch.float64), *logged]).tolist()  # the one host sync
        flag_bad, flag_budget = packed[0] > 0, packed[1] > 0
        loss_values = packed[2:2 + len(losses)]
        records, cursor = [], 2 + len(losses)
        for step, epoch, lr, values in self.to_log:
            read = dict(zip(values, packed[cursor:cursor + len(values)]))
            cursor += len(values)
            records.append({"step": step, "epoch": epoch, "loss": read.pop("loss"), "lr": lr, **read})
        first_bad = next((s for s, v in zip(self.pending_steps, loss_values) if not math.isfinite(v)), None)
        self.pending_steps, self.pending_losses, self.to_log = [], [], []
        return SyncResult(records, loss_values, flag_bad, flag_budget, first_bad)
