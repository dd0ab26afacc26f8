"""Linear probes on cached features: the `cached` SGD probe and `logreg` (L-BFGS).

- `cached`: no augmentation; trains on embeddings files, several learning rates at once (one
  stacked weight tensor), picks the lr on a held-out part of the train set, refits on all of it.
  A different protocol from the image ones (`ssl_bf.eval.linear_images`): results carry that label.
- `logreg`: multinomial logistic regression, full-batch L-BFGS on standardised cached features,
  an L2 sweep (all values fit jointly, one data pass per step) selected on the same held-out split.
Inputs pass `ssl_bf.validate`; standardisation (logreg, `--bn-head`) is in float64 and scale-free
(`cached_inputs`), so the features' scale never changes the result.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from typing import Optional, Sequence

import numpy as np
import torch

from .cached_inputs import AsStored, Standardiser, probe_inputs
from .linear_common import ProbeResult, Recipe, class_hits, recipe_for, space_values, topk_correct

CACHED_NOTE = "cached centre-crop features, no augmentation (not the mocov2/mocov3 protocol)"
DEFAULT_CACHED_LRS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_L2 = (1e-2, 1e-3, 1e-4, 1e-5)


# ----------------------------------------------------------------------------------------------
# Held-out selection, several learning rates in one pass
# ----------------------------------------------------------------------------------------------


def holdout_split(labels: np.ndarray, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split of row indices into (fit, held-out); classes with one row stay in fit."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_held = int(round(fraction * len(rows))) if len(rows) > 1 else 0
        n_held = min(max(n_held, 1 if len(rows) > 1 else 0), len(rows) - 1)
        held.append(rows[:n_held])
        fit.append(rows[n_held:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def _xent_columns(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy per head and its gradient, for logits laid out (L, C, N).

    With N innermost, the reductions over the C classes are vectorised across samples (several
    times faster on CPU than reducing over a short last dimension). Returns (loss (L,),
    d loss / d logits (L, C, N)).
    """
    n = logits.shape[-1]
    idx = target.view(1, 1, n).expand(logits.shape[0], 1, n)  # (L, 1, N)
    top = logits.amax(1, keepdim=True)  # (L, 1, N)
    e = (logits - top).exp_()
    total = e.sum(1, keepdim=True)  # (L, 1, N)
    loss = (total.log() + top - logits.gather(1, idx)).mean(-1).squeeze(1)  # (L,)
    grad = e.div_(total).scatter_add_(1, idx, torch.full_like(total, -1.0))
    return loss, grad.div_(n)


