"""Tasks: what a run trains and evaluates. The training loop knows a task only through `Task`.

A task reads its config and gives the network (its spec and how to build it), the training batches,
what happens to a batch on the device before the network sees it, the per-example loss, and its
evaluators (hcnet.evaluators). A new task is a module here, a line in TASKS, and `config.task`.
"""
import importlib
from typing import Protocol

from hcnet.errors import ConfigError

TASKS = {"classification": "hcnet.tasks.classification", "segmentation": "hcnet.tasks.segmentation"}


class Task(Protocol):
    spec: dict  # the network's arguments, as written to model.json

    def build(self, spec: dict, *, rngs):
        """The network of a spec (an nnx.Module)."""

    def check_spec(self, spec: dict) -> None:
        """Stops with one line if a checkpoint's network (its model.json) cannot do this task as configured."""

    def train_examples(self) -> int:
        """How many examples one epoch has."""

    def train_loader(self, sharding, *, state: dict | None = None):
        """Endless global training batches (hcnet.data.pipeline.Loader), resumed from a loader `state`."""

    def train_inputs(self, key, batch: dict):
        """(network inputs, targets) of a global batch, inside the jitted step."""

    def forward(self, net, inputs):
        """What the loss sees of the network in training (e.g. net(inputs), or several heads' outputs)."""

    def loss(self, outputs, targets):
        """Per-example losses (B,); the step masks and averages them."""

    def evaluators(self, mesh, model_def) -> list:
        """The evaluators run at each eval step (hcnet.evaluators.Evaluator)."""


def create(c) -> Task:
    """The task `c.task` names, set up from the config."""
    if c.task not in TASKS:
        raise ConfigError(f"config.task={c.task!r}: one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[c.task]).Task(c)
