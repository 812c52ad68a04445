"""Non-maximum suppression with a fixed output size, so that it compiles for TPU slices: boxes are
taken in score order (ties by index), a box is dropped when its IoU with a kept, higher-scored box
exceeds the threshold (mmcv's `>`), and the first `max_out` kept are returned with a validity mask.

Two ways to the same answer, chosen per platform when lowered: `fixpoint` iterates the whole keep
vector against the (K, K) IoU matrix until it stops changing (dense matrix-vector work, what a TPU
runs well); `greedy` walks the sorted boxes one at a time, each step one row of the matrix (few
operations per step, the usual GPU loop). Figures, where measured: BENCHMARKS.md."""

import jax
import jax.numpy as jnp

from hcnet.detection import boxes as box_ops


def _sorted(scores, valid):
    order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
    return order, valid[order]


def _keep_fixpoint(overlap, valid):
    """Greedy NMS's keep vector as the fixpoint of keep = valid & no earlier kept box overlaps."""
    k = overlap.shape[0]
    earlier = jnp.tril(jnp.ones((k, k), bool), -1)  # [i, j]: j comes before i
    suppresses = overlap & earlier

    def step(state):
        keep, _ = state
        new = valid & ~jnp.any(suppresses & keep[None, :], axis=1)
        return new, jnp.any(new != keep)

    keep, _ = jax.lax.while_loop(lambda s: s[1], step, (valid, jnp.bool_(True)))
    return keep


def _keep_greedy(overlap, valid):
    """Greedy NMS's keep vector, box by box."""

    def step(i, keep):
        suppressed = jnp.any(overlap[i] & keep & (jnp.arange(keep.shape[0]) < i))
        return keep.at[i].set(valid[i] & ~suppressed)

    return jax.lax.fori_loop(0, valid.shape[0], step, jnp.zeros_like(valid))


def nms(boxes, scores, valid, *, iou_threshold: float, max_out: int, method: str = "auto"):
    """(indices (max_out,) into boxes, mask (max_out,)): the kept boxes, best first; padding rows
    have mask False (and index 0). boxes (N, 4), scores (N,), valid (N,) bool."""
    order, valid_sorted = _sorted(scores, valid)
    ordered = boxes[order]
    overlap = box_ops.iou(ordered, ordered) > iou_threshold
    if method == "auto":
        keep = jax.lax.platform_dependent(
            overlap,
            valid_sorted,
            tpu=_keep_fixpoint,
            default=_keep_greedy,
        )
    else:
        keep = {"fixpoint": _keep_fixpoint, "greedy": _keep_greedy}[method](overlap, valid_sorted)
    rank = jnp.where(keep, jnp.cumsum(keep) - 1, max_out)  # position among the kept
    slots = (
        jnp.full((max_out + 1,), order.shape[0], jnp.int32)
        .at[rank]
        .set(jnp.arange(order.shape[0], dtype=jnp.int32), mode="drop")[:max_out]
    )
    mask = slots < order.shape[0]
    return jnp.where(mask, order[jnp.minimum(slots, order.shape[0] - 1)], 0), mask


def batched_nms(boxes, scores, classes, valid, *, iou_threshold: float, max_out: int, **kw):
    """NMS within each class (mmcv's batched_nms): boxes of different classes are moved apart by
    class x (largest coordinate + 1) so that they never overlap."""
    offset = (jnp.max(jnp.where(valid[:, None], boxes, 0.0)) + 1.0) * classes.astype(boxes.dtype)
    return nms(
        boxes + offset[:, None], scores, valid, iou_threshold=iou_threshold, max_out=max_out, **kw
    )
