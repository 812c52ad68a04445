"""The smoke config with overrides, for tests that train."""

import pathlib

from hcnet import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def smoke(**overrides):
    """configs/smoke.py with dotted overrides, e.g. smoke(**{"optim.lr": 1e30})."""
    c = config_lib.from_file(str(ROOT / "configs/smoke.py"))
    for key, value in overrides.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c
