"""Mask R-CNN on HcNet's four stages, as mmdetection 2.11 builds Swin's `mask_rcnn_swin_fpn`: FPN
(256 channels, five levels, P6 by a stride-2 max-pool of P5), the RPN head (3x3 conv, 3 anchors a
point), RoIAlign 7x7 into the Shared2FC box head (1024, class-specific deltas with stds 0.1, 0.1,
0.2, 0.2), RoIAlign 14x14 into the FCN mask head (4 convs, 2x deconvolution, 28x28, a mask per
class; the layers are hcnet.detection.heads). Static shapes throughout: ground truth padded to a
fixed count, fixed proposal counts, NMS with a fixed output size (hcnet.detection.nms), sampling by
random top-k.

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
from hcnet.detection import assign, heads, losses, nms, roi_align
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


class MaskRCNN(nnx.Module):
    """HcNet (no classification head) + FPN + RPN + box head + mask head."""

    def __init__(self, backbone: model.HcNet, dims, settings: Settings, *, rngs: nnx.Rngs):
        s = settings
        self.backbone = backbone
        self.fpn = heads.FPN(dims, s.channels, rngs=rngs)
        self.rpn = heads.RPNHead(s.channels, len(anchor_ops.RATIOS), rngs=rngs)
        self.box_head = heads.BoxHead(s.channels, s.fc_channels, s.num_classes, rngs=rngs)
        self.mask_head = heads.MaskHead(s.channels, s.mask_convs, s.num_classes, rngs=rngs)
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
        return proposals, ok  # of stopped inputs: no gradient flows through them

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
        anchor_ok = anchor_ops.anchor_valid(image_hw, canvas)
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
        rpn_cls, rpn_box = losses.batch_shares(
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
        pooled = self._pool(levels, rois, 7)
        cls_logits, box_deltas = self.box_head(pooled.reshape(-1, *pooled.shape[2:]))
        r = rois.shape[1]
        rcnn_cls, rcnn_box = losses.batch_shares(
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
        mask_t = jax.vmap(roi_align.mask_targets)(gt_masks, gt_index[:, :m], mask_rois)
        mask = losses.mask_shares(
            mask_logits.reshape(b, m, 28, 28, -1), labels[:, :m], mask_t, mask_pos
        )
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


def from_spec(backbone: dict, decoder: dict, *, rngs: nnx.Rngs) -> MaskRCNN:
    """Mask R-CNN from a backbone spec (HcNet's arguments) and a decoder entry (`decoder_spec`)."""
    return MaskRCNN(
        model.from_spec(backbone, rngs=rngs),
        backbone["dims"],
        Settings.from_spec(decoder),
        rngs=rngs,
    )
