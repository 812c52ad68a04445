"""Tasks: what a run trains and evaluates. The training loop knows a task only through `Task`.

A task reads its config and gives the network (its spec, which hcnet.nets builds), the training
batches, what happens to a batch on the device before the network sees it, the per-example loss, and
its evaluators (hcnet.evaluators). A new task is a module here, a line in TASKS, and `config.task`.
"""

import importlib
from typing import Protocol

from hcnet import checks
from hcnet.errors import ConfigError

TASKS = {
    "classification": "hcnet.tasks.classification",
    "segmentation": "hcnet.tasks.segmentation",
    "detection": "hcnet.tasks.detection",
}


class Task(Protocol):
    spec: dict  # the network's arguments, as written to model.json (hcnet.nets builds it)
    # optional: `build(spec, *, rngs)`, the network of a task that brings one hcnet.nets does not
    # know

    @staticmethod
    def validate(c) -> None:
        """Stops with one line on a field of the task's own config section (before anything
        compiles)."""

    def check_spec(self, spec: dict) -> None:
        """Stops with one line if a checkpoint's network (its model.json) cannot do this task as
        configured."""

    def train_examples(self) -> int:
        """How many examples one epoch has."""

    def batch_shapes(self, batch_size: int) -> dict:
        """The global batch its training loader yields, as jax.ShapeDtypeStruct (for ahead-of-time
        compiles)."""

    def train_loader(self, sharding, *, state: dict | None = None):
        """Endless global training batches (hcnet.data.pipeline.Loader), resumed from a loader
        `state`."""

    def train_inputs(self, key, batch: dict):
        """(network inputs, targets) of a global batch, inside the jitted step."""

    def forward(self, net, inputs):
        """What the loss sees of the network in training (e.g. net(inputs), or several heads'
        outputs)."""

    def loss(self, outputs, targets):
        """Per-example losses (B,); the step masks and averages them."""

    def evaluators(self, mesh, predict) -> list:
        """The evaluators run at each eval step (hcnet.evaluators.Evaluator), scoring what
        `predict(weights, uint8 images)` (hcnet.nets.predict_fn) gives."""

    def eval_step(self, predict):
        """Its main evaluator's device program, `(weights, batch) -> metrics` (to compile ahead of
        time), or None where the evaluation is driven from the host."""


def _task_class(c):
    if c.task not in TASKS:
        raise ConfigError(f"config.task={c.task!r}: one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[c.task]).Task


def validate(c, num_devices: int, *, training: bool = True) -> None:
    """Every check a config gets before anything is built or compiled: the run-wide fields
    (hcnet.checks.validate; training=False: what evaluation reads), then the task's own section."""
    checks.validate(c, num_devices, training=training)
    _task_class(c).validate(c)


def create(c) -> Task:
    """The task `c.task` names, set up from the config after it has checked its own config
    section."""
    task = _task_class(c)
    task.validate(c)
    return task(c)
