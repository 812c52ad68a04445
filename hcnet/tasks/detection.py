"""Object detection and instance segmentation: Mask R-CNN on HcNet (hcnet.detection.maskrcnn),
trained as mmdetection 2.11 trains Swin's `mask_rcnn_swin_fpn` models (the paper's Table 3),
evaluated by COCO's own API (hcnet.evaluators.detection).

    host     decode, mmdet's keep-ratio resize to one of config.detection.scales, flip, pad to the
             canvas; boxes and masks move with the image (hcnet.data.instances)
    device   Normalize (ImageNet mean and std), the padding 0 after it; the network samples its
             anchors and RoIs with per-image keys drawn from the step's
    loss     RPN + box head + mask head, each normalised over the global batch as mmdet normalises
             it over one GPU's batch (the one difference: mmdet averages per GPU of 2 images)
    eval     each image at the test scale, boxes and masks put back at its size, COCOeval bbox and
             segm over the whole split
"""

import jax
import jax.numpy as jnp

from hcnet import config as config_lib
from hcnet import model
from hcnet.checks import require
from hcnet.data import augment, det_transforms, instances, pipeline
from hcnet.detection import maskrcnn
from hcnet.errors import ConfigError
from hcnet.evaluators import detection as det_eval

HEAD_FIELDS = (
    "channels",
    "fc_channels",
    "mask_convs",
    "rpn_train_pre",
    "rpn_test_pre",
    "rpn_post",
    "rpn_samples",
    "roi_samples",
    "rcnn_pre",
    "max_detections",
    "sampling_ratio",
)


def validate(c) -> None:
    """config.detection's fields (for task="detection")."""
    d = c.detection
    require(
        len(d.canvas) == 2 and all(s > 0 and s % 64 == 0 for s in d.canvas),
        "detection.canvas",
        d.canvas,
        "(height, width), multiples of 64 (the coarsest level's stride), e.g. (1344, 1344)",
    )
    require(
        len(d.scales) >= 1 and all(len(s) == 2 and min(s) > 0 for s in d.scales),
        "detection.scales",
        d.scales,
        "one or more (long, short) sizes, e.g. ((1333, 800),)",
    )
    for scale in (*d.scales, d.test_scale):
        require(
            max(scale) <= min(d.canvas),
            "detection.canvas",
            d.canvas,
            f"at least {max(scale)} a side, so that an image resized to {tuple(scale)} fits "
            "whichever way it is turned",
        )
    require(0 <= d.flip <= 1, "detection.flip", d.flip, "a probability in [0, 1]")
    require(d.max_instances >= 1, "detection.max_instances", d.max_instances, "at least 1")
    for field in HEAD_FIELDS:
        require(d[field] >= 1, f"detection.{field}", d[field], "a positive integer")


class Task:
    """config.model (the backbone), config.detection (heads, pipeline, test) and config.dataset
    (hcnet_instances, or a COCO-format dataset in dataset.data_dir) as a detection task."""

    validate = staticmethod(validate)

    def __init__(self, c):
        self.config, d = c, c.detection
        self.spec = {
            **model.model_spec(**{**config_lib.model_kwargs(c), "num_classes": 0}),
            "decoder": maskrcnn.decoder_spec(
                c.dataset.num_classes, **{f: d[f] for f in HEAD_FIELDS}
            ),
        }
        self._sources = {}

    def check_spec(self, spec: dict) -> None:
        decoder = spec.get("decoder") or {}
        if decoder.get("kind") != "mask_rcnn":
            raise ConfigError(
                "the checkpoint is not a Mask R-CNN (its model.json's decoder is "
                f"{decoder.get('kind')!r}); a detection config starts from a classifier with "
                "config.init_from"
            )
        if decoder["num_classes"] != self.config.dataset.num_classes:
            raise ConfigError(
                f"the checkpoint's heads have {decoder['num_classes']} classes but "
                f"config.dataset.num_classes={self.config.dataset.num_classes}"
            )

    def source(self, split: str, *, training: bool):
        d = self.config.dataset
        if (split, training) not in self._sources:  # training's filter differs from evaluation's
            source = instances.open_source(d.name, split, d.data_dir or None, training=training)
            if len(source.class_names) != d.num_classes:
                raise ConfigError(
                    f"config.dataset.num_classes={d.num_classes}: {d.name} has "
                    f"{len(source.class_names)} classes; set it to {len(source.class_names)}"
                )
            self._sources[split, training] = source
        return self._sources[split, training]

    def transform(self, training: bool) -> det_transforms.Transform:
        d = self.config.detection
        scales = tuple(tuple(s) for s in d.scales) if training else (tuple(d.test_scale),)
        return det_transforms.Transform(
            canvas=tuple(d.canvas),
            scales=scales,
            flip=d.flip if training else 0.0,
            max_instances=d.max_instances,
            crop_branch=d.crop_branch and training,
        )

    def train_examples(self) -> int:
        return len(self.source(self.config.dataset.train_split, training=True))

    def batch_shapes(self, batch_size: int) -> dict:
        d = self.config.detection
        h, w = d.canvas
        g = d.max_instances
        return pipeline.batch_shapes(
            batch_size,
            image=((h, w, 3), jnp.uint8),
            image_hw=((2,), jnp.int32),
            scale=((4,), jnp.float32),
            gt_boxes=((g, 4), jnp.float32),
            gt_labels=((g,), jnp.int32),
            gt_masks=((g, h, w), jnp.uint8),
            gt_valid=((g,), jnp.bool_),
            image_id=((), jnp.int32),
        )

    def train_loader(self, sharding, *, state=None) -> pipeline.Loader:
        c, d = self.config, self.config.dataset
        source = self.source(d.train_split, training=True)
        return pipeline.train_loader(
            _Records(len(source)),
            sharding,
            c.batch_size,
            det_transforms.TrainExample(source, self.transform(True)),
            seed=c.seed,
            state=state,
            **pipeline.loader_options(d),
        )

    def train_inputs(self, key, batch):
        """((normalised images, sizes, ground truth, a sampling key per image), nothing)."""
        x = augment.normalize(batch["image"])
        keys = jax.random.split(key, x.shape[0])
        inputs = (
            x,
            batch["image_hw"].astype(jnp.float32),
            batch["gt_boxes"],
            batch["gt_labels"],
            batch["gt_masks"],
            batch["gt_valid"],
            keys,
        )
        return inputs, jnp.zeros(x.shape[0])

    def forward(self, net, inputs):
        """Each image's share of the batch's loss (the network computes its own targets)."""
        return net.losses(*inputs)[0]

    def loss(self, shares, targets):
        del targets
        return shares

    def eval_step(self, predict):
        # the host resizes each image and pastes its masks (hcnet.evaluators.detection)
        return None

    def evaluators(self, mesh, predict) -> list:
        c = self.config
        source = self.source(c.dataset.eval_split, training=False)
        ground_truth = source.ground_truth()
        return [
            det_eval.Evaluator(
                "eval",
                source,
                predict,
                mesh=mesh,
                transform=self.transform(False),
                batch_size=c.eval_batch_size or c.batch_size,
                ground_truth=ground_truth,
            )
        ]


class _Records:
    """The split's indices as grain's records: TrainExample reads each example from the source."""

    def __init__(self, n: int):
        self.records = [{}] * n

    def __len__(self):
        return len(self.records)
