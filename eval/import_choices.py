"""The choices a checkpoint of another project cannot answer itself: a ViT's head count (no
weight shape holds it) and which of a DINO checkpoint's two networks to read. Torch-free, so the
command-line parsers can name them without importing the model code."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from ssl_bf.cli_args import positive_int

DINO_NETWORKS = ("teacher", "student")  # which of a DINO checkpoint's two networks is evaluated


@dataclass(frozen=True)
class ImportChoices:
    """What a checkpoint of another project cannot say itself (the `--vit-heads` and `--dino-network`
    options); None = the format's convention."""
    vit_heads: Optional[int] = None  # a ViT's attention head count: no weight shape holds it
    dino_network: Optional[str] = None  # DINO: "teacher" (its convention) or "student"

    def given(self) -> list[str]:
        """The options set, as their command-line flags."""
        return [flag for flag, value in (("--vit-heads", self.vit_heads), ("--dino-network", self.dino_network))
                if value is not None]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ImportChoices":
        return cls(vit_heads=args.vit_heads, dino_network=args.dino_network)


def add_import_options(p: argparse.ArgumentParser) -> None:
    """`--vit-heads` and `--dino-network` on a command that reads checkpoints of other projects."""
    p.add_argument("--vit-heads", type=positive_int, metavar="N",
                   help="ViT checkpoints of other projects: the attention head count, which no weight shape "
                   "holds (default: the format's convention; `ssl-bf inspect` shows it and why)")
    p.add_argument("--dino-network", choices=DINO_NETWORKS,
                   help="DINO training checkpoints ({student, teacher, ...}): the network to read "
                   "(default: teacher, DINO's convention)")
