"""Semantic segmentation: UperNet on HcNet's four stages (hcnet.upernet), trained as mmsegmentation
trains Swin's and the paper's ADE20K models, evaluated by mIoU (hcnet.evaluators.segmentation).

    host     decode the image and its mask, mmseg's training pipeline (hcnet.data.seg_transforms):
    random
             keep-ratio rescale, crop with cat_max_ratio, flip, photometric distortion, pad to the
             crop
    device   Normalize (ImageNet mean and std); the padding made 0 after it, as mmseg pads after
    Normalize
    loss     per-pixel cross-entropy of the decode head's logits, bilinearly resized to the crop
    (torch's
             align_corners=False), plus aux_weight x the auxiliary FCN head's; ignored pixels (255)
             add 0 and count in the mean, as mmseg's CrossEntropyLoss (reduction 'mean', no
             avg_non_ignore) does
    eval     every image at its own size, whole or by sliding window (config.segmentation.eval_*);
    with
             ms_ratios, a second evaluator `ms` at several scales with flip (mmseg's aug_test)

BatchNorm in the heads: under jit over a sharded batch its statistics are over the whole global
batch (what mmseg's SyncBN computes across GPUs); the running statistics live beside the parameters
and are updated by the train step.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax

from hcnet import config as config_lib
from hcnet import model, upernet
from hcnet.checks import require
from hcnet.data import augment, pipeline, seg_transforms, segmentation, sources, transforms
from hcnet.errors import ConfigError
from hcnet.evaluators import segmentation as seg_eval


@dataclasses.dataclass(frozen=True)
class Example:
    """grain random map: a record (encoded image and mask, `index`) -> {image, label, valid, mask,
    index} at the crop size; `valid` (h, w) is the part of the crop that is image, the rest being
    padding."""

    transform: seg_transforms.TrainTransform
    num_classes: int
    reduce_zero_label: bool

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        t = self.transform
        try:
            image = np.asarray(transforms.rgb(transforms.open_image(record["image"])))
            stored = np.asarray(transforms.open_image(record["segmentation"]))
            if stored.shape[:2] != image.shape[:2]:
                raise ValueError(
                    f"mask {stored.shape[:2]} and image {image.shape[:2]} differ in size"
                )
        except Exception as e:  # noqa: BLE001  an unreadable pair: skipped, counted in the batch mask
            transforms.warn_skipped(record, e)
            return {
                "image": np.zeros((*t.crop, 3), np.uint8),
                "label": np.full(t.crop, t.ignore_index, np.uint8),
                "valid": np.zeros(2, np.int32),
                "mask": np.bool_(False),
                "index": np.int32(record["index"]),
            }
        label = segmentation.label_map(
            stored, self.reduce_zero_label, self.num_classes, t.ignore_index
        )
        image, label, valid = t(image, label, rng)
        return {
            "image": image,
            "label": label,
            "valid": np.asarray(valid, np.int32),
            "mask": np.bool_(True),
            "index": np.int32(record["index"]),
        }


def pixel_loss(logits, labels, ignore_index: int = seg_eval.IGNORE_INDEX):
    """(B,) mean over each example's pixels of the cross-entropy of logits (B, h, w, C), resized
    bilinearly to the labels' (B, H, W) size; ignored pixels add 0 but count, as in mmseg."""
    b, h, w = labels.shape
    logits = upernet.resize(logits.astype(jnp.float32), h, w)
    keep = labels != ignore_index
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(keep, labels, 0).astype(jnp.int32)
    )
    return jnp.mean(jnp.where(keep, ce, 0.0), axis=(1, 2))


def validate(c) -> None:
    """config.segmentation's fields (for task="segmentation")."""
    s = c.segmentation
    for field in ("crop", "scale", "eval_stride"):
        require(
            len(s[field]) == 2 and min(s[field]) >= 1,
            f"segmentation.{field}",
            s[field],
            "two positive integers",
        )
    require(
        0 < s.ratio_range[0] <= s.ratio_range[1],
        "segmentation.ratio_range",
        s.ratio_range,
        "(low, high) with 0 < low <= high, e.g. (0.5, 2.0)",
    )
    require(
        0 < s.cat_max_ratio <= 1,
        "segmentation.cat_max_ratio",
        s.cat_max_ratio,
        "in (0, 1] (1: no check)",
    )
    require(0 <= s.flip <= 1, "segmentation.flip", s.flip, "a probability in [0, 1]")
    require(
        s.eval_mode in ("slide", "whole"),
        "segmentation.eval_mode",
        s.eval_mode,
        "'slide' or 'whole'",
    )
    require(
        all(r > 0 for r in s.ms_ratios),
        "segmentation.ms_ratios",
        s.ms_ratios,
        "() for single-scale only, or positive ratios, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)",
    )
    require(
        s.channels >= 1 and s.aux_channels >= 1,
        "segmentation.channels",
        (s.channels, s.aux_channels),
        "positive head widths (mmseg: 512 and 256)",
    )
    require(
        s.aux_weight >= 0,
        "segmentation.aux_weight",
        s.aux_weight,
        ">= 0 (mmseg: 0.4; 0 trains without it)",
    )


