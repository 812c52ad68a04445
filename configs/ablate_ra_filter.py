"""Paper Table 6: the Refinement Approximation layer without its depthwise filter, on HcNet-T's
recipe.

    python train.py --config=configs/ablate_ra_filter.py --workdir=DIR

Hardware and time as configs/hcnet_t.py; the paper reports a drop in top-1 without the filter.
"""

from configs import hcnet_t


def get_config():
    c = hcnet_t.get_config()
    c.model.ra_filter = False
    return c
