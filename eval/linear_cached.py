"""Linear probes on a frozen encoder: the standard protocols, cached features, logistic regression.

Protocols (shared/design/protocols.md):
- `mocov2`: frozen backbone in eval mode, linear layer N(0, 0.01); SGD lr 30, momentum 0.9,
  wd 0, 100 epochs, lr x0.1 at 60% and 80% of training, batch 256; RandomResizedCrop + flip
  for training, resize + centre crop for testing.
- `mocov3`: the same, but SGD lr 0.1 x batch/256, cosine, 90 epochs, batch 1024.
- `--bn-head` (MAE): a non-affine BatchNorm before the linear layer, so the lr does not depend
  on the feature scale.
- `cached`: no augmentation; trains on embeddings files, several learning rates at once (one
  stacked weight tensor), picks the lr on a held-out part of the train set, refits on all of it.
  A different protocol from the two above: results carry that label.
- `logreg`: multinomial logistic regression, full-batch L-BFGS on standardised cached features,
  an L2 sweep (all values fit jointly, one data pass per step) selected on the same held-out split.
The image protocols check that the backbone's weights and buffers are bit-identical afterwards.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .knn import LabelSpace, as_numpy

PROTOCOLS = ("mocov2", "mocov3", "cached", "logreg")
CACHED_NOTE = "cached centre-crop features, no augmentation (not the mocov2/mocov3 protocol)"
DEFAULT_CACHED_LRS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_L2 = (1e-2, 1e-3, 1e-4, 1e-5)


class BackboneChangedError(RuntimeError):
    """The frozen backbone's weights or buffers changed during probing."""


# ----------------------------------------------------------------------------------------------
# Recipes, head, metrics
# ----------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """Optimisation of the linear layer. `lr` is the base lr; with `scale_lr` the used lr is
    lr x batch_size / 256 (MoCo-v3)."""

    epochs: int
    batch_size: int
    lr: float
    schedule: str  # "step" (x0.1 at each milestone fraction) or "cosine"
    milestones: tuple[float, ...] = ()
    momentum: float = 0.9
    weight_decay: float = 0.0
    scale_lr: bool = False

    def peak_lr(self) -> float:
        return self.lr * self.batch_size / 256 if self.scale_lr else self.lr

    def lr_at(self, progress: float, lr: Optional[float] = None) -> float:
        """The lr at `progress` in [0, 1] of training (per-iteration schedules)."""
        lr = self.peak_lr() if lr is None else lr
        if self.schedule == "cosine":
            return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return lr * 0.1 ** sum(progress >= m for m in self.milestones)


RECIPES = {
    "mocov2": Recipe(epochs=100, batch_size=256, lr=30.0, schedule="step", milestones=(0.6, 0.8)),
    "mocov3": Recipe(epochs=90, batch_size=1024, lr=0.1, schedule="cosine", scale_lr=True),
    "cached": Recipe(epochs=10, batch_size=256, lr=0.1, schedule="cosine"),
}


def recipe_for(protocol: str, epochs: Optional[int] = None, batch_size: Optional[int] = None,
               lr: Optional[float] = None, weight_decay: Optional[float] = None) -> Recipe:
    """The protocol's recipe with any given overrides."""
    if protocol not in RECIPES:
        raise ValueError(f"no SGD recipe for protocol '{protocol}'; choose one of {', '.join(RECIPES)}")
    r = Recipe(**asdict(RECIPES[protocol]))
    r.epochs = epochs if epochs is not None else r.epochs
    r.batch_size = batch_size if batch_size is not None else r.batch_size
    r.lr = lr if lr is not None else r.lr
    r.weight_decay = weight_decay if weight_decay is not None else r.weight_decay
    if r.epochs < 1 or r.batch_size < 1 or r.lr <= 0:
        raise ValueError(f"bad recipe: epochs={r.epochs}, batch_size={r.batch_size}, lr={r.lr}")
    return r


class LinearHead(nn.Module):
    """[BatchNorm1d without affine] + Linear, the weight initialised N(0, 0.01), bias 0."""

    def __init__(self, in_dim: int, num_classes: int, bn: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6) if bn else nn.Identity()
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))  # (N, C)


