"""HcNet-B on ImageNet-1K at 224: HcNet-T's recipe with the B variant and drop path 0.5.

    # on every worker of the slice
    python train.py --config=configs/hcnet_b.py --workdir=gs://BUCKET/runs/hcnet_b \\
        --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Hardware: a TPU v4-64 slice or 8 GPUs with 80 GB (v6e-64 and H200s too). Expected top-1:
84.3 (paper Table 2). Drop path 0.5 is Swin-B's (the reference released only HcNet-T's config).
Parameters above 2^18 elements are split over the mesh's fsdp axis when mesh.fsdp > 1. Compiled for
v4-64 by `python -m hcnet.tools.aot --config=configs/hcnet_b.py --topology=v4-64` (compiler figures,
not hardware): 5.9 of 32 GiB per chip at 32 images per chip; 31.8 of 79 GiB per GPU on h100-8 (128
each), without accumulation (BENCHMARKS.md, "Compiled ahead of time").
"""

from configs import hcnet_t


def get_config():
    c = hcnet_t.get_config()
    c.model.variant = "B"  # [paper] Table 1: depths 10,10,28,10, dims 96,192,384,768
    c.model.drop_path = 0.5  # [swin] swin_base
    return c
