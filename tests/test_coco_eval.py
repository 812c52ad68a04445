"""COCO metrics from pycocotools on hand-made detections: perfect ones score 1, a box below the IoU
threshold is a miss, a crowd region takes no false positive."""

import numpy as np

from hcnet.data.instances import coco_index
from hcnet.detection import coco_eval


def dataset():
    """Two 40 x 60 images: a cat (a box and its mask) in the first, two dogs in the second, and a
    crowd of dogs in the second that no detection need find."""
    images = [{"id": 1, "width": 60, "height": 40}, {"id": 2, "width": 60, "height": 40}]
    categories = [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]

    def box_annotation(i, image, category, x, y, w, h, crowd=0):
        polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
        return {
            "id": i,
            "image_id": image,
            "category_id": category,
            "bbox": [x, y, w, h],
            "area": w * h,
            "segmentation": [polygon],
            "iscrowd": crowd,
        }

    annotations = [
        box_annotation(1, 1, 17, 10, 5, 20, 20),
        box_annotation(2, 2, 18, 0, 0, 30, 30),
        box_annotation(3, 2, 18, 35, 10, 20, 25),
        box_annotation(4, 2, 18, 40, 0, 20, 8, crowd=1),
    ]
    for a in annotations[3:]:  # crowds are RLE in COCO
        from pycocotools import mask as mask_utils

        rle = mask_utils.frPyObjects(a["segmentation"], 40, 60)
        a["segmentation"] = mask_utils.merge(rle)
        a["segmentation"]["counts"] = a["segmentation"]["counts"].decode("ascii")
    return {"images": images, "categories": categories, "annotations": annotations}


def box_mask(x1, y1, x2, y2):
    m = np.zeros((40, 60), bool)
    m[int(y1) : int(y2), int(x1) : int(x2)] = True
    return m


def detect(boxes_by_image):
    out = []
    for image, rows in boxes_by_image.items():
        boxes = np.array([r[:4] for r in rows], np.float32)
        labels = [r[4] for r in rows]
        scores = [r[5] for r in rows]
        masks = np.stack([box_mask(*r[:4]) for r in rows])
        out += coco_eval.results(image, boxes, scores, labels, [17, 18], masks)
    return out


PERFECT = {1: [(10, 5, 30, 25, 0, 0.9)], 2: [(0, 0, 30, 30, 1, 0.8), (35, 10, 55, 35, 1, 0.7)]}


def test_perfect_detections_score_one():
    coco = coco_index(dataset())
    metrics = coco_eval.evaluate(coco, detect(PERFECT))
    for kind in ("bbox", "segm"):
        assert metrics[f"{kind}/AP"] == 1.0 and metrics[f"{kind}/AP50"] == 1.0
        assert metrics[f"{kind}/AP75"] == 1.0 and metrics[f"{kind}/APs"] == 1.0
        # no medium or large object here: COCOeval's -1, no score at all (never 0)
        assert metrics[f"{kind}/APm"] is None and metrics[f"{kind}/APl"] is None


def test_a_metric_without_data_is_a_dash_in_tables_and_absent_from_the_logs(tmp_path):
    from hcnet import monitor

    metrics = coco_eval.evaluate(coco_index(dataset()), detect(PERFECT))
    assert monitor.shown(metrics["bbox/APl"]) == "-" and monitor.shown(0.0) == "0.0000"
    writer = monitor.create_writer(tmp_path)
    writer.write_scalars(4, {"eval/bbox_AP": metrics["bbox/AP"], "eval/bbox_APl": None})
    writer.close()
    [row] = monitor.read_metrics(tmp_path)
    assert row == {"step": 4, "eval/bbox_AP": 1.0}


def test_a_box_below_the_iou_threshold_is_a_miss():
    """The second dog found at IoU 0.6: a hit at 0.5, a miss at 0.75."""
    shifted = dict(PERFECT)
    shifted[2] = [(0, 0, 30, 30, 1, 0.8), (35, 10, 55, 25, 1, 0.7)]  # 20 x 15 of 20 x 25
    metrics = coco_eval.evaluate(coco_index(dataset()), detect(shifted), ("bbox",))
    assert metrics["bbox/AP50"] == 1.0
    assert metrics["bbox/AP75"] < 0.76 and metrics["bbox/AP"] < 1.0


def test_a_detection_on_a_crowd_is_no_false_positive():
    crowd = {**PERFECT, 2: PERFECT[2] + [(40, 0, 60, 8, 1, 0.95)]}
    wrong_class = {**PERFECT, 2: PERFECT[2] + [(5, 5, 25, 25, 0, 0.95)]}  # a cat where none is
    coco = coco_index(dataset())
    assert coco_eval.evaluate(coco, detect(crowd), ("bbox",))["bbox/AP"] == 1.0
    assert coco_eval.evaluate(coco, detect(wrong_class), ("bbox",))["bbox/AP"] < 1.0


def test_results_are_cocos_format_and_nothing_found_scores_zero():
    rows = detect({1: [(10, 5, 30, 25, 0, 0.9)]})
    assert rows[0]["bbox"] == [10.0, 5.0, 20.0, 20.0] and rows[0]["category_id"] == 17
    assert set(rows[0]["segmentation"]) == {"size", "counts"}
    metrics = coco_eval.evaluate(coco_index(dataset()), [])
    assert metrics["bbox/AP"] == 0.0 and metrics["segm/AP"] == 0.0