class Task:
    """config.model (the backbone), config.segmentation (head, pipeline, evaluation) and
    config.dataset (a prepared segmentation dataset: hcnet_ade20k or a segmentation folder) as a
    segmentation task."""

    validate = staticmethod(validate)

    def __init__(self, c):
        self.config, s = c, c.segmentation
        self.spec = {
            **model.model_spec(**{**config_lib.model_kwargs(c), "num_classes": 0}),
            "decoder": upernet.decoder_spec(
                c.dataset.num_classes,
                channels=s.channels,
                aux_channels=s.aux_channels,
                dropout=s.dropout,
            ),
        }
        self._sources = {}

    def check_spec(self, spec: dict) -> None:
        d = self.config.dataset
        if "decoder" not in spec:
            raise ConfigError(
                "the checkpoint is a classification network (its model.json has no decoder); a "
                "segmentation config starts from it with config.init_from, not by evaluating it"
            )
        if spec["decoder"]["num_classes"] != d.num_classes:
            raise ConfigError(
                f"the checkpoint's decoder has {spec['decoder']['num_classes']} classes but "
                f"config.dataset.num_classes={d.num_classes} ({d.name})"
            )

    def source(self, split: str, field: str) -> sources.SegmentationSource:
        """A split of the config's dataset; stops with one line if its classes differ from the
        config's."""
        d = self.config.dataset
        if split not in self._sources:
            source = sources.open_segmentation(
                d.name, split, data_dir=d.data_dir or None, field=field
            )
            if source.num_classes != d.num_classes:
                raise ConfigError(
                    f"config.dataset.num_classes={d.num_classes}: {d.name} has "
                    f"{source.num_classes} "
                    f"classes; set it to {source.num_classes}"
                )
            self._sources[split] = source
        return self._sources[split]

    def train_examples(self) -> int:
        return len(self.source(self.config.dataset.train_split, "dataset.train_split"))

    def train_transform(self) -> seg_transforms.TrainTransform:
        s = self.config.segmentation
        return seg_transforms.TrainTransform(
            crop=tuple(s.crop),
            scale=tuple(s.scale),
            ratio_range=tuple(s.ratio_range),
            cat_max_ratio=s.cat_max_ratio,
            flip=s.flip,
            photometric=s.photometric,
        )

    def batch_shapes(self, batch_size: int) -> dict:
        h, w = self.config.segmentation.crop
        return pipeline.batch_shapes(
            batch_size,
            image=((h, w, 3), jnp.uint8),
            label=((h, w), jnp.uint8),
            valid=((2,), jnp.int32),
        )

    def train_loader(self, sharding, *, state=None) -> pipeline.Loader:
        c, d = self.config, self.config.dataset
        source = self.source(d.train_split, "dataset.train_split")
        example = Example(self.train_transform(), source.num_classes, source.reduce_zero_label)
        return pipeline.train_loader(
            source,
            sharding,
            c.batch_size,
            example,
            seed=c.seed,
            state=state,
            **pipeline.loader_options(d),
        )

    def train_inputs(self, key, batch):
        """(normalised images with their padding at 0, labels int32)."""
        del key  # the augmentation is on the host
        x = augment.normalize(batch["image"])
        h, w = x.shape[1:3]
        valid = batch["valid"]
        inside = (jnp.arange(h)[None, :, None] < valid[:, 0, None, None]) & (
            jnp.arange(w)[None, None, :] < valid[:, 1, None, None]
        )
        return jnp.where(inside[..., None], x, 0.0), batch["label"].astype(jnp.int32)

    def forward(self, net, inputs):
        """(decode logits, auxiliary logits) at strides 4 and 16."""
        return net.logits(inputs)

    def loss(self, outputs, labels):
        decode, aux = outputs
        return pixel_loss(decode, labels) + self.config.segmentation.aux_weight * pixel_loss(
            aux, labels
        )

    def eval_step(self, predict):
        # each image at its own size, by windows the host cuts (hcnet.evaluators.segmentation)
        return None

    def evaluators(self, mesh, predict) -> list:
        """`eval`: single-scale on dataset.eval_split; `ms` as well when segmentation.ms_ratios is
        given."""
        c, s = self.config, self.config.segmentation
        source = self.source(c.dataset.eval_split, "dataset.eval_split")
        kw = dict(
            mesh=mesh,
            mode=s.eval_mode,
            crop=tuple(s.crop),
            stride=tuple(s.eval_stride),
            scale=tuple(s.scale),
        )
        tag = s.eval_mode + ("_ms" if s.ms_ratios else "")  # eval.py's report file
        evaluators = [seg_eval.Evaluator("eval", source, predict, tag=tag, **kw)]
        if s.ms_ratios:
            evaluators.append(
                seg_eval.Evaluator(
                    "ms", source, predict, ratios=tuple(s.ms_ratios), flip=s.ms_flip, **kw
                )
            )
        return evaluators
