"""Multi-label classification scored as ImageNet ReaL does (Beyer et al. 2020, arXiv 2006.07159):
the top-1 prediction is right when it is one of the image's labels. Images whose label set is empty
are left out of top-1 (ReaL: 3,163 of ImageNet's 50,000 validation images) and reported as
`unlabeled`; `count` is the number scored. Every image counts once on any number of devices and
hosts, as in classification.
"""

import flax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from hcnet.evaluators import classification


@flax.struct.dataclass
class LabeledTop1(clu_metrics.Average):
    """Top-1 hits averaged over the valid images that have at least one label."""

    @classmethod
    def from_model_output(cls, top1, labeled, mask, **_):
        return super().from_model_output(top1, mask=mask & labeled)


@flax.struct.dataclass
class Metrics(clu_metrics.Collection):
    top1: LabeledTop1
    labeled: clu_metrics.Average.from_output("labeled")  # over the valid images


def eval_step(weights, batch, *, predict):
    """Masked ReaL top-1 of one global batch; batch["label"] is a multi-hot bool (B, classes)."""
    logits = predict(weights, batch["image"])
    labels = batch["label"]
    top1 = jnp.argmax(logits, axis=-1)
    hit = jnp.take_along_axis(labels, top1[:, None], axis=-1)[:, 0]
    labeled = labels.any(axis=-1)
    return Metrics.single_from_model_output(top1=hit, labeled=labeled, mask=batch["mask"])


class Evaluator(classification.Evaluator):
    """ReaL-style top-1 of a multi-label `source` (hcnet.data.sources.Source with
    multilabel=True)."""

    metrics = ("top1", "count", "unlabeled")
    headline = ("top1",)
    eval_step = staticmethod(eval_step)

    def __call__(self, params) -> dict[str, float]:
        total = self.total(params)
        count, valid = int(round(float(total.top1.count))), int(round(float(total.labeled.count)))
        return {"top1": float(total.top1.compute()), "count": count, "unlabeled": valid - count}