def topk_correct(logits: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """Counts of top-1 and top-min(5, C) hits; a target of -1 never hits."""
    top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (N, 5)
    hits = top == target[:, None]
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


@dataclass
class ProbeResult:
    """What a probe reports (accuracies in percent)."""

    protocol: str
    top1: float
    top5: float
    hyperparameters: dict
    sweep: list[dict] = field(default_factory=list)  # [{"lr" or "l2": .., "val_top1": ..}]
    note: str = ""
    seconds: float = 0.0
    num_classes: int = 0
    head: Optional[LinearHead] = None
    label_values: Optional[list[int]] = None  # class index i <-> dataset label label_values[i]

    def to_dict(self) -> dict:
        d = {"protocol": self.protocol, "top1": self.top1, "top5": self.top5,
             "hyperparameters": self.hyperparameters, "sweep": self.sweep,
             "num_classes": self.num_classes, "seconds": round(self.seconds, 3)}
        if self.note:
            d["note"] = self.note
        return d


def save_head(path: str, result: ProbeResult, classes: Optional[Sequence[str]] = None) -> None:
    """Write the trained head (state dict + what it needs to be rebuilt) atomically.

    Loadable with `torch.load(path, weights_only=True)`.
    """
    from ssl_bf.checkpoint import save_atomic

    head = result.head
    if head is None:
        raise ValueError("this result holds no head")
    save_atomic({"head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                 "in_dim": head.fc.in_features, "num_classes": head.fc.out_features,
                 "bn": isinstance(head.norm, nn.BatchNorm1d), "protocol": result.protocol,
                 "hyperparameters": result.hyperparameters, "classes": list(classes or []),
                 "label_values": result.label_values}, path)


def load_head(path: str) -> LinearHead:
    """Rebuild a head written by `save_head`."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    head = LinearHead(blob["in_dim"], blob["num_classes"], bn=blob["bn"])
    head.load_state_dict(blob["head"])
    return head.eval()


# ----------------------------------------------------------------------------------------------
# Backbone sanity check
# ----------------------------------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (BN running stats included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_unchanged(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Raise BackboneChangedError unless `model`'s state equals the `before` snapshot exactly."""
    after = model.state_dict()
    changed = sorted(k for k in before if k not in after or not torch.equal(before[k], after[k].detach()))
    changed += sorted(k for k in after if k not in before)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise BackboneChangedError(f"the frozen backbone changed during the linear probe: {shown}. "
                                   f"The probe must keep it in eval mode and off the optimiser.")


# ----------------------------------------------------------------------------------------------
# Image protocols: mocov2 / mocov3 (augmented training, frozen backbone)
# ----------------------------------------------------------------------------------------------


class ProbeTrainTransform(nn.Module):
    """uint8 (N, C, H, W) -> RandomResizedCrop(S, scale 0.08-1) + horizontal flip, normalised."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        import kornia.augmentation as K

        self.augment = nn.Sequential(K.RandomResizedCrop((image_size, image_size), scale=(0.08, 1.0)),
                                     K.RandomHorizontalFlip())
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.augment(images.float().div_(255))  # (N, C, S, S)
        return (x - self.mean) / self.std


def shuffled_batches(dataset, batch_size: int, generator: torch.Generator,
                     num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled (uint8 images, labels) batches, the last one possibly smaller."""
    if hasattr(dataset, "get_batch"):
        order = torch.randperm(len(dataset), generator=generator)
        for start in range(0, len(order), batch_size):
            yield dataset.get_batch(order[start:start + batch_size])
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         generator=generator, num_workers=num_workers)
    for images, labels in loader:
        yield images, torch.as_tensor(labels, dtype=torch.int64)


