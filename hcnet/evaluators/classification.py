"""Exact classification metrics over a whole split: top-1, top-5, loss and the number of examples.

The last global batch is padded and the padding masked out, so every example counts exactly once
on any number of devices and hosts; `count` says how many were scored.
"""

import functools

import flax
import jax
import optax
from clu import metrics as clu_metrics

from hcnet import sharding
from hcnet.data import pipeline, transforms


@flax.struct.dataclass
class Metrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    top1: clu_metrics.Average.from_output("top1")
    top5: clu_metrics.Average.from_output("top5")


def eval_step(weights, batch, *, predict):
    """Masked top-1, top-5 and loss of one global batch (padding rows have mask False)."""
    logits = predict(weights, batch["image"])
    labels = batch["label"]
    top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hits = top == labels[:, None]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return Metrics.single_from_model_output(
        loss=loss, top1=hits[:, 0], top5=hits.any(-1), mask=batch["mask"]
    )


class Evaluator:
    """Classification of `source` (hcnet.data.sources.Source) at one resolution and centre crop."""

    metrics = ("top1", "top5", "loss", "count")
    headline = ("top1", "top5")
    eval_step = staticmethod(eval_step)

    def __init__(
        self,
        name: str,
        source,
        *,
        predict,
        mesh,
        batch_size: int,
        image_size: int,
        crop_pct: float = 0.875,
        threads: int = 8,
        workers: int = 0,
        prefetch: int = 2,
    ):
        self.name, self.source, self.image_size, self.crop_pct = name, source, image_size, crop_pct
        self.settings = {"image_size": image_size, "crop_pct": crop_pct, "labels": source.label_key}
        self.columns = {"size": str(image_size), "crop": f"{crop_pct:.3f}"}
        self.tag = f"{image_size}_{crop_pct:g}"
        self._step = jax.jit(
            functools.partial(self.eval_step, predict=predict),
            out_shardings=sharding.replicated(mesh),
        )
        transform = transforms.EvalTransform(
            image_size, crop_pct, source.label_key, source.num_classes if source.multilabel else 0
        )
        self._loader = functools.partial(
            pipeline.eval_loader,
            source,
            sharding.batch_sharding(mesh),
            batch_size,
            transform,
            threads=threads,
            workers=workers,
            prefetch=prefetch,
        )

    def total(self, params):
        """The metrics collection summed over the whole split, on the host."""
        total = None
        for batch in self._loader():
            if total is None:
                sharding.enter_together(self._step, params, batch, name=f"eval-{self.name}")
            m = self._step(params, batch)
            total = m if total is None else total.merge(m)
        return sharding.to_host(total)

    def __call__(self, params) -> dict[str, float]:
        total = self.total(params)
        return {
            **{k: float(v) for k, v in total.compute().items()},
            "count": int(round(float(total.top1.count))),
        }
