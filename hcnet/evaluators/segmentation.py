"""Semantic segmentation scored as mmsegmentation's IoUMetric defines it.

Per class c, over every pixel of the whole split whose label is not `ignore_index`: the intersection
(predicted c and labelled c), the prediction area, the label area, and the union (prediction + label -
intersection). Only then, per class, IoU = intersection / union and Acc = intersection / label area;
mIoU and mAcc are their means over the classes where they are defined (a class neither labelled nor
predicted anywhere is left out; one predicted but never labelled has IoU 0 and counts), and aAcc is
the summed intersections over the summed label areas. Sums are per batch on the devices (int32) and
over the split on the host (int64), so every pixel of every image counts once on any number of
devices and hosts; padding rows of the last batch are masked out.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = 255  # mmseg's ignore value (ADE20K's "other" after reduce_zero_label)


def areas(pred, label, mask, *, num_classes: int, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """int32 (4, classes): intersection, union, prediction and label areas of one batch.

    pred, label: int (B, H, W); mask: bool (B,), False for padding rows."""
    valid = (label != ignore_index) & mask[:, None, None]
    count = lambda x, keep: jnp.bincount(jnp.where(keep, x, 0).ravel(), weights=keep.ravel().astype(jnp.int32),
                                         length=num_classes).astype(jnp.int32)
    intersect = count(label, valid & (pred == label))
    area_pred, area_label = count(pred, valid), count(label, valid)
    return jnp.stack([intersect, area_pred + area_label - intersect, area_pred, area_label])


@dataclasses.dataclass
class Totals:
    """The split's per-class sums, accumulated on the host."""
    num_classes: int
    sums: np.ndarray = None  # int64 (4, classes)
    images: int = 0

    def add(self, batch_areas, images: int = 0) -> "Totals":
        a = np.asarray(batch_areas, np.int64)
        self.sums = a if self.sums is None else self.sums + a
        self.images += images
        return self

    def per_class(self) -> dict[str, np.ndarray]:
        """IoU and Acc per class, NaN where undefined (0 / 0)."""
        intersect, union, _, label = np.zeros((4, self.num_classes)) if self.sums is None else self.sums
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"IoU": intersect / union, "Acc": intersect / label}

    def metrics(self) -> dict[str, float]:
        per = self.per_class()
        intersect, label = (self.sums[0], self.sums[3]) if self.sums is not None else (0, 0)
        mean = lambda x: float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
        return {"mIoU": mean(per["IoU"]), "mAcc": mean(per["Acc"]),
                "aAcc": float(np.sum(intersect) / np.sum(label)) if np.sum(label) else float("nan"),
                "count": self.images}
