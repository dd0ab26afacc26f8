"""The typed run configuration. Every key states its facts in one place, beside its default:

- `help`: what it means (docs/config.md is generated from it);
- `range`: the numeric range checked at load time (`Range`), if any;
- `role`: what a resume may do with it (`Role`): a run folder remembers the keys that define its
  run, and a resume that changes one is refused.

`method` is a plain string: the methods themselves (ssl_bf/models/registry.py) say which exist.
Keys whose default is `auto` or null take their method's default when the config is loaded
(ssl_bf/run_config.py); the saved config always holds the resolved values.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any, Literal, Optional


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


class Role(enum.Enum):
    """What a resume may do with a key (see ssl_bf/config/resume.py)."""

    DEFINES = "defines the run"  # the model, the data it sees, the loss, the optimiser's trajectory
    FREE = "free on resume"  # how the run is executed, logged, checkpointed, stopped, monitored
    PRESENTATION = "presentation only"  # where it writes and how it shows progress (also FREE)
    EXTEND_ONLY = "may grow on resume"  # train.epochs


@dataclass(frozen=True)
class Range:
    """A numeric range; `low_open`/`high_open` exclude the bound. `note` says what the value means."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        if self.high is None:
            if self.low == 0 and self.low_open:
                return "positive"
            return f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


POSITIVE = Range(0, low_open=True)
NONNEG = Range(0)
AT_LEAST_1 = Range(1)


def setting(default: Any, help: str, role: Role = Role.DEFINES, range: Optional[Range] = None,
            factory: Any = None) -> Any:
    """A config field with its facts: `dataclasses.field` whose metadata holds help, role, range."""
    metadata = {"help": help, "role": role, "range": range}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type) -> Any:
    return dataclasses.field(default_factory=cls)


@dataclass
class BackboneConfig:
    name: Literal["resnet18", "resnet34", "resnet50", "vit_small", "vit_mini"] = setting(
        "resnet18", "resnet18/34/50 (torchvision), vit_small (12 blocks, 384 wide) or vit_mini (6 blocks, 192 wide)")
    stem: Literal["imagenet", "small"] = setting(
        "imagenet", "imagenet: 7x7 conv + max-pool; small: 3x3 conv, no max-pool (28-32 px images)")
    stem_stride: int = setting(1, "stride of the small stem's conv", range=AT_LEAST_1)
    width: int = setting(64, "ResNet base width (64 = torchvision's)", range=AT_LEAST_1)
    patch_size: int = setting(16, "ViT patch side (16 for 224 px; 4 or 7 for 28-32 px images)", range=AT_LEAST_1)
    freeze_patch_embed: bool = setting(False, "ViT: keep the patch projection at its random init (MoCo-v3)")


@dataclass
class BatchFormerConfig:
    enabled: bool = setting(False, "BatchFormer on (training only; evaluation never sees it)")
    position: Literal["projection", "backbone", "vit_blocks"] = setting(
        "projection", "projection / backbone: BatchFormer (v1) before the heads; vit_blocks: BatchFormerV2 "
        "inside a ViT, between its transformer blocks (ssl_bf/models/batchformer_v2.py)")
    insert_after: list[int] = setting(None, "vit_blocks: the blocks (0-based) BatchFormerV2 follows",
                                      factory=list)
    share_across_inserts: bool = setting(True, "vit_blocks: one layer for every insertion point, else one each")
    layers: int = setting(1, "encoder layers", range=AT_LEAST_1)
    heads: int = setting(4, "attention heads", range=AT_LEAST_1)
    dim_feedforward: int = setting(0, "feed-forward width", range=Range(0, note="0: the feature dimension"))
    dropout: float = setting(0.5, "dropout", range=Range(0, 1, high_open=True))
    lr_scale: float = setting(1.0, "lr multiplier for BatchFormer's parameters",
                              range=Range(0, note="0 freezes BatchFormer"))
    weight_decay: Optional[float] = setting(None, "BatchFormer's weight decay (null: the optimiser's)",
                                            range=Range(0, note="or null for the optimiser's"))
    # How the key (target) side meets BatchFormer (ssl_bf/models/batchformer.py):
    #   pre_only:   keys never pass BatchFormer; both query streams target the plain key
    #   same_batch: keys pass the same BatchFormer in the same batch order, all four stream pairs
    #               (the reference code's behaviour; leaks batch context into MoCo-v2's positive pair)
    #   recomposed: keys pass BatchFormer in re-shuffled groups, all four stream pairs
    #   context_matched (MoCo-v2): keys pass BatchFormer as a batch, and every queued negative of
    #               the BatchFormer key stream passes it as one extra member of that same batch
    #   auto:       the method's default, written into the saved config (docs/batchformer.md)
    key_branch: Literal["auto", "pre_only", "same_batch", "recomposed", "context_matched"] = setting(
        "auto", "how the keys meet BatchFormer; auto: the method's leak-free default")
    recompose_groups: int = setting(4, "recomposed: groups the key batch is re-shuffled into", range=AT_LEAST_1)
    enqueue_both: bool = setting(False, "MoCo-v2: also enqueue the BatchFormer key stream")
    scope: Literal["local", "global"] = setting("local", "attend over the rank's batch or the global batch")


