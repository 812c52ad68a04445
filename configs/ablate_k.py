"""Paper Table 5: how the conductivity k is chosen, on HcNet-T's recipe.

    # k = sigmoid(W GAP(x)) (the default)
    python train.py --config=configs/ablate_k.py:input   --workdir=DIR
    # one learned scalar per block, from 0.5
    python train.py --config=configs/ablate_k.py:learned --workdir=DIR
    # k fixed at 0.3 (any value in [0, 1])
    python train.py --config=configs/ablate_k.py:0.3     --workdir=DIR

Hardware and time as configs/hcnet_t.py. The paper reports input-dependent k best; the fixed values
of its table are not given in the paper's text we work from, so we sweep 0.1, 0.3, 0.5, 0.7 and 0.9.
"""

from configs import hcnet_t


def get_config(arg="input"):
    c = hcnet_t.get_config()
    if arg in ("input", "learned"):
        c.model.k_mode = arg
    else:
        try:
            k = float(arg)
        except ValueError:
            raise ValueError(
                f"--config=configs/ablate_k.py:{arg}: use input, learned or a number in [0, 1]"
            ) from None
        c.model.k_mode, c.model.k_value = "fixed", k
    return c
