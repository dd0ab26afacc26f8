"""The choices a checkpoint of another project cannot answer itself: a ViT's head count (no
weight shape holds it) and which of a DINO checkpoint's two networks to read. Torch-free, so the
command-line parsers can name them without importing the model code."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
