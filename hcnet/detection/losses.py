"""Mask R-CNN's losses as mmdet 2.x normalises them, in float32. Each takes per-element terms and
the masks of what counts, and returns a scalar for the batch."""

import jax
import jax.numpy as jnp
import optax


def rpn_losses(logits, deltas, labels, targets, sampled, positive):
    """RPN over the batch's anchors (flattened): sigmoid cross-entropy over the sampled anchors and
    L1 over the positive ones' deltas, both divided by the number sampled (mmdet's avg_factor
    num_total_pos + num_total_neg)."""
    count = jnp.maximum(jnp.sum(sampled), 1.0)
    ce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))
    l1 = jnp.abs(deltas.astype(jnp.float32) - targets).sum(-1)
    return jnp.sum(jnp.where(sampled, ce, 0.0)) / count, jnp.sum(
        jnp.where(positive, l1, 0.0)
    ) / count


def rcnn_losses(class_logits, deltas, labels, targets, sampled, positive):
    """The box head over the sampled RoIs: softmax cross-entropy (background = the last class) over
    every sampled RoI, and L1 of the ground-truth class's deltas over the positives, both divided by
    the number of sampled RoIs (mmdet's avg_factor). deltas (R, classes, 4)."""
    count = jnp.maximum(jnp.sum(sampled), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(class_logits.astype(jnp.float32), labels)
    mine = jnp.take_along_axis(
        deltas.astype(jnp.float32), jnp.clip(labels, 0, deltas.shape[1] - 1)[:, None, None], axis=1
    )[:, 0]
    l1 = jnp.abs(mine - targets).sum(-1)
    return jnp.sum(jnp.where(sampled, ce, 0.0)) / count, jnp.sum(
        jnp.where(positive, l1, 0.0)
    ) / count


def mask_loss(mask_logits, labels, targets, positive):
    """Per-pixel sigmoid cross-entropy of each positive RoI's own class channel, averaged over the
    positives' pixels (mmdet's mask_cross_entropy, reduction mean). mask_logits (R, S, S, classes),
    targets (R, S, S) in {0, 1}."""
    mine = jnp.take_along_axis(
        mask_logits.astype(jnp.float32), labels[:, None, None, None], axis=-1
    )
    ce = optax.sigmoid_binary_cross_entropy(mine[..., 0], targets.astype(jnp.float32))
    pixels = jnp.maximum(jnp.sum(positive) * ce.shape[1] * ce.shape[2], 1.0)
    return jnp.sum(jnp.where(positive[:, None, None], ce, 0.0)) / pixels


def batch_shares(loss_fn, *args):
    """Per-image shares (B,) of loss_fn's two terms, each normalised by the batch's sampled count
    (args[4]): image b's share is B x its sum / that count, so the mean over images is loss_fn of
    the whole batch."""
    b = args[0].shape[0]
    count = jnp.maximum(jnp.sum(args[4]), 1.0)

    def sums(*rows):  # loss_fn's terms times its own count: the image's sums
        n = jnp.maximum(jnp.sum(rows[4]), 1.0)
        return tuple(term * n for term in loss_fn(*rows))

    return tuple(b * term / count for term in jax.vmap(sums)(*args))


def mask_shares(logits, labels, targets, positive):
    """Per-image shares of the mask loss, normalised by the batch's positive RoIs' pixels."""
    b = logits.shape[0]
    count = jnp.maximum(jnp.sum(positive), 1.0)

    def sums(lg, lb, t, p):
        return mask_loss(lg, lb, t, p) * jnp.maximum(jnp.sum(p), 1.0)

    return b * jax.vmap(sums)(logits, labels, targets, positive) / count
