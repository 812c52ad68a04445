"""Semantic segmentation scored as mmsegmentation's IoUMetric defines it.

Per class c, over every pixel of the whole split whose label is not `ignore_index`: the intersection
(predicted c and labelled c), the prediction area, the label area, and the union (prediction + label
- intersection). Only then, per class, IoU = intersection / union and Acc = intersection / label
  area;
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
from jax.experimental import multihost_utils

from hcnet import seg_inference, sharding
from hcnet.data import transforms

IGNORE_INDEX = 255  # mmseg's ignore value (ADE20K's "other" after reduce_zero_label)


def areas(pred, label, mask, *, num_classes: int, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """int32 (4, classes): intersection, union, prediction and label areas of one batch.

    pred, label: int (B, H, W); mask: bool (B,), False for padding rows."""
    valid = (label != ignore_index) & mask[:, None, None]

    def count(x, keep):
        return jnp.bincount(
            jnp.where(keep, x, 0).ravel(),
            weights=keep.ravel().astype(jnp.int32),
            length=num_classes,
        ).astype(jnp.int32)

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
        intersect, union, _, label = (
            np.zeros((4, self.num_classes)) if self.sums is None else self.sums
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"IoU": intersect / union, "Acc": intersect / label}

    def metrics(self) -> dict[str, float]:
        per = self.per_class()
        intersect, label = (self.sums[0], self.sums[3]) if self.sums is not None else (0, 0)

        def mean(x):
            return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")

        return {
            "mIoU": mean(per["IoU"]),
            "mAcc": mean(per["Acc"]),
            "aAcc": float(np.sum(intersect) / np.sum(label)) if np.sum(label) else float("nan"),
            "count": self.images,
        }


def host_areas(
    pred: np.ndarray, label: np.ndarray, *, num_classes: int, ignore_index: int = IGNORE_INDEX
):
    """`areas` of one image on the host: int64 (4, classes)."""
    valid = label != ignore_index
    p, lab = pred[valid].astype(np.int64), label[valid].astype(np.int64)

    def count(x):
        return np.bincount(x, minlength=num_classes)[:num_classes]

    intersect, area_pred, area_label = count(lab[p == lab]), count(p), count(lab)
    return np.stack([intersect, area_pred + area_label - intersect, area_pred, area_label])


class Evaluator:
    """mIoU, mAcc and aAcc of a segmentation split (hcnet.data.sources.SegmentationSource) as
    mmseg's test does it: each image at its own size, rescaled to fit `scale` (times each ratio),
    inferred whole or by sliding window (hcnet.seg_inference), probabilities back at the image's
    size, argmax, scored against the image's own labels. The windows of an image are one batch over
    the mesh's devices; with several processes each scores every process_count-th image on its own
    devices (the weights gathered to each process once per evaluation) and the sums are added over
    processes.

    `predict(weights, images)` (hcnet.nets.predict_fn): the network's logits at its input's size,
    uint8 (N, h, w, 3) -> (N, h, w, C). `tag` names the test in eval.py's report file."""

    metrics = ("mIoU", "mAcc", "aAcc", "count")
    headline = ("mIoU", "mAcc")

    def __init__(
        self,
        name: str,
        source,
        predict,
        *,
        mesh,
        mode: str = "slide",
        crop=(512, 512),
        stride=(341, 341),
        scale=(2048, 512),
        ratios=(1.0,),
        flip: bool = False,
        tag: str = "",
    ):
        self.name, self.source, self.tag = name, source, tag or mode
        if jax.process_count() > 1:  # images differ between processes: each runs on its own devices
            mesh = sharding.make_mesh(devices=jax.local_devices())
        self._mesh = mesh
        self._fn = jax.jit(
            predict,
            in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
            out_shardings=sharding.replicated(mesh),
        )
        self._devices = mesh.size
        self._options = dict(
            mode=mode,
            crop=tuple(crop),
            stride=tuple(stride),
            scale=tuple(scale),
            ratios=tuple(ratios),
            flip=flip,
        )
        self.settings = {
            "mode": mode,
            "crop": list(crop),
            "stride": list(stride),
            "scale": list(scale),
            "ratios": list(ratios),
            "flip": flip,
        }
        self.columns = {
            "mode": mode,
            "ratios": ",".join(f"{r:g}" for r in ratios),
            "flip": str(flip),
        }

    def totals(self, weights) -> Totals:
        totals = Totals(self.source.num_classes)
        if jax.process_count() > 1:
            weights = jax.device_put(
                multihost_utils.process_allgather(weights, tiled=True),
                sharding.replicated(self._mesh),
            )
        batch = sharding.batch_sharding(
            self._mesh
        )  # this process's devices: put there, not passed as numpy

        def logits(x):
            return sharding.to_host(self._fn(weights, jax.device_put(x, batch)))

        for i in range(jax.process_index(), len(self.source), jax.process_count()):
            record = self.source.records[i]
            image = np.asarray(transforms.rgb(transforms.open_image(record["image"])))
            p = seg_inference.probability_map(logits, image, pad_to=self._devices, **self._options)
            totals.add(
                host_areas(
                    p.argmax(-1),
                    self.source.mask(record),
                    num_classes=self.source.num_classes,
                    ignore_index=self.source.ignore_index,
                ),
                1,
            )
        if jax.process_count() > 1:
            sums = (
                totals.sums
                if totals.sums is not None
                else np.zeros((4, totals.num_classes), np.int64)
            )
            summed = multihost_utils.process_allgather(
                np.concatenate([sums.ravel(), [totals.images]])
            )
            flat = np.asarray(summed).reshape(jax.process_count(), -1).sum(0)
            totals.sums, totals.images = flat[:-1].reshape(4, -1), int(flat[-1])
        return totals

    def __call__(self, weights) -> dict[str, float]:
        return self.totals(weights).metrics()