@dataclass
class MocoConfig:
    dim: int = setting(128, "output dimension of the projector", range=AT_LEAST_1)
    hidden_dim: int = setting(2048, "projector hidden width", range=Range(0, note="0: the backbone feature width"))
    proj_layers: int = setting(3, "MoCo-v3 projector depth (MoCo-v2's is fixed at 2)", range=AT_LEAST_1)
    pred_hidden_dim: int = setting(4096, "MoCo-v3 predictor hidden width", range=AT_LEAST_1)
    queue_size: int = setting(65536, "MoCo-v2 queue of negatives", range=AT_LEAST_1)
    temperature: float = setting(0.2, "InfoNCE temperature",
                                 range=Range(0, low_open=True, note="the InfoNCE logits are divided by it"))
    momentum: float = setting(0.999, "key encoder EMA (MoCo-v2: fixed; MoCo-v3: start of the cosine to 1)",
                              range=Range(0, 1, note="the key encoder's EMA coefficient"))
    split_bn_groups: int = setting(8, "one-process shuffle-BN substitute: BatchNorm groups", range=Range(
        1, note="1 disables"))
    shuffle_keys: bool = setting(True, "shuffle the key batch before the momentum encoder (shuffle-BN)")


@dataclass
class AugmentConfig:
    recipe: Literal["mocov2", "mocov3", "light"] = setting("mocov2", "augmentation recipe")
    image_size: int = setting(0, "crop size", range=Range(0, note="0: the dataset's native size"))
    crop_scale_min: float = setting(0.0, "RandomResizedCrop's smallest area",
                                    range=Range(0, 1, note="0: the recipe's own"))
    jitter_strength: float = setting(1.0, "multiplies the recipe's colour-jitter magnitudes", range=NONNEG)
    blur: bool = setting(True, "Gaussian blur as the recipe has it")


@dataclass
class DataConfig:
    name: Literal["fashion-mnist", "cifar10", "cifar100", "imagefolder", "folder"] = setting(
        "fashion-mnist", "dataset")
    root: Optional[str] = setting(None, "data folder (null: the usual places)")
    subset: Optional[int] = setting(None, "use only the first N training images (smoke runs)",
                                    range=Range(1, note="or null for all images"))
    val_holdout: int = setting(0, "tuning: hold out the last N train images as the monitor's queries; "
                                  "the test split is never read", range=Range(0, note="0: no validation split"))
    num_workers: int = setting(0, "DataLoader workers", Role.FREE, range=NONNEG)
    load_size: int = setting(256, "image folders, evaluation only: shorter side resized to this, centre "
                                  "square (training crops are cut from the whole image)", Role.FREE,
                             range=AT_LEAST_1)
    skip_unreadable: bool = setting(
        False, "image folders: an image that cannot be read (truncated, empty, not an image, more pixels than "
               "PIL's decompression-bomb limit) is replaced in training by another image drawn from (seed, "
               "epoch, index), and left out of the monitor's k-NN; each is listed in metrics.jsonl. false: it "
               "stops the run (exit 2 naming the file; the last checkpoint is kept, so fixing the file and "
               "rerunning resumes). Free on resume: until the first unreadable image both settings train the same",
        Role.FREE)


