"""mmdet 2.x's MaxIoUAssigner and RandomSampler with static shapes: ground truth padded to a fixed
count (a `gt_valid` mask), and sampling as a random top-k over the candidates.

Assignment of N boxes to G ground-truth boxes: -1 ignored, 0 negative, i + 1 the i-th ground
truth. RPN: positive at IoU >= 0.7, negative below 0.3, and each ground truth also takes the boxes
of its best IoU when that is at least 0.3 (low-quality matches, every box tied at the best). RoI
head: 0.5 / 0.5 / 0.5."""

import dataclasses

import jax
import jax.numpy as jnp

from hcnet.detection import boxes as box_ops


@dataclasses.dataclass(frozen=True)
class Assigner:
    pos_iou: float
    neg_iou: float
    min_pos_iou: float
    low_quality: bool = True


RPN_ASSIGNER = Assigner(pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3)
RCNN_ASSIGNER = Assigner(pos_iou=0.5, neg_iou=0.5, min_pos_iou=0.5)


def assign(assigner: Assigner, bboxes, valid, gt_boxes, gt_valid):
    """(assigned (N,) int32: -1 ignored, 0 negative, i + 1 ground truth i; max IoU (N,)) of boxes
    (N, 4) with mask `valid` against ground truth (G, 4) with mask `gt_valid`."""
    overlaps = jnp.where(gt_valid[:, None], box_ops.iou(gt_boxes, bboxes), 0.0)  # (G, N)
    max_overlap = overlaps.max(axis=0)
    argmax = overlaps.argmax(axis=0)
    assigned = jnp.full(max_overlap.shape, -1, jnp.int32)
    assigned = jnp.where((max_overlap >= 0) & (max_overlap < assigner.neg_iou), 0, assigned)
    assigned = jnp.where(max_overlap >= assigner.pos_iou, argmax + 1, assigned)
    if assigner.low_quality:
        gt_max = overlaps.max(axis=1)  # (G,)
        best = (
            (overlaps == gt_max[:, None])
            & (gt_max >= assigner.min_pos_iou)[:, None]
            & gt_valid[:, None]
        )
        # mmdet loops over the ground truth in order, so the last one tied at a box wins it
        last = jnp.max(jnp.where(best, jnp.arange(1, best.shape[0] + 1)[:, None], 0), axis=0)
        assigned = jnp.where(last > 0, last, assigned)
    return jnp.where(valid, assigned, -1), max_overlap


def sample(key, assigned, *, num: int, pos_fraction: float):
    """RandomSampler as a random top-k: (indices (num,), is_positive (num,), mask (num,)). Up to
    int(num * pos_fraction) positives, the rest negatives; rows beyond the candidates are masked."""
    k_pos, k_neg = jax.random.split(key)
    n = assigned.shape[0]
    num_pos = int(num * pos_fraction)
    positive, negative = assigned > 0, assigned == 0

    def top(k, candidates, count):
        keys = jnp.where(candidates, jax.random.uniform(k, (n,)), -1.0)
        values, idx = jax.lax.top_k(keys, count)
        return idx, values >= 0

    pos_idx, pos_ok = top(k_pos, positive, min(num_pos, n))
    taken = jnp.sum(pos_ok)
    neg_idx, neg_ok = top(k_neg, negative, min(num, n))
    # the negatives fill what the positives left: num - taken of them
    neg_ok = neg_ok & (jnp.arange(neg_idx.shape[0]) < num - taken)
    idx = jnp.concatenate([pos_idx, neg_idx])
    is_pos = jnp.concatenate([pos_ok, jnp.zeros_like(neg_ok)])
    ok = jnp.concatenate([pos_ok, neg_ok])
    # stable: the chosen first (positives, then negatives), padding last; num rows in all
    order = jnp.argsort(~ok, stable=True)[:num]
    return idx[order], is_pos[order], ok[order]
