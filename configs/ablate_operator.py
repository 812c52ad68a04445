"""The three public forms of the heat operator L, on HcNet-T's recipe.

    # the paper's FDM step (default)
    python train.py --config=configs/ablate_operator.py:mean8    --workdir=DIR
    # reference HcNet-architecture.py
    python train.py --config=configs/ablate_operator.py:learned3 --workdir=DIR
    # the released training code
    python train.py --config=configs/ablate_operator.py:learned5 --workdir=DIR

Hardware and time as configs/hcnet_t.py. docs/model.md's operator table says how the forms differ.
"""

from configs import hcnet_t


def get_config(arg="mean8"):
    c = hcnet_t.get_config()
    c.model.heat_operator = arg  # checked against the three forms by hcnet.checks.validate
    return c
