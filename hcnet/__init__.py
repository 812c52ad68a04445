"""HcNet, the Heat Conduction Network vision backbone, in JAX/Flax NNX."""

import importlib

_EXPORTS = {
    "load": "hcnet.trained",
    "save": "hcnet.checkpoint",
    "HEAT_OPERATORS": "hcnet.model",
    "K_MODES": "hcnet.model",
    "VARIANTS": "hcnet.model",
    "HcNet": "hcnet.model",
    "create_model": "hcnet.model",
    "model_spec": "hcnet.model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    """Imported on first use, so `hcnet.hostenv` can run before JAX is imported."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hcnet' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
