"""Instance data for detection, as random-access sources of `Instances`: COCO 2017 (or any dataset
in COCO's format) read from its own files with pycocotools, and `hcnet_instances` (collages of real
photographs with exact instance masks, made in memory: the detection quickstart's and the tests'
data). mmdetection's host pipeline is hcnet.data.det_transforms.

TFDS's `coco/2017` carries boxes but no masks, so COCO is read from the files a user downloads once
(`train2017/`, `val2017/`, `annotations/instances_{train,val}2017.json`), as mmdetection reads them:
crowd regions are not trained on (COCOeval ignores them), boxes under a pixel wide or high are
dropped, and training leaves out images without an object and those under 32 pixels a side.
"""

import contextlib
import dataclasses
import io
import json

import numpy as np
from PIL import Image

from hcnet import paths
from hcnet.errors import DataError

INSTANCES = "hcnet_instances"
INSTANCE_SIZES = {"train": 400, "val": 80}
INSTANCE_SHAPE = (96, 128)  # (h, w)
INSTANCE_CLASSES = ("cat", "coffee", "astronaut", "rocket")  # the photographs objects are cut from


@dataclasses.dataclass
class Instances:
    """One image and its objects: boxes (n, 4) x1 y1 x2 y2, labels (n,) 0-based, masks (n, h, w)
    uint8 at the image's size."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    image_id: int


def instance_collage(index: int, split: str, photos: list[np.ndarray]) -> Instances:
    """Collage `index`: a background cut from one photograph (class ignored) and one to four
    ellipses or rectangles cut from the other three, each an object of its photograph's class;
    later objects hide earlier ones, and an object left under 24 visible pixels is dropped.
    Deterministic in (split, index)."""
    rng = np.random.default_rng([index, 0 if split == "train" else 1, 7])
    h, w = INSTANCE_SHAPE

    def cut(c):
        oy = rng.integers(0, photos[c].shape[0] - h + 1)
        ox = rng.integers(0, photos[c].shape[1] - w + 1)
        return photos[c][oy : oy + h, ox : ox + w]

    background = int(rng.integers(len(photos)))
    image = cut(background).copy()
    yy, xx = np.mgrid[:h, :w]
    masks, labels = [], []
    for _ in range(rng.integers(1, 5)):
        c = int(rng.choice([p for p in range(len(photos)) if p != background]))
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        ry, rx = rng.uniform(0.12, 0.35) * h, rng.uniform(0.12, 0.35) * w
        inside = (
            (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
            if rng.integers(2)
            else ((np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx))
        )
        image[inside] = cut(c)[inside]
        masks = [m & ~inside for m in masks]
        masks.append(inside)
        labels.append(c)
    keep = [i for i, m in enumerate(masks) if m.sum() >= 24]
    masks = np.stack([masks[i] for i in keep]).astype(np.uint8)
    return Instances(
        image,
        np.stack([mask_box(m) for m in masks]).astype(np.float32),
        np.asarray([labels[i] for i in keep], np.int32),
        masks,
        index + 1,
    )


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The tight box (x1, y1, x2, y2) of a mask's pixels, edges on pixel borders."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


class CollageSource:
    """`hcnet_instances` split as a random-access source of Instances, made on demand."""

    def __init__(self, split: str):
        from hcnet.data.segmentation import collage_photos

        if split not in INSTANCE_SIZES:
            raise DataError(f"{INSTANCES} has splits {', '.join(INSTANCE_SIZES)}; got {split!r}")
        self.name, self.split, self.photos = INSTANCES, split, collage_photos(160)
        self.class_names = list(INSTANCE_CLASSES)

    def __len__(self):
        return INSTANCE_SIZES[self.split]

    def __getitem__(self, i: int) -> Instances:
        return instance_collage(int(i), self.split, self.photos)

    def ground_truth(self):
        """The split's ground truth as a pycocotools COCO (category ids 1..4), for COCOeval."""
        return coco_index(self.coco_dict())

    def image(self, i: int) -> tuple[np.ndarray, int]:
        """(image, its id): what evaluation reads."""
        item = self[i]
        return item.image, item.image_id

    def coco_dict(self) -> dict:
        """The split's ground truth in COCO's format (category ids 1..4)."""
        from pycocotools import mask as mask_utils

        images, annotations = [], []
        for i in range(len(self)):
            item = self[i]
            h, w = item.image.shape[:2]
            images.append({"id": item.image_id, "height": h, "width": w})
            for box, label, mask in zip(item.boxes, item.labels, item.masks):
                rle = mask_utils.encode(np.asfortranarray(mask))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": item.image_id,
                        "category_id": int(label) + 1,
                        "bbox": [
                            float(box[0]),
                            float(box[1]),
                            float(box[2] - box[0]),
                            float(box[3] - box[1]),
                        ],
                        "area": float(mask.sum()),
                        "segmentation": rle,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def category_ids(self) -> list[int]:
        return list(range(1, len(self.class_names) + 1))


