"""The class indices 0..C-1 the vote and the probes work with, mapped from dataset labels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..validate import check_labels


@dataclass
class LabelSpace:
    """Maps dataset labels (integers >= 0, any values) to class indices 0..C-1, defined by the train set."""

    values: Optional[np.ndarray]  # sorted label values (None: labels already are 0..C-1)
    num_classes: int

    @classmethod
    def from_train(cls, train_labels, num_classes: Optional[int] = None,
                   source: str = "train labels") -> "LabelSpace":
        """With `num_classes`, labels must lie in [0, num_classes); else the distinct train labels.
        The labels pass `validate.check_labels` (a ValueError naming `source` and the row)."""
        labels = check_labels(train_labels, source, num_classes=num_classes)
        if num_classes is not None:
            return cls(None, int(num_classes))
        values = np.unique(labels)
        if values[0] == 0 and values[-1] == values.size - 1:
            return cls(None, int(values.size))  # already contiguous 0..C-1
        return cls(values, int(values.size))

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Dataset labels -> class indices; labels unknown to the train set become -1."""
        labels = np.asarray(labels).astype(np.int64, copy=False)
        if self.values is None:
            return np.where((labels >= 0) & (labels < self.num_classes), labels, -1)
        pos = np.clip(np.searchsorted(self.values, labels), 0, self.values.size - 1)
        return np.where(self.values[pos] == labels, pos, -1)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> dataset labels; -1 (no class) stays -1."""
        if self.values is None:
            return indices
        return np.where(indices >= 0, self.values[np.clip(indices, 0, None)], -1)
