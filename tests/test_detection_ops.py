"""Mask R-CNN's parts against hand computations and plain NumPy statements of mmdet / mmcv: IoU and
box coding, anchors, NMS, RoIAlign, the assigner and sampler, the losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcnet.detection import anchors, assign, losses, nms, roi_align
from hcnet.detection import boxes as box_ops


def test_iou_by_hand():
    a = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    b = jnp.array([[5.0, 5.0, 15.0, 15.0], [10.0, 0.0, 20.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    # 25 shared of 175; touching edges share nothing; identical boxes 1
    np.testing.assert_allclose(np.asarray(box_ops.iou(a, b))[0], [25 / 175, 0.0, 1.0], rtol=1e-6)


def test_box_coding_by_hand_and_round_trip():
    proposal = jnp.array([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), size 20 x 40
    target = jnp.array([[12.0, 18.0, 52.0, 98.0]])  # centre (32, 58), size 40 x 80
    want = [12 / 20, 18 / 40, math.log(2), math.log(2)]
    np.testing.assert_allclose(np.asarray(box_ops.encode(proposal, target))[0], want, rtol=1e-6)
    stds = (0.1, 0.1, 0.2, 0.2)
    deltas = box_ops.encode(proposal, target, stds)
    np.testing.assert_allclose(np.asarray(deltas)[0], np.array(want) / stds, rtol=1e-6)
    np.testing.assert_allclose(box_ops.decode(proposal, deltas, stds), target, rtol=1e-6)
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 50, (64, 2))
    boxes = jnp.asarray(np.concatenate([p, p + rng.uniform(1, 50, (64, 2))], 1), jnp.float32)
    other = jnp.asarray(np.concatenate([p + 3, p + rng.uniform(5, 60, (64, 2))], 1), jnp.float32)
    again = box_ops.decode(boxes, box_ops.encode(boxes, other))
    np.testing.assert_allclose(again, other, rtol=1e-5, atol=1e-4)


def test_decoding_clips_the_scale_and_the_image():
    proposal = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    huge = jnp.array([[0.0, 0.0, 100.0, 100.0]])  # exp(100) would overflow
    out = np.asarray(box_ops.decode(proposal, huge, max_shape=(30.0, 40.0)))[0]
    # the log-scale clipped to log(1000 / 16): 625 wide about the centre, then the image's edges
    assert out.tolist() == [0.0, 0.0, 40.0, 30.0]
    np.testing.assert_allclose(
        np.asarray(box_ops.decode(proposal, huge))[0, 2] - 5.0, 5.0 * 1000 / 16, rtol=1e-5
    )


def test_anchors_count_positions_and_shapes():
    base = anchors.base_anchors(4)
    # ratio 0.5: h/w = 0.5 at area (4 * 8)^2; centred on the grid point (offset 0)
    w, h = 32 / math.sqrt(0.5) * 0.5, 32 * math.sqrt(0.5) * 0.5
    np.testing.assert_allclose(base[0], [-w, -h, w, h], rtol=1e-6)
    np.testing.assert_allclose(base[1], [-16, -16, 16, 16])
    levels = anchors.all_anchors(64, 96)
    assert [len(a) for a in levels] == [16 * 24 * 3, 8 * 12 * 3, 4 * 6 * 3, 2 * 3 * 3, 1 * 2 * 3]
    # row by row, then column, then ratio: the anchor at row 1, column 2, ratio 1
    np.testing.assert_allclose(levels[0][(1 * 24 + 2) * 3 + 1], [8 - 16, 4 - 16, 8 + 16, 4 + 16])
    # a 50 x 70 image in the 64 x 96 canvas: anchors of grid points beyond ceil(50 / s) rows and
    # ceil(70 / s) columns do not count
    valid = np.asarray(anchors.anchor_valid(jnp.array([[50.0, 70.0]]), (64, 96)))[0]
    flags = np.split(valid, np.cumsum([len(a) for a in levels])[:-1])
    assert (
        flags[0].reshape(16, 24, 3)[:13, :18].all() and not flags[0].reshape(16, 24, 3)[13:].any()
    )
    assert flags[2].reshape(4, 6, 3)[:, :5].all() and not flags[2].reshape(4, 6, 3)[:, 5:].any()


def brute_force_nms(boxes, scores, valid, thr, max_out):
    order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
    kept = []
    for i in order:
        if all(iou_np(boxes[i], boxes[j]) <= thr for j in kept):
            kept.append(i)
    return kept[:max_out]


def iou_np(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


def random_boxes(rng, n):
    xy = rng.uniform(0, 60, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(4, 30, (n, 2))], 1).astype(np.float32)


@pytest.mark.parametrize("method", ["fixpoint", "greedy", "auto"])
def test_nms_equals_brute_force(method):
    """Random crowded boxes, scores with ties (rounded to 0.1), invalid rows, outputs both shorter
    and longer than what is kept."""
    rng = np.random.default_rng(1)
    fn = jax.jit(nms.nms, static_argnames=("iou_threshold", "max_out", "method"))
    for trial in range(12):
        n = 40
        boxes = random_boxes(rng, n)
        scores = np.round(rng.uniform(0, 1, n), 1).astype(np.float32)
        valid = rng.uniform(size=n) > 0.2
        thr = (0.3, 0.5, 0.7)[trial % 3]
        for max_out in (5, 60):
            want = brute_force_nms(boxes, scores, valid, thr, max_out)
            idx, mask = fn(boxes, scores, valid, iou_threshold=thr, max_out=max_out, method=method)
            idx, mask = np.asarray(idx), np.asarray(mask)
            assert idx[mask].tolist() == want
            assert mask.tolist() == [True] * len(want) + [False] * (max_out - len(want))


def test_batched_nms_suppresses_within_a_class_only():
    boxes = jnp.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10.0]])
    scores = jnp.array([0.9, 0.8, 0.7])
    classes = jnp.array([0, 0, 1])
    idx, mask = nms.batched_nms(
        boxes, scores, classes, jnp.ones(3, bool), iou_threshold=0.5, max_out=3
    )
    assert np.asarray(idx)[np.asarray(mask)].tolist() == [0, 2]
    rng = np.random.default_rng(2)
    boxes, scores = random_boxes(rng, 50), rng.uniform(size=50).astype(np.float32)
    classes = rng.integers(0, 3, 50)
    idx, mask = nms.batched_nms(
        boxes, scores, classes, jnp.ones(50, bool), iou_threshold=0.5, max_out=50
    )
    got = sorted(np.asarray(idx)[np.asarray(mask)].tolist())
    want = sorted(
        i for c in range(3) for i in brute_force_nms(boxes, scores, classes == c, 0.5, 50)
    )
    assert got == want


def mmcv_roi_align(feat, roi, out, scale, ratio):
    """mmcv's roi_align_forward (aligned, average) for one RoI, loop for loop. feat (H, W, C)."""
    height, width, _ = feat.shape
    x1, y1, x2, y2 = (v * scale - 0.5 for v in roi)
    bin_w, bin_h = (x2 - x1) / out, (y2 - y1) / out
    result = np.zeros((out, out, feat.shape[2]))
    for ph in range(out):
        for pw in range(out):
            total = 0.0
            for iy in range(ratio):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / ratio
                for ix in range(ratio):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / ratio
                    total = total + bilinear(feat, y, x, height, width)
            result[ph, pw] = total / (ratio * ratio)
    return result


