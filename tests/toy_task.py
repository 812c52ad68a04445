"""A second task, defined outside hcnet, for the test that the training loop knows tasks only
through their interface: classification's network and data, a squared-error loss, and an evaluator
of its own."""

import jax
import jax.numpy as jnp
import numpy as np

from hcnet.tasks import classification

LOSS_SCALE = 1000.0  # so the logged training loss shows which loss the loop minimised


class ProbeEvaluator:
    """Scores fixed inputs: the mean of the network's first logit, a number only this evaluator
    reports."""

    metrics = ("first_logit",)
    headline = ("first_logit",)

    def __init__(self, predict):
        self.name, self._predict = "probe", predict
        self._x = jnp.asarray(
            np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3)), jnp.uint8
        )

    def __call__(self, params):
        logits = jax.jit(self._predict)(params, self._x)
        return {"first_logit": float(logits[:, 0].mean())}


class Task(classification.Task):
    def loss(self, logits, targets):
        return LOSS_SCALE * jnp.sum((jax.nn.softmax(logits) - targets) ** 2, axis=-1)

    def evaluators(self, mesh, predict):
        return [ProbeEvaluator(predict)]
