"""HcNet-T on ImageNet-1K at 224, the reference recipe (paper: "mostly follows Swin").

    # on every worker of the slice
    python train.py --config=configs/hcnet_t.py --workdir=gs://BUCKET/runs/hcnet_t \\
        --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Hardware: a TPU v4-32 or v5e-64 slice, or 8 GPUs with 80 GB (batch 1024 global; on fewer devices
keep batch_size and raise optim.accum_steps). 300 epochs = 375,300 steps (1,251 an epoch). Expected
top-1: 83.0 (paper Table 2). ImageNet must be prepared first: python -m hcnet.tools.prepare
--dataset=imagenet2012 --manual_dir=DIR_WITH_THE_TARS --data_dir=gs://BUCKET/tensorflow_datasets
(built locally, then uploaded; docs/cloud-tpu.md, step 2).
Compiled by `python -m hcnet.tools.aot --config=configs/hcnet_t.py --topology=v5e-64` (compiler
figures, not hardware): 1.4 of 16 GiB per v5e chip at 16 images each, 1.4 of 32 GiB on v6e-64, 3.9
of 32 GiB per v4 chip on v4-32 (64 each); 11.7 of 79 GiB per GPU on h100-8 (128 each);
BENCHMARKS.md, "Compiled ahead of time".

The recipe is `hcnet.config.defaults()`, which holds HcNet-T's reference values once; this config
adds the run's schedule. Where each value comes from ([paper] arXiv 2408.05901 section 4.1; [yaml]
the reference's HcNet-T.yaml; [swin] Swin's config.py defaults that the reference inherits; [ref]
the reference's code): batch_size 1024 [swin] (128 per GPU x 8; lr scales with it); epochs 300,
warmup_epochs 20 [paper] [yaml]; model: variant T (Table 1), heat_operator mean8, k_mode input
[paper]; drop_path 0.2 [yaml]; conv_init torch_default [ref]; dtype bfloat16 [swin] (AMP). dataset:
224 [paper], crop_pct 0.875, scale (0.08, 1), hflip 0.5 [swin]. augment: rand-m9-mstd0.5-inc1,
reprob 0.25, mixup 0.8, cutmix 1.0, mix_prob 1.0, switch_prob 0.5, smoothing 0.1 [swin]. optim: lr
1e-3 [yaml] (x batch / 512), warmup_lr 5e-7, min_lr 5e-6, scale_by_batch 512, AdamW (0.9, 0.999,
1e-8), weight_decay 0.05 (none on norms, biases and k), clip_norm 5.0, no accumulation [swin]; no
EMA [ref]. docs/fidelity.md's table lists each beside the reference's.
"""

from hcnet.config import defaults


def get_config():
    c = defaults()  # the reference recipe (above)
    c.eval_every_steps = 6255  # every 5 epochs at batch 1024
    c.checkpoint_every_steps = 2502  # every 2 epochs at batch 1024
    return c