def probe_images(model: nn.Module, train_set, test_set, recipe: Recipe, image_size: int,
                 protocol: str = "mocov2", bn_head: bool = False, device: str | torch.device = "cpu",
                 num_workers: int = 4, seed: int = 0, amp: bool = True,
                 progress: bool = True) -> ProbeResult:
    """Train a linear head on a frozen `model` with augmented images; test with centre crops.

    `model` maps a normalised batch to features (N, D). It stays in eval mode with no gradient;
    afterwards its weights and buffers are checked to be unchanged (BackboneChangedError).
    """
    from tqdm.auto import tqdm

    from ssl_bf.augment import EvalTransform
    from ssl_bf.features import extract_features

    tic = time.perf_counter()
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    before = snapshot(model)
    space = LabelSpace.from_train(_dataset_labels(train_set), len(train_set.classes) or None)
    train_tf = ProbeTrainTransform(image_size, train_set.mean, train_set.std).to(dev)
    use_amp = amp and dev.type == "cuda"

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            return model(x).float()  # (B, D)

    dim = extract_features(model, train_set, EvalTransform(image_size, train_set.mean, train_set.std).to(dev), dev,
                           indices=torch.arange(min(2, len(train_set))), batch_size=2,
                           progress=False)[0].shape[1]
    head = LinearHead(dim, space.num_classes, bn=bn_head).to(dev)
    opt = torch.optim.SGD(head.parameters(), lr=recipe.peak_lr(), momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    step = 0
    bar = tqdm(total=total, desc=f"linear {protocol}", unit="step", disable=not progress)
    for _ in range(recipe.epochs):
        head.train()
        for images, labels in shuffled_batches(train_set, recipe.batch_size, gen, num_workers):
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(step / total)
            target = torch.from_numpy(space.encode(labels.numpy())).to(dev)
            loss = F.cross_entropy(head(features(train_tf(images.to(dev, non_blocking=True)))), target,
                                   ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    check_unchanged(before, model)

    eval_tf = EvalTransform(image_size, test_set.mean, test_set.std).to(dev)
    feats, labels = extract_features(model, test_set, eval_tf, dev, batch_size=recipe.batch_size,
                                     num_workers=num_workers, progress=progress, desc="linear test")
    check_unchanged(before, model)
    head.eval()
    with torch.no_grad():
        logits = head(feats.to(dev)).cpu()
    t1, t5 = topk_correct(logits, torch.from_numpy(space.encode(labels.numpy())))
    hp = {**asdict(recipe), "used_lr": recipe.peak_lr(), "bn_head": bn_head, "image_size": image_size}
    hp["milestones"] = list(hp["milestones"])
    return ProbeResult(protocol, 100.0 * t1 / len(labels), 100.0 * t5 / len(labels), hp,
                       seconds=time.perf_counter() - tic, num_classes=space.num_classes,
                       head=head.cpu(), label_values=_values(space))


def _dataset_labels(dataset) -> np.ndarray:
    if hasattr(dataset, "labels"):
        return as_numpy(dataset.labels).astype(np.int64)
    if hasattr(dataset, "samples"):
        return np.asarray([label for _, label in dataset.samples], dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)


def _values(space: LabelSpace) -> Optional[list[int]]:
    return None if space.values is None else [int(v) for v in space.values]


# ----------------------------------------------------------------------------------------------
# Cached features: several learning rates in one pass, logistic regression
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


def _tensor(x, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(as_numpy(x)), dtype=torch.float32).to(device)


def _standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and variance of the rows of `x` (N, D), in float64 for stability."""
    mean = x.double().mean(0)
    var = x.double().var(0, unbiased=False)
    return mean.float(), var.float()


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
    """Logits (L, N, C) of stacked heads w (L, D, C), b (L, C), computed in row chunks."""
    return torch.cat([torch.baddbmm(b[:, None, :], x[i:i + chunk].expand(len(w), -1, -1), w)
                      for i in range(0, len(x), chunk)], dim=1)


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    if not torch.isfinite(logits).all():
        return -1.0  # a diverged head is never selected
    return 100.0 * topk_correct(logits, target)[0] / max(1, len(target))


def _head_from(w: torch.Tensor, b: torch.Tensor, mean: Optional[torch.Tensor],
               var: Optional[torch.Tensor]) -> LinearHead:
    """A LinearHead computing `standardise(x) @ w + b` (the BN running stats hold mean/var)."""
    head = LinearHead(w.shape[0], w.shape[1], bn=mean is not None)
    with torch.no_grad():
        head.fc.weight.copy_(w.T)
        head.fc.bias.copy_(b)
        if mean is not None:
            head.norm.running_mean.copy_(mean)
            head.norm.running_var.copy_(var)
    return head.eval()


def _prepare(train_x, train_y, test_x, test_y, num_classes, device):
    dev = torch.device(device)
    ytr = as_numpy(train_y).astype(np.int64)
    space = LabelSpace.from_train(ytr, num_classes)
    x = _tensor(train_x, dev)
    xt = _tensor(test_x, dev)
    if x.shape[1] != xt.shape[1]:
        raise ValueError(f"feature dimensions differ: train D={x.shape[1]}, test D={xt.shape[1]}")
    y = torch.from_numpy(space.encode(ytr)).to(dev)
    yt = torch.from_numpy(space.encode(as_numpy(test_y).astype(np.int64))).to(dev)
    return dev, space, x, y, xt, yt


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
    dev, space, x, y, xt, yt = _prepare(train_x, train_y, test_x, test_y, num_classes, device)
    fit_rows, val_rows = (torch.from_numpy(r).to(dev) for r in holdout_split(y.cpu().numpy(), val_fraction, seed))

    def standardise(rows: torch.Tensor):
        if not bn_head:
            return None, None, (lambda z: z)
        mean, var = _standardizer(x[rows])
        inv = (var + 1e-6).rsqrt()
        return mean, var, (lambda z: (z - mean) * inv)

    _, _, norm = standardise(fit_rows)
    w, b = train_linear_heads(norm(x[fit_rows]), y[fit_rows], space.num_classes, lrs, recipe, seed)
    val_logits = _scores(norm(x[val_rows]), w, b)  # (L, V, C)
    sweep = [{"lr": lr, "val_top1": _accuracy(val_logits[i], y[val_rows])} for i, lr in enumerate(lrs)]
    best = max(range(len(lrs)), key=lambda i: sweep[i]["val_top1"])
    if sweep[best]["val_top1"] < 0:
        raise RuntimeError(f"every learning rate in {list(lrs)} diverged; try smaller ones or --bn-head")
    if refit:
        all_rows = torch.arange(len(x), device=dev)
        mean, var, norm = standardise(all_rows)
        w, b = train_linear_heads(norm(x), y, space.num_classes, [lrs[best]], recipe, seed)
        w, b = w[0], b[0]
    else:
        mean, var, norm = standardise(fit_rows)
        w, b = w[best], b[best]
    logits = norm(xt) @ w + b  # (Q, C)
    t1, t5 = topk_correct(logits, yt)
    hp = {"lr": lrs[best], **{k: v for k, v in asdict(recipe).items() if k not in ("lr", "milestones")},
          "bn_head": bn_head, "val_fraction": val_fraction, "refit": refit}
    return ProbeResult("cached", 100.0 * t1 / len(yt), 100.0 * t5 / len(yt), hp, sweep, CACHED_NOTE,
                       time.perf_counter() - tic, space.num_classes,
                       _head_from(w.cpu(), b.cpu(), None if mean is None else mean.cpu(),
                                  None if var is None else var.cpu()),
                       _values(space))


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
    dev, space, x, y, xt, yt = _prepare(train_x, train_y, test_x, test_y, num_classes, device)
    fit_np, val_np = holdout_split(y.cpu().numpy(), val_fraction, seed)
    if sweep_rows is not None and len(fit_np) > sweep_rows:
        fit_np = np.sort(np.random.default_rng(seed).choice(fit_np, sweep_rows, replace=False))
    fit_rows, val_rows = torch.from_numpy(fit_np).to(dev), torch.from_numpy(val_np).to(dev)
    mean, var = _standardizer(x[fit_rows])
    inv = (var + 1e-6).rsqrt()
    scale = len(x) / len(fit_rows)  # the same prior strength as on all N rows
    w_all, b_all = fit_logreg((x[fit_rows] - mean) * inv, y[fit_rows], space.num_classes,
                              [v * scale for v in l2s], max_iter)  # (L, D, C), (L, C)
    val_logits = _scores((x[val_rows] - mean) * inv, w_all, b_all)  # (L, V, C)
    sweep = [{"l2": v, "val_top1": _accuracy(val_logits[i], y[val_rows])} for i, v in enumerate(l2s)]
    best = max(range(len(l2s)), key=lambda i: sweep[i]["val_top1"])
    w, b = w_all[best], b_all[best]
    if refit:
        mean, var = _standardizer(x)
        inv = (var + 1e-6).rsqrt()
        w, b = fit_logreg((x - mean) * inv, y, space.num_classes, l2s[best],
                          refit_iter or max(1, max_iter // 3), (w, b))
    logits = ((xt - mean) * inv) @ w + b
    t1, t5 = topk_correct(logits, yt)
    hp = {"l2": l2s[best], "max_iter": max_iter, "val_fraction": val_fraction, "refit": refit,
          "sweep_rows": len(fit_rows), "standardized": True}
    return ProbeResult("logreg", 100.0 * t1 / len(yt), 100.0 * t5 / len(yt), hp, sweep,
                       "L-BFGS logistic regression on " + CACHED_NOTE, time.perf_counter() - tic,
                       space.num_classes, _head_from(w.cpu(), b.cpu(), mean.cpu(), var.cpu()),
                       _values(space))
