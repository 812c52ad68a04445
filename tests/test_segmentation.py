"""Semantic segmentation: the mIoU / mAcc / aAcc of mmsegmentation, checked by hand."""
import math

import jax
import numpy as np
import pytest

from hcnet import sharding
from hcnet.evaluators import segmentation

I = segmentation.IGNORE_INDEX
# image 0: one ignored pixel (its prediction, 2, must not count), classes 0-2 labelled, 3 absent from both;
# image 1: class 3 predicted once and never labelled (its IoU is 0 and counts, its Acc is undefined);
# image 2: padding (mask False), which must count for nothing
LABEL = np.array([[[0, 0, 1], [I, 2, 1]], [[0, 0, 0], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]], np.int32)
PRED = np.array([[[0, 1, 1], [2, 2, 0]], [[0, 0, 0], [0, 0, 3]], [[0, 0, 0], [0, 0, 0]]], np.int32)
MASK = np.array([True, True, False])


def test_miou_macc_aacc_by_hand():
    # image 0 alone: intersections (1, 1, 1, 0), unions (3, 3, 1, 0): IoU 1/3, 1/3, 1 and class 3 left out
    first = segmentation.Totals(4).add(segmentation.areas(PRED[:1], LABEL[:1], MASK[:1], num_classes=4), 1)
    assert first.metrics() == pytest.approx({"mIoU": 5 / 9, "mAcc": 2 / 3, "aAcc": 3 / 5, "count": 1})
    # both: intersections (6, 1, 1, 0), predicted (7, 2, 1, 1), labelled (8, 2, 1, 0), unions (9, 3, 1, 1)
    both = segmentation.Totals(4).add(segmentation.areas(PRED, LABEL, MASK, num_classes=4), 2)
    np.testing.assert_array_equal(both.sums, [[6, 1, 1, 0], [9, 3, 1, 1], [7, 2, 1, 1], [8, 2, 1, 0]])
    assert both.metrics() == pytest.approx({"mIoU": (6 / 9 + 1 / 3 + 1 + 0) / 4, "mAcc": (6 / 8 + 1 / 2 + 1) / 3,
                                            "aAcc": 8 / 11, "count": 2})
    per = both.per_class()
    assert per["IoU"][3] == 0 and math.isnan(per["Acc"][3])
    # the split's sums, not the mean of per-image scores: image by image the mean IoU would differ
    one_by_one = segmentation.Totals(4)
    for i in range(3):
        one_by_one.add(segmentation.areas(PRED[i:i + 1], LABEL[i:i + 1], MASK[i:i + 1], num_classes=4), int(MASK[i]))
    assert one_by_one.metrics() == both.metrics()


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_every_pixel_counts_once_on_any_number_of_devices(devices):
    rng = np.random.default_rng(devices)
    label = rng.integers(0, 6, (8, 16, 12)).astype(np.int32)
    label[rng.random(label.shape) < 0.2] = I
    pred = np.where(rng.random(label.shape) < 0.6, label % 5, rng.integers(0, 5, label.shape)).astype(np.int32)
    mask = np.arange(8) < 7  # the last row is padding
    mesh = sharding.make_mesh(devices=jax.devices()[:devices])
    put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh))
    step = jax.jit(lambda p, l, m: segmentation.areas(p, l, m, num_classes=6), out_shardings=sharding.replicated(mesh))
    got = segmentation.Totals(6).add(step(put(pred), put(label), put(mask)), 7)
    # mmseg's own statement, per image in numpy: drop ignored pixels, histogram the rest
    want = np.zeros((4, 6), np.int64)
    for p, l in zip(pred[:7], label[:7]):
        keep = l != I
        p, l = p[keep], l[keep]
        inter = np.histogram(p[p == l], bins=6, range=(0, 6))[0]
        ap, al = np.histogram(p, bins=6, range=(0, 6))[0], np.histogram(l, bins=6, range=(0, 6))[0]
        want += np.stack([inter, ap + al - inter, ap, al])
    np.testing.assert_array_equal(got.sums, want)
    assert got.metrics()["aAcc"] == want[0].sum() / want[3].sum()
