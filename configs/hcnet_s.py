"""HcNet-S on ImageNet-1K at 224: HcNet-T's recipe with the S variant and drop path 0.3.

    # on every worker of the slice
    python train.py --config=configs/hcnet_s.py --workdir=gs://BUCKET/runs/hcnet_s \\
        --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Hardware: a TPU v4-32 slice or 8 GPUs with 80 GB. Expected top-1: 83.9 (paper Table 2). Drop path
0.3 is Swin-S's (the reference released only HcNet-T's config).
"""

from configs import hcnet_t


def get_config():
    c = hcnet_t.get_config()
    c.model.variant = "S"  # [paper] Table 1: depths 6,6,18,6, dims 64,192,384,768
    c.model.drop_path = 0.3  # [swin] swin_small
    return c
