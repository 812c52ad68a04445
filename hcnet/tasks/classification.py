"""Image classification: HcNet with a linear head, trained with the Swin recipe (RandAugment,
erasing, mixup / cutmix, label smoothing), evaluated exactly on `dataset.eval_split`."""

import functools
import re

import jax.numpy as jnp
import optax

from hcnet import config as config_lib
from hcnet import model
from hcnet.checks import require
from hcnet.data import augment, pipeline, randaugment, sources, transforms
from hcnet.errors import ConfigError
from hcnet.evaluators import classification, multilabel


def validate(c) -> None:
    """config.augment and config.evals (for task="classification")."""
    a = c.augment
    for field in ("reprob", "mix_prob", "switch_prob", "smoothing"):
        require(0 <= a[field] <= 1, f"augment.{field}", a[field], "must be in [0, 1]")
    for field in ("mixup", "cutmix"):
        require(
            a[field] >= 0, f"augment.{field}", a[field], "a Beta alpha >= 0 (0 switches it off)"
        )
    if a.randaugment:
        try:
            randaugment.RandAugment.parse(a.randaugment)
        except ValueError as e:
            raise ConfigError(f"config.{e}") from None
    require(
        a.lut_impl in randaugment.LUT_IMPLS,
        "augment.lut_impl",
        a.lut_impl,
        f"one of {', '.join(randaugment.LUT_IMPLS)}",
    )
    _validate_evals(c)


EVAL_FIELDS = ("name", "split", "dataset", "data_dir", "image_size", "crop_pct", "label_key")


def eval_entry(c, i: int) -> dict:
    """config.evals[i] with config.dataset's values where it gives none."""
    e, d = c.evals[i], c.dataset
    return {
        "name": e["name"],
        "split": e["split"],
        "dataset": e.get("dataset") or d.name,
        "data_dir": e.get("data_dir", d.data_dir),
        "image_size": e.get("image_size", d.image_size),
        "crop_pct": e.get("crop_pct", d.crop_pct),
        "label_key": e.get("label_key", "label"),
    }


def _validate_evals(c) -> None:
    names = ["eval"]
    for i, e in enumerate(c.evals):
        field = f"evals[{i}]"
        require(
            isinstance(e, dict) and set(e) <= set(EVAL_FIELDS) and {"name", "split"} <= set(e),
            field,
            e,
            f"a dict with name and split, and optionally {', '.join(EVAL_FIELDS[2:])}",
        )
        require(
            re.fullmatch(r"[a-z][a-z0-9_]*", str(e["name"])) is not None and e["name"] not in names,
            f"{field}.name",
            e["name"],
            f"a new snake_case name (taken: {', '.join(names)})",
        )
        names.append(e["name"])
        entry = eval_entry(c, i)
        require(
            isinstance(entry["split"], str) and entry["split"],
            f"{field}.split",
            entry["split"],
            "a split string, e.g. 'validation' or 'test[:1000]'",
        )
        require(
            entry["image_size"] >= 32,
            f"{field}.image_size",
            entry["image_size"],
            "must be at least 32",
        )
        require(
            0 < entry["crop_pct"] <= 1, f"{field}.crop_pct", entry["crop_pct"], "must be in (0, 1]"
        )
        require(
            isinstance(entry["label_key"], str)
            and re.fullmatch(r"[a-z][a-z0-9_]*", entry["label_key"]),
            f"{field}.label_key",
            entry["label_key"],
            "a label feature's name, e.g. 'label' or 'real_label'",
        )


class Task:
    """config.model, config.dataset and config.augment as a classification task."""

    validate = staticmethod(validate)

    def __init__(self, c):
        self.config = c
        self.spec = model.model_spec(
            **config_lib.model_kwargs(c), num_classes=c.dataset.num_classes
        )
        self.recipe = augment.Recipe(**c.augment)
        self._train = None

    def check_spec(self, spec: dict) -> None:
        d = self.config.dataset
        if spec["num_classes"] != d.num_classes:
            raise ConfigError(
                f"the checkpoint's head has {spec['num_classes']} classes but "
                "config.dataset.num_classes="
                f"{d.num_classes} ({d.name}); evaluate it on the dataset it was trained for"
            )

    def open(
        self,
        split: str,
        field: str,
        *,
        dataset: str | None = None,
        data_dir=None,
        label_key: str = "label",
    ) -> sources.Source:
        """A split of the config's dataset (or `dataset` in `data_dir`); stops with one line if its
        classes differ from the config's."""
        d = self.config.dataset
        name, where = dataset or d.name, d.data_dir if dataset is None else data_dir
        source = sources.open_split(
            name,
            split,
            data_dir=where or None,
            num_classes=d.num_classes,
            image_size=d.image_size,
            field=field,
            label_key=label_key,
        )
        if source.num_classes != d.num_classes:
            raise ConfigError(
                f"config.dataset.num_classes={d.num_classes}: {name} has {source.num_classes} "
                f"classes; set it to {source.num_classes}"
            )
        return source

    def train_source(self) -> sources.Source:
        if self._train is None:
            self._train = self.open(self.config.dataset.train_split, "dataset.train_split")
        return self._train

    def train_examples(self) -> int:
        return len(self.train_source())

    def batch_shapes(self, batch_size: int) -> dict:
        s = self.config.dataset.image_size
        return pipeline.batch_shapes(
            batch_size, image=((s, s, 3), jnp.uint8), label=((), jnp.int32)
        )

    def train_loader(self, sharding, *, state=None) -> pipeline.Loader:
        c, d = self.config, self.config.dataset
        transform = transforms.TrainTransform(
            d.image_size, tuple(d.scale), tuple(d.ratio), d.hflip, d.draft
        )
        return pipeline.train_loader(
            self.train_source(),
            sharding,
            c.batch_size,
            transform,
            seed=c.seed,
            state=state,
            **pipeline.loader_options(d),
        )

    def train_inputs(self, key, batch):
        return augment.train_inputs(key, batch, self.spec["num_classes"], self.recipe)

    def forward(self, net, inputs):
        return net(inputs)

    def loss(self, logits, targets):
        return optax.softmax_cross_entropy(logits, targets)

    def eval_step(self, predict):
        return functools.partial(classification.eval_step, predict=predict)

    def evaluators(self, mesh, predict) -> list:
        """`eval` on dataset.eval_split, then one per config.evals entry (its own dataset, split,
        size, crop, labels); a multi-label one (e.g. imagenet2012_real's real_label) is scored as
        ReaL does."""
        c, d = self.config, self.config.dataset
        entries = [
            {
                "name": "eval",
                "split": d.eval_split,
                "dataset": d.name,
                "data_dir": d.data_dir,
                "image_size": d.image_size,
                "crop_pct": d.crop_pct,
                "field": "dataset.eval_split",
            }
        ]
        entries += [{**eval_entry(c, i), "field": f"evals[{i}].split"} for i in range(len(c.evals))]
        evaluators = []
        for e in entries:
            source = self.open(
                e["split"],
                e["field"],
                dataset=e["dataset"],
                data_dir=e["data_dir"],
                label_key=e.get("label_key", "label"),
            )
            kind = multilabel.Evaluator if source.multilabel else classification.Evaluator
            evaluators.append(
                kind(
                    e["name"],
                    source,
                    predict=predict,
                    mesh=mesh,
                    batch_size=c.eval_batch_size or c.batch_size,
                    image_size=e["image_size"],
                    crop_pct=e["crop_pct"],
                    **pipeline.loader_options(d),
                )
            )
        return evaluators
