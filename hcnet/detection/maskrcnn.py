"""Mask R-CNN on HcNet's four stages, as mmdetection 2.11 builds Swin's `mask_rcnn_swin_fpn`: FPN
(256 channels, five levels, P6 by a stride-2 max-pool of P5), the RPN head (3x3 conv, 3 anchors a
point), RoIAlign 7x7 into the Shared2FC box head (1024, class-specific deltas with stds 0.1, 0.1,
0.2, 0.2), RoIAlign 14x14 into the FCN mask head (4 convs, 2x deconvolution, 28x28, a mask per
class). Static shapes throughout: ground truth padded to a fixed count, fixed proposal counts, NMS
with a fixed output size (hcnet.detection.nms), sampling by random top-k.

Images arrive on a padded canvas with their own (height, width) (`image_hw`); the padding is 0 after
normalisation, as mmdet pads after Normalize. Box arithmetic, the last layers and the losses run in
float32 whatever the backbone's dtype.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hcnet import model
from hcnet.detection import anchors as anchor_ops
from hcnet.detection import assign, losses, nms, roi_align
from hcnet.detection import boxes as box_ops

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The heads' sizes and the train and test settings of Swin's config (mmdet 2.11)."""

    num_classes: int = 80
    channels: int = 256
    fc_channels: int = 1024
    mask_convs: int = 4
    rpn_train_pre: int = 2000  # proposals per level before NMS, training
    rpn_test_pre: int = 1000  # and testing
    rpn_post: int = 1000  # proposals kept after NMS
    rpn_nms: float = 0.7
    rpn_samples: int = 256
    rpn_pos_fraction: float = 0.5
    roi_samples: int = 512
    roi_pos_fraction: float = 0.25
    score_threshold: float = 0.05
    rcnn_nms: float = 0.5
    rcnn_pre: int = 2000  # the best class scores NMS looks at (a static count; see below)
    max_detections: int = 100
    sampling_ratio: int = 2  # RoIAlign's points per bin each way (Swin's config: 0, adaptive)

    @classmethod
    def from_spec(cls, decoder: dict) -> "Settings":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in decoder.items() if k in fields})


def decoder_spec(num_classes: int, **overrides) -> dict:
    """model.json's `decoder` entry of a Mask R-CNN."""
    return {
        **dataclasses.asdict(Settings(num_classes=num_classes, **overrides)),
        "kind": "mask_rcnn",
    }


def _conv(cin, cout, k, rngs, *, init=None, stride=1):
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=stride,
        padding="SAME" if k > 1 else "VALID",
        kernel_init=init or nnx.initializers.xavier_uniform(),
        bias_init=nnx.initializers.zeros,
        rngs=rngs,
    )


_KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


class FPN(nnx.Module):
    """Lateral 1x1 convolutions, top-down nearest upsampling to each finer map's size, 3x3 output
    convolutions (xavier-uniform, as mmdet's FPN), and P6 = max-pool(P5, 1, stride 2)."""

    def __init__(self, dims, channels: int, *, rngs: nnx.Rngs):
        self.lateral = nnx.List([_conv(d, channels, 1, rngs) for d in dims])
        self.output = nnx.List([_conv(channels, channels, 3, rngs) for _ in dims])

    def __call__(self, feats):
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            h, w = laterals[i - 1].shape[1:3]
            laterals[i - 1] = laterals[i - 1] + _nearest(laterals[i], h, w)
        outs = [conv(x) for conv, x in zip(self.output, laterals)]
        return outs + [outs[-1][:, ::2, ::2]]