class CocoSource:
    """A COCO-format split read with pycocotools: ROOT/annotations/instances_<split>.json and the
    images in ROOT/<split>/ (local or gs://). Training splits drop images without objects and under
    32 pixels a side, as mmdet's CocoDataset does."""

    def __init__(self, root, split: str, *, training: bool):
        root = paths.path(root)
        annotations = root / "annotations" / f"instances_{split}.json"
        if not annotations.exists():
            raise DataError(
                f"{annotations} is missing: COCO needs ROOT/annotations/instances_{split}.json and "
                f"ROOT/{split}/ (download annotations_trainval2017.zip and {split}.zip from "
                "cocodataset.org into ROOT and unzip them)"
            )
        self.name, self.root, self.split = root.name, root, split
        self.coco = coco_index(json.loads(annotations.read_text()))
        cats = sorted(self.coco.getCatIds())
        self.class_names = [self.coco.cats[c]["name"] for c in cats]
        self._label = {c: i for i, c in enumerate(cats)}
        self._cats = cats
        ids = sorted(self.coco.getImgIds())
        if training:
            with_objects = {a["image_id"] for a in self.coco.dataset["annotations"]}
            ids = [
                i
                for i in ids
                if i in with_objects
                and min(self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]) >= 32
            ]
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def category_ids(self) -> list[int]:
        return list(self._cats)

    def image_id(self, i: int) -> int:
        return int(self.ids[int(i)])

    def ground_truth(self):
        return self.coco

    def image(self, i: int) -> tuple[np.ndarray, int]:
        """(image, its id), without decoding its masks: what evaluation reads."""
        image_id = self.ids[int(i)]
        data = (self.root / self.split / self.coco.imgs[image_id]["file_name"]).read_bytes()
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), image_id

    def __getitem__(self, i: int) -> Instances:
        image, image_id = self.image(i)
        boxes, labels, masks = [], [], []
        for a in self.coco.imgToAnns[image_id]:
            x, y, w, h = a["bbox"]
            if a.get("iscrowd", 0) or w < 1 or h < 1 or a.get("area", 1) <= 0:
                continue
            if a["category_id"] not in self._label:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self._label[a["category_id"]])
            masks.append(self.coco.annToMask(a))
        shape = image.shape[:2]
        return Instances(
            image,
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int32),
            np.stack(masks).astype(np.uint8) if masks else np.zeros((0, *shape), np.uint8),
            image_id,
        )


def coco_index(dataset: dict):
    """A pycocotools COCO of an annotations dict (instances_*.json's content), indexed quietly:
    pycocotools prints while it indexes, and the run's console stays the run's."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def open_source(name: str, split: str, data_dir=None, *, training: bool):
    """`hcnet_instances`, or a COCO-format dataset in data_dir (its split folder and annotation
    file)."""
    if name == INSTANCES:
        return CollageSource(split)
    if not data_dir:
        raise DataError(
            f"dataset.name={name!r}: a COCO-format dataset needs dataset.data_dir (the folder with "
            f"annotations/ and {split}/), or use {INSTANCES!r}"
        )
    return CocoSource(data_dir, split, training=training)