def bilinear(feat, y, x, height, width):
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * feat[y_low, x_low]
        + hy * lx * feat[y_low, x_high]
        + ly * hx * feat[y_high, x_low]
        + ly * lx * feat[y_high, x_high]
    )


def test_roi_align_equals_mmcv_statement():
    """Inside, across and beyond the map's edges, tiny and large RoIs, two sampling ratios."""
    rng = np.random.default_rng(3)
    feat = rng.standard_normal((12, 9, 5)).astype(np.float32)
    rois = np.array(
        [
            [3.0, 5.0, 20.0, 30.0],
            [-10.0, -6.0, 8.0, 5.0],
            [60.0, 80.0, 90.0, 100.0],  # beyond the map: zeros
            [15.0, 15.0, 15.5, 16.0],
            [0.0, 0.0, 36.0, 48.0],
        ],
        np.float32,
    )
    for ratio in (1, 2):
        got = np.asarray(
            roi_align.roi_align(feat, rois, output_size=7, spatial_scale=0.25, sampling_ratio=ratio)
        )
        want = np.stack([mmcv_roi_align(feat, r, 7, 0.25, ratio) for r in rois])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.asarray(got)[2].any()


def test_rois_go_to_mmdet_levels():
    side = np.array([10, 111, 112, 223, 224, 447, 448, 2000], np.float32)
    rois = np.stack([np.zeros_like(side), np.zeros_like(side), side, side], 1)
    assert np.asarray(roi_align.roi_levels(rois)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_max_iou_assigner_thresholds_and_low_quality_matches():
    gt = jnp.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0.0]])
    gt_valid = jnp.array([True, True, False])
    boxes = jnp.array(
        [
            [0, 0, 10, 10],  # IoU 1 with gt 0: positive
            [0, 0, 10, 5],  # 0.5 with gt 0: between the thresholds, ignored
            [50, 50, 60, 60],  # no overlap: negative
            [20, 20, 26, 26],  # 0.36 with gt 1, its best: a low-quality match
            [0, 0, 10, 10],  # invalid row
        ],
        jnp.float32,
    )
    valid = jnp.array([True, True, True, True, False])
    assigned, _ = assign.assign(assign.RPN_ASSIGNER, boxes, valid, gt, gt_valid)
    assert np.asarray(assigned).tolist() == [1, -1, 0, 2, -1]
    plain = assign.Assigner(pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3, low_quality=False)
    assigned, _ = assign.assign(plain, boxes, valid, gt, gt_valid)
    assert np.asarray(assigned).tolist() == [1, -1, 0, -1, -1]
    # every box tied at a ground truth's best takes it; with no ground truth all are negative
    tied = jnp.array([[0, 0, 10, 20], [0, 0, 20, 10]], jnp.float32)
    assigned, _ = assign.assign(assign.RPN_ASSIGNER, tied, jnp.ones(2, bool), gt, gt_valid)
    assert np.asarray(assigned).tolist() == [1, 1]
    # a box that is the best of two ground truths goes to the later one, as mmdet's loop leaves it
    twice = jnp.array([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    assigned, _ = assign.assign(
        assign.RPN_ASSIGNER, twice[:1], jnp.ones(1, bool), twice, jnp.ones(2, bool)
    )
    assert np.asarray(assigned).tolist() == [2]
    assigned, _ = assign.assign(assign.RPN_ASSIGNER, boxes, valid, gt, jnp.zeros(3, bool))
    assert np.asarray(assigned).tolist() == [0, 0, 0, 0, -1]


def test_sampler_takes_up_to_its_share_of_positives_and_fills_with_negatives():
    assigned = jnp.array([1] * 10 + [0] * 300 + [-1] * 50)
    idx, is_pos, mask = assign.sample(jax.random.key(0), assigned, num=256, pos_fraction=0.5)
    idx, is_pos, mask = map(np.asarray, (idx, is_pos, mask))
    assert mask.all() and is_pos.sum() == 10 and len(set(idx.tolist())) == 256
    assert (np.asarray(assigned)[idx[is_pos]] > 0).all()
    assert (np.asarray(assigned)[idx[~is_pos]] == 0).all()
    many = jnp.array([2] * 400 + [0] * 20)
    idx, is_pos, mask = map(
        np.asarray, assign.sample(jax.random.key(1), many, num=512, pos_fraction=0.25)
    )
    assert is_pos.sum() == 128 and mask.sum() == 148  # 128 positives, all 20 negatives
    assert mask[:148].all() and not mask[148:].any()
    # different keys draw different positives
    other = np.asarray(assign.sample(jax.random.key(2), many, num=512, pos_fraction=0.25)[0])
    assert set(other[:128]) != set(idx[:128])


def test_losses_by_hand():
    # RPN: two sampled anchors (one positive), one not sampled
    logits = jnp.array([0.0, 2.0, 5.0])
    labels = jnp.array([1, 0, 1])
    sampled = jnp.array([True, True, False])
    positive = jnp.array([True, False, False])
    deltas = jnp.array([[1.0, 0, 0, 0], [9, 9, 9, 9], [9, 9, 9, 9]])
    targets = jnp.array([[0.5, 0, 0, -1.0], [0, 0, 0, 0], [0, 0, 0, 0]])
    cls, box = losses.rpn_losses(logits, deltas, labels, targets, sampled, positive)
    want_cls = (math.log(2) + math.log(1 + math.exp(2))) / 2
    np.testing.assert_allclose([cls, box], [want_cls, 1.5 / 2], rtol=1e-6)
    # RoI head: background is the last class; L1 of the labelled class only
    class_logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    deltas = jnp.zeros((2, 2, 4)).at[0, 0].set(1.0).at[0, 1].set(7.0)
    targets = jnp.zeros((2, 4))
    sampled, positive = jnp.array([True, True]), jnp.array([True, False])
    cls, box = losses.rcnn_losses(class_logits, deltas, labels, targets, sampled, positive)
    p0 = math.exp(2) / (math.exp(2) + 2)
    np.testing.assert_allclose([cls, box], [(-math.log(p0) + math.log(3)) / 2, 4.0 / 2], rtol=1e-6)
    # mask: the positive's own class channel, mean over its pixels
    mask_logits = jnp.zeros((2, 2, 2, 3)).at[0, :, :, 1].set(jnp.array([[0.0, 0], [0, 3]]))
    mask_targets = jnp.array([[[1, 0], [0, 1]], [[1, 1], [1, 1]]])
    got = losses.mask_loss(mask_logits, jnp.array([1, 0]), mask_targets, jnp.array([True, False]))
    want = (3 * math.log(2) + math.log(1 + math.exp(-3))) / 4
    np.testing.assert_allclose(got, want, rtol=1e-6)