def _nearest(x, h, w):
    """torch's nearest interpolation to (h, w): source index floor(i * in / out) (for an exact
    doubling, each row and column twice)."""
    if x.shape[1] * 2 == h and x.shape[2] * 2 == w:
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = (np.arange(h) * x.shape[1] // h).astype(np.int32)
    cols = (np.arange(w) * x.shape[2] // w).astype(np.int32)
    return x[:, rows][:, :, cols]


class RPNHead(nnx.Module):
    """3x3 conv + ReLU, then per point 3 objectness logits and 3 x 4 deltas (normal 0.01 init)."""

    def __init__(self, channels: int, num_anchors: int, *, rngs: nnx.Rngs):
        normal = nnx.initializers.normal(0.01)
        self.conv = _conv(channels, channels, 3, rngs, init=normal)
        self.cls = _conv(channels, num_anchors, 1, rngs, init=normal)
        self.reg = _conv(channels, num_anchors * 4, 1, rngs, init=normal)

    def __call__(self, x):
        h = jax.nn.relu(self.conv(x))
        b = x.shape[0]
        return self.cls(h).reshape(b, -1), self.reg(h).reshape(b, -1, 4)


class BoxHead(nnx.Module):
    """Shared2FCBBoxHead: two 1024 fully connected layers (xavier), then class scores (background
    last; normal 0.01) and class-specific deltas (normal 0.001)."""

    def __init__(self, channels: int, fc: int, num_classes: int, *, rngs: nnx.Rngs):
        def dense(i, o, init):
            return nnx.Linear(i, o, kernel_init=init, bias_init=nnx.initializers.zeros, rngs=rngs)

        xavier = nnx.initializers.xavier_uniform()
        self.fc1 = dense(channels * 49, fc, xavier)
        self.fc2 = dense(fc, fc, xavier)
        self.cls = dense(fc, num_classes + 1, nnx.initializers.normal(0.01))
        self.reg = dense(fc, num_classes * 4, nnx.initializers.normal(0.001))
        self.num_classes = num_classes

    def __call__(self, pooled):
        h = jax.nn.relu(self.fc1(pooled.reshape(pooled.shape[0], -1)))
        h = jax.nn.relu(self.fc2(h)).astype(jnp.float32)
        deltas = self.reg(h).reshape(h.shape[0], self.num_classes, 4)
        return self.cls(h), deltas


class MaskHead(nnx.Module):
    """FCNMaskHead: 4 3x3 convolutions + ReLU, a 2x transposed convolution + ReLU, and a 1x1
    convolution to one mask logit per class (kaiming-normal, fan out)."""

    def __init__(self, channels: int, convs: int, num_classes: int, *, rngs: nnx.Rngs):
        self.convs = nnx.List(
            [_conv(channels, channels, 3, rngs, init=_KAIMING_FAN_OUT) for _ in range(convs)]
        )
        self.up = nnx.ConvTranspose(
            channels,
            channels,
            (2, 2),
            strides=2,
            kernel_init=_KAIMING_FAN_OUT,
            bias_init=nnx.initializers.zeros,
            rngs=rngs,
        )
        self.logits = _conv(channels, num_classes, 1, rngs, init=_KAIMING_FAN_OUT)

    def __call__(self, pooled):
        h = pooled
        for conv in self.convs:
            h = jax.nn.relu(conv(h))
        return self.logits(jax.nn.relu(self.up(h))).astype(jnp.float32)


def anchor_valid(image_hw, canvas):
    """(B, N) bool: mmdet's valid flags of every level's anchors for each image's own size."""
    out = []
    for (h, w), stride in zip(anchor_ops.level_sizes(*canvas), anchor_ops.STRIDES):
        vh = jnp.minimum(jnp.ceil(image_hw[:, 0] / stride), h)
        vw = jnp.minimum(jnp.ceil(image_hw[:, 1] / stride), w)
        inside = (jnp.arange(h)[None, :, None] < vh[:, None, None]) & (
            jnp.arange(w)[None, None, :] < vw[:, None, None]
        )
        out.append(jnp.repeat(inside.reshape(inside.shape[0], -1), len(anchor_ops.RATIOS), axis=1))
    return jnp.concatenate(out, axis=1)


def mask_targets(gt_masks, gt_index, rois, size: int = 28, ratio: int = 2):
    """(R, size, size) float {0, 1}: ground-truth mask gt_index[r] (of gt_masks (G, H, W)) inside
    RoI r, by aligned RoIAlign at full resolution, then >= 0.5 (mmdet's
    BitmapMasks.crop_and_resize). Gathers only the sampled pixels."""
    g, height, width = gt_masks.shape
    r = rois.shape[0]
    pooled = roi_align._pooled(
        gt_masks.reshape(-1, 1),
        rois,
        scale=jnp.ones((r,), jnp.float32),
        height=jnp.full((r,), height, jnp.int32),
        width=jnp.full((r,), width, jnp.int32),
        offset=gt_index.astype(jnp.int32) * (height * width),
        output_size=size,
        sampling_ratio=ratio,
    )
    return (pooled[..., 0] >= 0.5).astype(jnp.float32)


class MaskRCNN(nnx.Module):
    """HcNet (no classification head) + FPN + RPN + box head + mask head."""

    def __init__(self, backbone: model.HcNet, dims, settings: Settings, *, rngs: nnx.Rngs):
        s = settings
        self.backbone = backbone
        self.fpn = FPN(dims, s.channels, rngs=rngs)
        self.rpn = RPNHead(s.channels, len(anchor_ops.RATIOS), rngs=rngs)
        self.box_head = BoxHead(s.channels, s.fc_channels, s.num_classes, rngs=rngs)
        self.mask_head = MaskHead(s.channels, s.mask_convs, s.num_classes, rngs=rngs)
        self.settings = s

    # --- shared ---------------------------------------------------------------------------------

    def _pyramid(self, x, image_hw):
        h, w = x.shape[1:3]
        inside = (jnp.arange(h)[None, :, None] < image_hw[:, 0, None, None]) & (
            jnp.arange(w)[None, None, :] < image_hw[:, 1, None, None]
        )
        x = jnp.where(inside[..., None], x, 0.0)  # padding is 0 after normalisation
        levels = self.fpn(self.backbone.features(x))
        logits, deltas = zip(*(self.rpn(p) for p in levels))
        return levels, logits, deltas

    def _proposals(self, logits, deltas, image_hw, canvas, pre: int):
        """(B, rpn_post, 4) proposals and their mask: per level the pre best anchors, decoded and
        clipped, NMS within the level, then the best rpn_post over the levels (mmdet's batched_nms
        by level id)."""
        s = self.settings
        grids = anchor_ops.all_anchors(*canvas)

        def one(image_logits, image_deltas, hw):
            boxes, scores, valid = [], [], []
            for grid, lg, dl in zip(grids, image_logits, image_deltas):
                k = min(pre, grid.shape[0])
                score, idx = jax.lax.top_k(jax.nn.sigmoid(lg.astype(jnp.float32)), k)
                decoded = box_ops.decode(
                    jnp.asarray(grid)[idx], dl[idx].astype(jnp.float32), max_shape=(hw[0], hw[1])
                )
                keep, ok = nms.nms(
                    decoded,
                    score,
                    jnp.ones(k, bool),
                    iou_threshold=s.rpn_nms,
                    max_out=min(s.rpn_post, k),
                )
                boxes.append(decoded[keep])
                scores.append(jnp.where(ok, score[keep], -1.0))
                valid.append(ok)
            boxes, scores = jnp.concatenate(boxes), jnp.concatenate(scores)
            valid = jnp.concatenate(valid)
            n = min(s.rpn_post, scores.shape[0])
            best, idx = jax.lax.top_k(scores, n)
            return boxes[idx], valid[idx] & (best >= 0)

        proposals, ok = jax.vmap(one)(
            [jax.lax.stop_gradient(lg) for lg in logits],
            [jax.lax.stop_gradient(d) for d in deltas],
            image_hw,
        )
        return jax.lax.stop_gradient(proposals), ok

    def _pool(self, levels, rois, size: int):
        """(B, R, size, size, C) from P2-P5 by each RoI's level."""

        def one(*args):
            *feats, r = args
            return roi_align.multilevel_roi_align(
                feats, r, output_size=size, sampling_ratio=self.settings.sampling_ratio
            )

        return jax.vmap(one)(*levels[:4], rois)

    # --- training -------------------------------------------------------------------------------

    def losses(self, x, image_hw, gt_boxes, gt_labels, gt_masks, gt_valid, keys):
        """(B,) per-image shares of the total loss, and its five terms: each term is normalised
        over the whole batch as mmdet normalises it over a GPU's batch, so the shares' mean is the
        batch's loss. gt_boxes (B, G, 4), gt_labels (B, G), gt_masks (B, G, H, W) at the canvas
        size, gt_valid (B, G), keys (B,): each image's sampling key."""
        s = self.settings
        b, canvas = x.shape[0], x.shape[1:3]
        levels, logits, deltas = self._pyramid(x, image_hw)
        k_rpn, k_roi = jax.vmap(jax.random.split, out_axes=1)(keys)
        anchors = jnp.asarray(np.concatenate(anchor_ops.all_anchors(*canvas)))
        anchor_ok = anchor_valid(image_hw, canvas)
        logits_all, deltas_all = jnp.concatenate(logits, 1), jnp.concatenate(deltas, 1)

        def rpn_targets(k, ok, boxes, valid):
            assigned, _ = assign.assign(assign.RPN_ASSIGNER, anchors, ok, boxes, valid)
            idx, is_pos, taken = assign.sample(
                k, assigned, num=s.rpn_samples, pos_fraction=s.rpn_pos_fraction
            )
            gt = boxes[jnp.maximum(assigned[idx] - 1, 0)]
            return idx, is_pos, taken, box_ops.encode(anchors[idx], gt)

        idx, is_pos, taken, rpn_deltas = jax.vmap(rpn_targets)(k_rpn, anchor_ok, gt_boxes, gt_valid)
        pick = jax.vmap(lambda a, i: a[i])
        rpn_cls, rpn_box = _shares(
            losses.rpn_losses,
            pick(logits_all, idx),
            pick(deltas_all, idx),
            is_pos,
            rpn_deltas,
            taken,
            is_pos,
        )

        proposals, proposal_ok = self._proposals(logits, deltas, image_hw, canvas, s.rpn_train_pre)

        def roi_targets(k, props, props_ok, boxes, labels, valid):
            cands = jnp.concatenate([boxes, props])  # ground truth added as proposals, first
            cands_ok = jnp.concatenate([valid, props_ok])
            assigned, _ = assign.assign(assign.RCNN_ASSIGNER, cands, cands_ok, boxes, valid)
            idx, pos, ok = assign.sample(
                k, assigned, num=s.roi_samples, pos_fraction=s.roi_pos_fraction
            )
            gt = jnp.maximum(assigned[idx] - 1, 0)
            rois = cands[idx]
            label = jnp.where(pos, labels[gt], s.num_classes)
            return rois, pos, ok, label, gt, box_ops.encode(rois, boxes[gt], RCNN_STDS)

        rois, pos, ok, labels, gt_index, targets = jax.vmap(roi_targets)(
            k_roi, proposals, proposal_ok, gt_boxes, gt_labels, gt_valid
        )
        rois = jax.lax.stop_gradient(rois)
        pooled = self._pool(levels, rois, 7)
        cls_logits, box_deltas = self.box_head(pooled.reshape(-1, *pooled.shape[2:]))
        r = rois.shape[1]
        rcnn_cls, rcnn_box = _shares(
            losses.rcnn_losses,
            cls_logits.reshape(b, r, -1),
            box_deltas.reshape(b, r, *box_deltas.shape[1:]),
            labels,
            targets,
            ok,
            pos,
        )

        m = int(s.roi_samples * s.roi_pos_fraction)  # the sampler puts the positives first
        mask_rois, mask_pos = rois[:, :m], pos[:, :m]
        mask_logits = self.mask_head(self._pool(levels, mask_rois, 14).reshape(b * m, 14, 14, -1))
        mask_t = jax.vmap(mask_targets)(gt_masks, gt_index[:, :m], mask_rois)
        mask = _mask_shares(mask_logits.reshape(b, m, 28, 28, -1), labels[:, :m], mask_t, mask_pos)
        terms = {
            "rpn_cls": rpn_cls,
            "rpn_box": rpn_box,
            "rcnn_cls": rcnn_cls,
            "rcnn_box": rcnn_box,
            "mask": mask,
        }
        return sum(terms.values()), terms

    # --- inference ------------------------------------------------------------------------------

    def detect(self, x, image_hw):
        """Per image max_detections rows: boxes (x1, y1, x2, y2 on the canvas), scores, labels,
        valid, and each detection's 28x28 mask probabilities of its class (pasted into the image
        on the host: hcnet.detection.postprocess)."""
        s = self.settings
        canvas = x.shape[1:3]
        levels, logits, deltas = self._pyramid(x, image_hw)
        proposals, proposal_ok = self._proposals(logits, deltas, image_hw, canvas, s.rpn_test_pre)
        b, p = proposals.shape[:2]
        cls_logits, box_deltas = self.box_head(
            self._pool(levels, proposals, 7).reshape(b * p, 7, 7, -1)
        )
        scores = jax.nn.softmax(cls_logits, -1)[:, : s.num_classes].reshape(b, p, s.num_classes)
        boxes = box_ops.decode(
            jnp.repeat(proposals.reshape(b * p, 1, 4), s.num_classes, axis=1),
            box_deltas,
            RCNN_STDS,
            max_shape=(
                jnp.repeat(image_hw[:, 0], p)[:, None],
                jnp.repeat(image_hw[:, 1], p)[:, None],
            ),
        ).reshape(b, p, s.num_classes, 4)

        def select(image_boxes, image_scores, ok):
            flat_scores = jnp.where(
                ok[:, None] & (image_scores > s.score_threshold), image_scores, -1.0
            ).reshape(-1)
            n = min(s.rcnn_pre, flat_scores.shape[0])
            best, idx = jax.lax.top_k(flat_scores, n)
            cand = image_boxes.reshape(-1, 4)[idx]
            label = idx % s.num_classes
            keep, kept = nms.batched_nms(
                cand, best, label, best >= 0, iou_threshold=s.rcnn_nms, max_out=s.max_detections
            )
            return cand[keep], jnp.where(kept, best[keep], 0.0), label[keep], kept

        det_boxes, det_scores, det_labels, det_ok = jax.vmap(select)(boxes, scores, proposal_ok)
        d = det_boxes.shape[1]
        mask_logits = self.mask_head(self._pool(levels, det_boxes, 14).reshape(b * d, 14, 14, -1))
        mask_logits = mask_logits.reshape(b, d, 28, 28, -1)
        mine = jnp.take_along_axis(mask_logits, det_labels[:, :, None, None, None], axis=-1)
        return {
            "boxes": det_boxes,
            "scores": det_scores,
            "labels": det_labels,
            "valid": det_ok,
            "masks": jax.nn.sigmoid(mine[..., 0]),
        }

    def __call__(self, x, image_hw=None):
        if image_hw is None:
            image_hw = jnp.broadcast_to(jnp.asarray(x.shape[1:3], jnp.float32), (x.shape[0], 2))
        return self.detect(x, image_hw.astype(jnp.float32))


def _shares(loss_fn, *args):
    """Per-image shares (B,) of loss_fn's two terms, each normalised by the batch's sampled count
    (args[4]): image b's share is B x its sum / that count, so the mean over images is loss_fn of
    the whole batch."""
    b = args[0].shape[0]
    count = jnp.maximum(jnp.sum(args[4]), 1.0)

    def sums(*rows):  # loss_fn's terms times its own count: the image's sums
        n = jnp.maximum(jnp.sum(rows[4]), 1.0)
        return tuple(term * n for term in loss_fn(*rows))

    return tuple(b * term / count for term in jax.vmap(sums)(*args))


def _mask_shares(logits, labels, targets, positive):
    """Per-image shares of the mask loss, normalised by the batch's positive RoIs' pixels."""
    b = logits.shape[0]
    count = jnp.maximum(jnp.sum(positive), 1.0)

    def sums(lg, lb, t, p):
        return losses.mask_loss(lg, lb, t, p) * jnp.maximum(jnp.sum(p), 1.0)

    return b * jax.vmap(sums)(logits, labels, targets, positive) / count


def from_spec(backbone: dict, decoder: dict, *, rngs: nnx.Rngs) -> MaskRCNN:
    """Mask R-CNN from a backbone spec (HcNet's arguments) and a decoder entry (`decoder_spec`)."""
    return MaskRCNN(
        model.from_spec(backbone, rngs=rngs),
        backbone["dims"],
        Settings.from_spec(decoder),
        rngs=rngs,
    )
