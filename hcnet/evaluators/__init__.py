"""Evaluators: each runs one evaluation of a set of parameters and returns named scalars.

The training loop (and eval.py) call every evaluator a task gives and report its results as
`<name>/<metric>` (and `<name>_ema/<metric>` for the EMA weights). Each lives in its own module.
"""

from typing import Protocol


class Evaluator(Protocol):
    name: str  # the prefix of its results, e.g. "eval"
    metrics: tuple[str, ...]  # what __call__ returns
    headline: tuple[str, ...]  # what the console's eval line shows
    source: object  # the split it scores (its name, split and length go in eval.py's report)
    settings: (
        dict  # how it scores it (resolution and crop, or a segmentation test's mode and scales)
    )

    def __call__(self, params) -> dict[str, float]: ...
