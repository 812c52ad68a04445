"""HcNet, the Heat Conduction Network vision backbone, in JAX/Flax NNX."""
from hcnet.checkpoint import load, save
from hcnet.model import HEAT_OPERATORS, K_MODES, VARIANTS, HcNet, create_model, model_spec

__all__ = ["HEAT_OPERATORS", "K_MODES", "VARIANTS", "HcNet", "create_model", "load", "model_spec", "save"]
