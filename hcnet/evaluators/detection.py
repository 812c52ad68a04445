"""Box and mask AP as COCO's API computes them (hcnet.detection.coco_eval) over a whole split: each
image resized to the test scale on the canvas, detected, its boxes and masks put back at its
original size, every image counted once on any number of devices and processes (each process takes
every process_count-th image; the detections are gathered before COCOeval runs)."""

import json

import jax
import numpy as np
from jax.experimental import multihost_utils

from hcnet import sharding
from hcnet.detection import coco_eval, postprocess

METRICS = tuple(f"{kind}_{m}" for kind in ("bbox", "segm") for m in coco_eval.METRICS)


def _gather(rows: list) -> list:
    """Every process's list, concatenated in process order (JSON bytes padded to the longest)."""
    if jax.process_count() == 1:
        return rows
    data = np.frombuffer(json.dumps(rows).encode(), np.uint8)
    size = int(np.max(multihost_utils.process_allgather(np.array([data.size]))))
    padded = np.zeros(size, np.uint8)
    padded[: data.size] = data
    everyone = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1, size)
    return [r for part in everyone for r in json.loads(part.tobytes().rstrip(b"\0") or b"[]")]


class Evaluator:
    """`predict(weights, images, image_hw)` (hcnet.nets.predict_fn of a Mask R-CNN) over `source`
    (hcnet.data.instances), scored against `ground_truth` (a pycocotools COCO) by COCOeval."""

    metrics = (*METRICS, "count")
    headline = ("bbox_AP", "segm_AP")
    results = None  # the last evaluation's detections, every process's, in COCO's results format

    def __init__(self, name, source, predict, *, mesh, transform, batch_size: int, ground_truth):
        self.name, self.source, self.transform = name, source, transform
        self.ground_truth = ground_truth
        if jax.process_count() > 1:  # images differ between processes: each runs on its own devices
            mesh = sharding.make_mesh(devices=jax.local_devices())
        self._mesh = mesh
        self._batch = max(mesh.size, batch_size // jax.process_count() // mesh.size * mesh.size)
        self._fn = jax.jit(
            predict,
            in_shardings=(
                sharding.replicated(mesh),
                sharding.batch_sharding(mesh),
                sharding.batch_sharding(mesh),
            ),
            out_shardings=sharding.replicated(mesh),
        )
        self.settings = {"test_scale": list(transform.scales[0]), "canvas": list(transform.canvas)}
        self.columns = {"scale": "x".join(str(s) for s in transform.scales[0])}
        self.tag = "x".join(str(s) for s in transform.scales[0])  # eval.py's report file

    def detections(self, weights) -> tuple[list[int], list[dict]]:
        """This process's share of the split: (image ids, detections in COCO's results format)."""
        if jax.process_count() > 1:
            weights = jax.device_put(
                multihost_utils.process_allgather(weights, tiled=True),
                sharding.replicated(self._mesh),
            )
        batch = sharding.batch_sharding(self._mesh)
        mine = list(range(jax.process_index(), len(self.source), jax.process_count()))
        category_ids = self.source.category_ids()
        rows, scored = [], []
        for start in range(0, len(mine), self._batch):
            ids = mine[start : start + self._batch]
            read = [self.source.image(i) for i in ids]  # (image, its id): no masks decoded
            examples = [self.transform.place(image, image_id) for image, image_id in read]
            examples += [examples[-1]] * (self._batch - len(examples))  # padding, dropped below
            images = np.stack([e["image"] for e in examples])
            hw = np.stack([e["image_hw"] for e in examples]).astype(np.float32)
            out = sharding.to_host(
                self._fn(weights, jax.device_put(images, batch), jax.device_put(hw, batch))
            )
            for i, (image, image_id) in enumerate(read):
                h, w = image.shape[:2]
                boxes, scores, labels, masks = postprocess.to_image(
                    out, i, examples[i]["scale"], h, w
                )
                rows += coco_eval.results(image_id, boxes, scores, labels, category_ids, masks)
                scored.append(int(image_id))
        return scored, rows

    def __call__(self, weights) -> dict[str, float]:
        ids, rows = self.detections(weights)
        ids, rows = _gather(ids), _gather(rows)
        self.results = rows  # what eval.py writes for COCO's test server
        metrics = coco_eval.evaluate(self.ground_truth, rows)
        out = {k.replace("/", "_"): v for k, v in metrics.items()}
        out["count"] = float(len(set(ids)))  # images scored, each once
        return out