@dataclass
class TrainConfig:
    epochs: int = setting(200, "epochs", Role.EXTEND_ONLY, range=Range(0, note="0 saves the untrained network"))
    batch_size: int = setting(256, "per process", range=Range(2, note="per process"))
    optimizer: Literal["auto", "sgd", "lars", "adamw"] = setting("auto", "auto: the method's")
    base_lr: Optional[float] = setting(None, "lr = base_lr x global batch / 256 (null: the method's)",
                                       range=Range(0, low_open=True,
                                                   note="the peak lr is base_lr x global batch / 256"))
    weight_decay: Optional[float] = setting(None, "null: the method's", range=NONNEG)
    sgd_momentum: float = setting(0.9, "SGD / LARS momentum", range=Range(0, 1, high_open=True))
    warmup_epochs: Optional[float] = setting(None, "linear lr warmup (null: the method's)", range=NONNEG)
    amp: bool = setting(True, "bf16 autocast on CUDA (ignored on CPU)", Role.FREE)
    channels_last: bool = setting(True, "channels_last memory format on CUDA", Role.FREE)
    log_every: int = setting(50, "steps between step lines in metrics.jsonl; also the host-sync cadence "
                                 "(loss read back, NaN check, time budget)", Role.FREE, range=AT_LEAST_1)
    checkpoint_every_steps: int = setting(0, "steps between checkpoints", Role.FREE,
                                          range=Range(0, note="0: only at epoch ends"))
    max_steps: int = setting(0, "stop after this many steps in total", Role.FREE,
                             range=Range(0, note="0: no limit"))
    time_budget_min: float = setting(0.0, "stop training (with a checkpoint) after this many minutes", Role.FREE,
                                     range=Range(0, note="0: no budget"))
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", Role.FREE)
    # auto: a process group only when WORLD_SIZE > 1; always: also for one process (its collectives
    # then really run, e.g. NCCL at world size 1 in scripts/gpu_check.sh)
    process_group: Literal["auto", "always"] = setting("auto", "always: a process group even for one "
                                                               "process", Role.FREE)


@dataclass
class MonitorConfig:
    knn_every: int = setting(1, "epochs between online k-NN checks", Role.FREE, range=Range(0, note="0: never"))
    knn_at_start: bool = setting(False, "also measure the random-init network before training", Role.FREE)
    full_sets: bool = setting(True, "the start and last checks use the full sets (false: the subsets too, "
                                    "when `ssl-bf evaluate` follows anyway)", Role.FREE)
    knn_k: int = setting(20, "neighbours", Role.FREE, range=AT_LEAST_1)
    knn_temperature: float = setting(0.07, "vote temperature", Role.FREE,
                                     range=Range(0, low_open=True, note="the k-NN vote weights are exp(sim / T)"))
    bank_subset: Optional[int] = setting(None, "train images in the bank (null: the whole train split)",
                                         Role.FREE, range=Range(1, note="or null for the whole train split"))
    query_subset: Optional[int] = setting(None, "test images scored (null: the whole test split)", Role.FREE,
                                          range=Range(1, note="or null for the whole test split"))


@dataclass
class RunConfig:
    dir: str = setting("runs/default", "the run folder", Role.PRESENTATION)
    tensorboard: bool = setting(True, "also write TensorBoard events", Role.PRESENTATION)
    progress: bool = setting(True, "progress bar and epoch lines", Role.PRESENTATION)


@dataclass
class Config:
    method: str = setting("mocov2", "mocov2 (queue) or mocov3 (in-batch, symmetric); any registered method")
    seed: int = setting(0, "seed")
    backbone: BackboneConfig = section(BackboneConfig)
    batchformer: BatchFormerConfig = section(BatchFormerConfig)
    moco: MocoConfig = section(MocoConfig)
    augment: AugmentConfig = section(AugmentConfig)
    data: DataConfig = section(DataConfig)
    train: TrainConfig = section(TrainConfig)
    monitor: MonitorConfig = section(MonitorConfig)
    run: RunConfig = section(RunConfig)
