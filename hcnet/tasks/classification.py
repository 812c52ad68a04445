"""Image classification: HcNet with a linear head, trained with the Swin recipe (RandAugment, erasing,
mixup / cutmix, label smoothing), evaluated exactly on `dataset.eval_split`."""
import optax

from hcnet import config as config_lib
from hcnet import model
from hcnet.data import augment, pipeline, sources, transforms
from hcnet.errors import ConfigError
from hcnet.evaluators import classification, multilabel


class Task:
    """config.model, config.dataset and config.augment as a classification task."""

    def __init__(self, c):
        self.config = c
        self.spec = model.model_spec(**config_lib.model_kwargs(c), num_classes=c.dataset.num_classes)
        self.recipe = augment.Recipe(**c.augment)
        self._train = None

    build = staticmethod(model.build)

    def check_spec(self, spec: dict) -> None:
        d = self.config.dataset
        if spec["num_classes"] != d.num_classes:
            raise ConfigError(f"the checkpoint's head has {spec['num_classes']} classes but config.dataset.num_classes="
                              f"{d.num_classes} ({d.name}); evaluate it on the dataset it was trained for")

    def open(self, split: str, field: str, *, dataset: str | None = None, data_dir=None,
             label_key: str = "label") -> sources.Source:
        """A split of the config's dataset (or `dataset` in `data_dir`); stops with one line if its classes
        differ from the config's."""
        d = self.config.dataset
        name, where = dataset or d.name, d.data_dir if dataset is None else data_dir
        source = sources.open_split(name, split, data_dir=where or None, num_classes=d.num_classes,
                                    image_size=d.image_size, field=field, label_key=label_key)
        if source.num_classes != d.num_classes:
            raise ConfigError(f"config.dataset.num_classes={d.num_classes}: {name} has {source.num_classes} "
                              f"classes; set it to {source.num_classes}")
        return source

    def train_source(self) -> sources.Source:
        if self._train is None:
            self._train = self.open(self.config.dataset.train_split, "dataset.train_split")
        return self._train

    def train_examples(self) -> int:
        return len(self.train_source())

    def train_loader(self, sharding, *, state=None) -> pipeline.Loader:
        c, d = self.config, self.config.dataset
        transform = transforms.TrainTransform(d.image_size, tuple(d.scale), tuple(d.ratio), d.hflip, d.draft)
        return pipeline.train_loader(self.train_source(), sharding, c.batch_size, transform, seed=c.seed,
                                     state=state, prefetch=d.prefetch, threads=d.threads, workers=d.workers)

    def train_inputs(self, key, batch):
        return augment.train_inputs(key, batch, self.spec["num_classes"], self.recipe)

    def forward(self, net, inputs):
        return net(inputs)

    def loss(self, logits, targets):
        return optax.softmax_cross_entropy(logits, targets)

    def evaluators(self, mesh, model_def) -> list:
        """`eval` on dataset.eval_split, then one per config.evals entry (its own dataset, split, size, crop,
        labels); a multi-label one (e.g. imagenet2012_real's real_label) is scored as ReaL does."""
        c, d = self.config, self.config.dataset
        entries = [{"name": "eval", "split": d.eval_split, "dataset": d.name, "data_dir": d.data_dir,
                    "image_size": d.image_size, "crop_pct": d.crop_pct, "field": "dataset.eval_split"}]
        entries += [{**config_lib.eval_entry(c, i), "field": f"evals[{i}].split"} for i in range(len(c.evals))]
        evaluators = []
        for e in entries:
            source = self.open(e["split"], e["field"], dataset=e["dataset"], data_dir=e["data_dir"],
                               label_key=e.get("label_key", "label"))
            kind = multilabel.Evaluator if source.multilabel else classification.Evaluator
            evaluators.append(kind(
                e["name"], source, model_def=model_def, mesh=mesh, batch_size=c.eval_batch_size or c.batch_size,
                image_size=e["image_size"], crop_pct=e["crop_pct"], threads=d.threads, workers=d.workers,
                prefetch=d.prefetch))
        return evaluators
