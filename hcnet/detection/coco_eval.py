"""Box and mask AP with COCO's own API (pycocotools' COCOeval), over a whole split: detections as
COCO's results format (what the COCO test server takes) and the twelve numbers COCOeval prints,
of which the six the paper reports (AP, AP50, AP75, APs, APm, APl) are returned by name. The
ground truth is a pycocotools COCO (hcnet.data.instances.coco_index makes one of a dict)."""

import contextlib
import io
import json

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def results(image_id: int, boxes, scores, labels, category_ids, masks=None) -> list[dict]:
    """One image's detections in COCO's results format: boxes (N, 4) x1 y1 x2 y2 in the original
    image's pixels, labels indexing `category_ids`, masks (N, H, W) bool at the image's size."""
    out = []
    for i, (box, score, label) in enumerate(zip(np.asarray(boxes), scores, labels)):
        x1, y1, x2, y2 = (float(v) for v in box)
        row = {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(label)]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score),
        }
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(np.asarray(masks[i], np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            row["segmentation"] = rle
        out.append(row)
    return out


def none_if_negative(value) -> float | None:
    return float(value) if value >= 0 else None


def evaluate(coco: COCO, detections: list[dict], iou_types=("bbox", "segm")) -> dict:
    """{"bbox/AP": ..., "segm/AP50": ...} over every image of `coco`, by COCOeval; no detection at
    all scores 0, and a metric without ground truth (COCOeval's -1: no large objects, say) is None,
    shown as "-" and left out of the logs, never 0."""
    metrics = {}
    for iou_type in iou_types:
        if not detections:
            metrics.update({f"{iou_type}/{m}": 0.0 for m in METRICS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            found = coco.loadRes(json.loads(json.dumps(detections)))
            evaluator = COCOeval(coco, found, iou_type)
            evaluator.params.imgIds = sorted(coco.getImgIds())
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = evaluator.stats[: len(METRICS)]  # -1: no such objects
        metrics.update({f"{iou_type}/{m}": none_if_negative(v) for m, v in zip(METRICS, stats)})
    return metrics