def train_linear_heads(x: torch.Tensor, y: torch.Tensor, num_classes: int, lrs: Sequence[float],
                       recipe: Recipe, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD-train one linear head per lr on the same batches, all in one (L*C, D) weight.

    Args:
        x: (N, D) float32 features (already standardised if a BN head is wanted).
        y: (N,) int64 class indices.
        lrs: L learning rates; each follows `recipe`'s schedule from its own peak.
    Returns:
        weights (L, D, C) and biases (L, C). A head that diverged holds non-finite values.
    """
    with _small_op_threads(x.device):
        return _train_linear_heads(x, y, num_classes, lrs, recipe, seed)


_SMALL_PROBLEM = 1 << 22  # elements of a full-batch feature matrix below which one thread is faster


@contextlib.contextmanager
def _small_op_threads(device: torch.device):
    """One intra-op thread for loops of small CPU ops: a (256, 512) matmul gains nothing from
    threads, and OpenMP barriers cost ~10x when the cores are shared with other work."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_linear_heads(x: torch.Tensor, y: torch.Tensor, num_classes: int, lrs: Sequence[float],
                        recipe: Recipe, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = x.shape
    heads, c = len(lrs), num_classes
    init_gen = torch.Generator().manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed + 1)  # batch order independent of L
    w = (torch.randn(c, d, generator=init_gen) * 0.01).repeat(heads, 1).to(x.device)  # (L*C, D), equal starts
    b = torch.zeros(heads * c, device=x.device)  # (L*C,)
    peak = torch.tensor(list(lrs), dtype=torch.float32, device=x.device).repeat_interleave(c)  # (L*C,)
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    total = recipe.epochs * math.ceil(n / recipe.batch_size)
    step = 0
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=order_gen).to(x.device)
        for start in range(0, n, recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            xb, yb = x[idx], y[idx]  # (B, D), (B,)
            logits = torch.addmm(b[:, None], w, xb.T)  # (L*C, B)
            _, grad = _xent_columns(logits.view(heads, c, -1), yb)  # (L, C, B)
            grad = grad.view(heads * c, -1)  # (L*C, B)
            gw = grad @ xb  # (L*C, D)
            if recipe.weight_decay:
                gw = gw.add(w, alpha=recipe.weight_decay)
            lr = peak * recipe.lr_at(step / total, 1.0)  # (L*C,)
            vw.mul_(recipe.momentum).add_(gw)
            vb.mul_(recipe.momentum).add_(grad.sum(1))
            w.sub_(vw * lr[:, None])
            b.sub_(vb * lr)
            step += 1
    return w.view(heads, c, d).transpose(1, 2).contiguous(), b.view(heads, c)


def _scores(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Logits (L, N, C) of stacked heads w (L, D, C), b (L, C), computed in row chunks (N may be 0:
    a one-shot draw holds nothing out)."""
    if len(x) == 0:
        return x.new_zeros(len(w), 0, w.shape[2])
    return torch.cat([torch.baddbmm(b[:, None, :], x[i:i + chunk].expand(len(w), -1, -1), w)
                      for i in range(0, len(x), chunk)], dim=1)


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    if not torch.isfinite(logits).all():
        return -1.0  # a diverged head is never selected
    return 100.0 * topk_correct(logits, target)[0] / max(1, len(target))


def probe_cached(train_x, train_y, test_x, test_y, lrs: Sequence[float] = DEFAULT_CACHED_LRS,
                 recipe: Optional[Recipe] = None, num_classes: Optional[int] = None,
                 bn_head: bool = False, val_fraction: float = 0.1, refit: bool = True,
                 seed: int = 0, device: str = "cpu") -> ProbeResult:
    """Linear probe on cached features: an lr sweep selected on a held-out split of train.

    With `bn_head`, features are standardised with the train statistics (what a non-affine
    BatchNorm converges to on fixed features). After selection, the chosen lr is refit on the
    whole train set (`refit`); the test set is used only for the final report.
    """
    tic = time.perf_counter()
    recipe = recipe or recipe_for("cached")
    dev = torch.device(device)
    data = probe_inputs(train_x, train_y, test_x, test_y, num_classes, dev)
    y, c = data.y, data.space.num_classes
    fit_np, val_np = holdout_split(y.cpu().numpy(), val_fraction, seed)
    fit_rows, val_rows = torch.from_numpy(fit_np).to(dev), torch.from_numpy(val_np).to(dev)
    norm = Standardiser.fit(data.train, fit_np) if bn_head else AsStored()
    w, b = train_linear_heads(norm.apply(data.train, fit_np, dev, "train features"), y[fit_rows], c, lrs, recipe, seed)
    val_logits = _scores(norm.apply(data.train, val_np, dev, "train features"), w, b)  # (L, V, C)
    sweep = [{"lr": lr, "val_top1": _accuracy(val_logits[i], y[val_rows])} for i, lr in enumerate(lrs)]
    best = max(range(len(lrs)), key=lambda i: sweep[i]["val_top1"])
    if sweep[best]["val_top1"] < 0:
        raise RuntimeError(f"every learning rate in {list(lrs)} diverged; try smaller ones or --bn-head")
    if refit:
        norm = Standardiser.fit(data.train) if bn_head else norm
        w, b = train_linear_heads(norm.apply(data.train, None, dev, "train features"), y, c, [lrs[best]], recipe, seed)
        w, b = w[0], b[0]
    else:
        w, b = w[best], b[best]
    logits = norm.apply(data.test, None, dev, "test features") @ w + b  # (Q, C)
    t1, t5 = topk_correct(logits, data.yt)
    q = len(data.yt)
    hp = {"lr": lrs[best], **{k: v for k, v in asdict(recipe).items() if k not in ("lr", "milestones")},
          "bn_head": bn_head, "val_fraction": val_fraction, "refit": refit}
    return ProbeResult("cached", 100.0 * t1 / q, 100.0 * t5 / q, hp, sweep, CACHED_NOTE, time.perf_counter() - tic,
                       c, norm.head(w.cpu(), b.cpu()), space_values(data.space), *class_hits(logits, data.yt, c))


def fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float | Sequence[float],
               max_iter: int = 100, init: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
               tolerance: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS (strong Wolfe line search).

    Minimises mean cross-entropy + l2/2 * ||W||^2 (bias not penalised); sklearn's `C`
    corresponds to l2 = 1 / (C * N). Several `l2` values are solved jointly as one sum of
    independent problems (separable, so its minimum is every problem's minimum), sharing the
    data passes of each step.

    Returns W (D, C) and b (C,) for one l2, or (L, D, C) and (L, C) for a sequence of L values.
    `init` has the same shapes.
    """
    single = isinstance(l2, (int, float))
    l2s = [float(l2)] if single else [float(v) for v in l2]
    heads, d, c = len(l2s), x.shape[1], num_classes
    if init is None:
        w = torch.zeros(heads * c, d, device=x.device)
        b = torch.zeros(heads * c, device=x.device)
    else:  # (L, D, C) / (L, C), or (D, C) / (C,) for one value
        w = init[0].reshape(heads, d, c).transpose(1, 2).reshape(heads * c, d).contiguous().to(x.device)
        b = init[1].reshape(heads * c).clone().to(x.device)
    penalty = torch.tensor(l2s, device=x.device).repeat_interleave(c)[:, None]  # (L*C, 1)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=tolerance, tolerance_change=1e-9,
                            line_search_fn="strong_wolfe")

    @torch.no_grad()
    def closure() -> torch.Tensor:
        logits = torch.addmm(b[:, None], w, x.T)  # (L*C, N)
        loss, grad = _xent_columns(logits.view(heads, c, -1), y)  # (L,), (L, C, N)
        grad = grad.view(heads * c, -1)
        w.grad = torch.addmm(w * penalty, grad, x)  # (L*C, D): grad @ x + l2 * w
        b.grad = grad.sum(1)
        return loss.sum() + 0.5 * (penalty * w.pow(2)).sum()

    with _small_op_threads(x.device) if x.numel() < _SMALL_PROBLEM else contextlib.nullcontext():
        opt.step(closure)
    w_out = w.view(heads, c, d).transpose(1, 2).contiguous()  # (L, D, C)
    b_out = b.view(heads, c)
    return (w_out[0], b_out[0]) if single else (w_out, b_out)


def probe_logreg(train_x, train_y, test_x, test_y, l2s: Sequence[float] = DEFAULT_L2,
                 num_classes: Optional[int] = None, val_fraction: float = 0.1, max_iter: int = 100,
                 refit: bool = True, sweep_rows: Optional[int] = 8192,
                 refit_iter: Optional[int] = None, seed: int = 0, device: str = "cpu") -> ProbeResult:
    """Logistic regression on standardised cached features, L2 chosen on a held-out split.

    All L2 values are fit jointly (see `fit_logreg`) on at most `sweep_rows` rows of the
    non-held-out train part (None: all of it), each with the prior strength it has on the full
    train set (l2 x N / n: the penalty is a fixed prior on W, the loss a sum over rows). The
    chosen L2 is then refit on the whole train set, starting from its sweep solution (already
    close: `refit_iter` iterations, default max_iter / 3).
    """
    tic = time.perf_counter()
    dev = torch.device(device)
    data = probe_inputs(train_x, train_y, test_x, test_y, num_classes, dev)
    y, c = data.y, data.space.num_classes
    fit_np, val_np = holdout_split(y.cpu().numpy(), val_fraction, seed)
    if sweep_rows is not None and len(fit_np) > sweep_rows:
        fit_np = np.sort(np.random.default_rng(seed).choice(fit_np, sweep_rows, replace=False))
    fit_rows, val_rows = torch.from_numpy(fit_np).to(dev), torch.from_numpy(val_np).to(dev)
    norm = Standardiser.fit(data.train, fit_np)
    scale = len(y) / len(fit_rows)  # the same prior strength as on all N rows
    w_all, b_all = fit_logreg(norm.apply(data.train, fit_np, dev), y[fit_rows], c,
                              [v * scale for v in l2s], max_iter)  # (L, D, C), (L, C)
    val_logits = _scores(norm.apply(data.train, val_np, dev), w_all, b_all)  # (L, V, C)
    sweep = [{"l2": v, "val_top1": _accuracy(val_logits[i], y[val_rows])} for i, v in enumerate(l2s)]
    best = max(range(len(l2s)), key=lambda i: sweep[i]["val_top1"])
    w, b = w_all[best], b_all[best]
    if refit:
        norm = Standardiser.fit(data.train)
        w, b = fit_logreg(norm.apply(data.train, None, dev), y, c, l2s[best], refit_iter or max(1, max_iter // 3), (w, b))
    logits = norm.apply(data.test, None, dev) @ w + b  # (Q, C)
    t1, t5 = topk_correct(logits, data.yt)
    q = len(data.yt)
    hp = {"l2": l2s[best], "max_iter": max_iter, "val_fraction": val_fraction, "refit": refit,
          "sweep_rows": len(fit_rows), "standardized": True}
    return ProbeResult("logreg", 100.0 * t1 / q, 100.0 * t5 / q, hp, sweep,
                       "L-BFGS logistic regression on " + CACHED_NOTE, time.perf_counter() - tic,
                       c, norm.head(w.cpu(), b.cpu()), space_values(data.space), *class_hits(logits, data.yt, c))
