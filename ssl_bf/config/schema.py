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
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        if self.high is None:
            if self.low == 0 and self.low_open:
                return "positive"
            return f"greater than {_num(self.low)}" if self.low_open else f"at least {_num(self.low)}"
        return (f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                f"{')' if self.high_open else ']'}")


def _num(x: float) -> str:
    """A bound as the docs write it: 65536, 1000000000, 0.5."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


POSITIVE = Range(0, low_open=True)
NONNEG = Range(0)
# Upper bounds of sizes and counts: far above any real run, low enough that a typo (an extra
# digit, 1e12) is refused at load time instead of failing to allocate or running for years.
WIDTH = 65536  # projector / predictor / feed-forward widths
COUNT = 10 ** 9  # images, steps


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
    stem_stride: int = setting(1, "stride of the small stem's conv", range=Range(1, 8))
    width: int = setting(64, "ResNet base width (64 = torchvision's)", range=Range(1, 1024))
    patch_size: int = setting(16, "ViT patch side (16 for 224 px; 4 or 7 for 28-32 px images)", range=Range(1, 256))
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
    layers: int = setting(1, "encoder layers", range=Range(1, 64))
    heads: int = setting(4, "attention heads", range=Range(1, 256))
    dim_feedforward: int = setting(0, "feed-forward width", range=Range(0, WIDTH, note="0: the feature dimension"))
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
    recompose_groups: int = setting(4, "recomposed: groups the key batch is re-shuffled into", range=Range(1, 4096))
    enqueue_both: bool = setting(False, "MoCo-v2: also enqueue the BatchFormer key stream")
    scope: Literal["local", "global"] = setting("local", "attend over the rank's batch or the global batch")


@dataclass
class MocoConfig:
    dim: int = setting(128, "output dimension of the projector", range=Range(1, WIDTH))
    hidden_dim: int = setting(2048, "projector hidden width",
                              range=Range(0, WIDTH, note="0: the backbone feature width"))
    proj_layers: int = setting(3, "MoCo-v3 projector depth (MoCo-v2's is fixed at 2)", range=Range(1, 64))
    pred_hidden_dim: int = setting(4096, "MoCo-v3 predictor hidden width", range=Range(1, WIDTH))
    queue_size: int = setting(65536, "MoCo-v2 queue of negatives", range=Range(1, 2 ** 24))
    temperature: float = setting(0.2, "InfoNCE temperature",
                                 range=Range(0, low_open=True, note="the InfoNCE logits are divided by it"))
    momentum: float = setting(0.999, "key encoder EMA (MoCo-v2: fixed; MoCo-v3: start of the cosine to 1)",
                              range=Range(0, 1, note="the key encoder's EMA coefficient"))
    split_bn_groups: int = setting(8, "one-process shuffle-BN substitute: BatchNorm groups", range=Range(
        1, 4096, note="1 disables"))
    shuffle_keys: bool = setting(True, "shuffle the key batch before the momentum encoder (shuffle-BN)")


@dataclass
class AugmentConfig:
    recipe: Literal["mocov2", "mocov3", "light"] = setting("mocov2", "augmentation recipe")
    image_size: int = setting(0, "crop size", range=Range(0, 4096, note="0: the dataset's native size"))
    crop_scale_min: float = setting(0.0, "RandomResizedCrop's smallest area",
                                    range=Range(0, 1, note="0: the recipe's own"))
    jitter_strength: float = setting(1.0, "multiplies the recipe's colour-jitter magnitudes", range=Range(
        0, 10, note="the recipe's hue jitter, 0.1 x this for mocov2/v3, may not pass torchvision's 0.5"))
    blur: bool = setting(True, "Gaussian blur as the recipe has it")


@dataclass
class LongTailConfig:
    ratio: float = setting(1.0, "long-tailed pretraining set: n_max / n_min of the class sizes drawn from the train "
                                "split (docs/protocols.md)", range=Range(1, note="1: off, the balanced split"))
    kind: Literal["exp", "step"] = setting("exp", "exp: n_c = n_max x ratio^(-c / (C - 1)); step: n_max for the "
                                                  "first half of the classes, n_max / ratio for the rest")
    split: int = setting(0, "which seeded draw of each class's images (SDCLR's splits 1-5 are index files)",
                         range=Range(0, 2 ** 32 - 1))


@dataclass
class DataConfig:
    name: Literal["fashion-mnist", "cifar10", "cifar100", "imagefolder", "folder", "shards"] = setting(
        "fashion-mnist", "dataset (shards: written by `ssl-bf shard`, see docs/shards.md)")
    root: Optional[str] = setting(None, "data folder (null: the usual places); shards: the manifest.json")
    subset: Optional[int] = setting(None, "use only the first N training images (smoke runs)",
                                    range=Range(1, COUNT, note="or null for all images"))
    long_tail: LongTailConfig = section(LongTailConfig)
    indices_file: Optional[str] = setting(
        None, "train on these images only: a .npy of int indices into the train split (as `ssl-bf embed --split "
              "train` orders it), or, for image folders, lines naming the images; a run's data_indices.npy "
              "works. Not with data.long_tail.ratio > 1 (null: every image)")
    val_holdout: int = setting(0, "tuning: hold out the last N train images as the monitor's queries; "
                                  "the test split is never read", range=Range(0, COUNT, note="0: no validation split"))
    num_workers: int = setting(0, "DataLoader workers", Role.FREE, range=Range(0, 1024))
    load_size: int = setting(256, "image folders, evaluation only: shorter side resized to this, centre "
                                  "square (training crops are cut from the whole image)", Role.FREE,
                             range=Range(1, 8192))
    skip_unreadable: bool = setting(
        False, "image folders: an image that cannot be read (truncated, empty, not an image, more pixels than "
               "PIL's decompression-bomb limit) is replaced in training by another image drawn from (seed, "
               "epoch, index), and left out of the monitor's k-NN; each is listed in metrics.jsonl. false: it "
               "stops the run (exit 2 naming the file; the last checkpoint is kept, so fixing the file and "
               "rerunning resumes). Free on resume: until the first unreadable image both settings train the same",
        Role.FREE)
    shard_streams: int = setting(40, "shards: reading streams per process; the batch order depends on it, not on "
                                    "data.num_workers, which must divide it (or be 0)", range=Range(1, 4096))
    shuffle_buffer: int = setting(1000, "shards: samples in each stream's shuffle buffer (1: the epoch's shard "
                                        "order alone)", range=Range(1, 10 ** 7))


@dataclass
class TrainConfig:
    epochs: int = setting(200, "epochs", Role.EXTEND_ONLY,
                          range=Range(0, 10 ** 6, note="0 saves the untrained network"))
    batch_size: int = setting(256, "per process", range=Range(2, WIDTH, note="per process"))
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
                                 "(loss read back, NaN check, time budget)", Role.FREE, range=Range(1, COUNT))
    checkpoint_every_steps: int = setting(0, "steps between checkpoints", Role.FREE,
                                          range=Range(0, COUNT, note="0: only at epoch ends"))
    max_steps: int = setting(0, "stop after this many steps in total", Role.FREE,
                             range=Range(0, COUNT, note="0: no limit"))
    time_budget_min: float = setting(0.0, "stop training (with a checkpoint) after this many minutes", Role.FREE,
                                     range=Range(0, note="0: no budget"))
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", Role.FREE)
    # auto: a process group only when WORLD_SIZE > 1; always: also for one process (its collectives
    # then really run, e.g. NCCL at world size 1 in scripts/gpu_check.sh)
    process_group: Literal["auto", "always"] = setting("auto", "always: a process group even for one "
                                                               "process", Role.FREE)


@dataclass
class MonitorConfig:
    knn_every: int = setting(1, "epochs between online k-NN checks", Role.FREE,
                             range=Range(0, 10 ** 6, note="0: never"))
    knn_at_start: bool = setting(False, "also measure the random-init network before training", Role.FREE)
    full_sets: bool = setting(True, "the start and last checks use the full sets (false: the subsets too, "
                                    "when `ssl-bf evaluate` follows anyway)", Role.FREE)
    knn_k: int = setting(20, "neighbours", Role.FREE, range=Range(1, 10_000))
    knn_temperature: float = setting(0.07, "vote temperature", Role.FREE,
                                     range=Range(0, low_open=True, note="the k-NN vote weights are exp(sim / T)"))
    bank_subset: Optional[int] = setting(None, "train images in the bank (null: the whole train split)",
                                         Role.FREE, range=Range(1, COUNT, note="or null for the whole train split"))
    query_subset: Optional[int] = setting(None, "test images scored (null: the whole test split)", Role.FREE,
                                          range=Range(1, COUNT, note="or null for the whole test split"))


@dataclass
class RunConfig:
    dir: str = setting("runs/default", "the run folder", Role.PRESENTATION)
    tensorboard: bool = setting(True, "also write TensorBoard events", Role.PRESENTATION)
    progress: bool = setting(True, "progress bar and epoch lines", Role.PRESENTATION)


@dataclass
class Config:
    method: str = setting("mocov2", "mocov2 (queue) or mocov3 (in-batch, symmetric); any registered method")
    seed: int = setting(0, "seed of every random number generator", range=Range(0, 2 ** 32 - 1))
    backbone: BackboneConfig = section(BackboneConfig)
    batchformer: BatchFormerConfig = section(BatchFormerConfig)
    moco: MocoConfig = section(MocoConfig)
    augment: AugmentConfig = section(AugmentConfig)
    data: DataConfig = section(DataConfig)
    train: TrainConfig = section(TrainConfig)
    monitor: MonitorConfig = section(MonitorConfig)
    run: RunConfig = section(RunConfig)
