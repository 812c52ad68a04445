"""HcNet-T on ImageNet-1K at 224, the reference recipe (paper: "mostly follows Swin").

    python train.py --config=configs/hcnet_t.py --workdir=gs://BUCKET/runs/hcnet_t \\
        --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets      # on every worker of the slice

Hardware: a TPU v4-32 or v5e-64 slice, or 8 GPUs with 80 GB (batch 1024 global; on fewer devices keep
batch_size and raise optim.accum_steps). 300 epochs = 375,300 steps (1,251 an epoch). Expected top-1:
83.0 (paper Table 2). ImageNet must be prepared first: python -m hcnet.tools.prepare
--dataset=imagenet2012 --manual_dir=DIR_WITH_THE_TARS --data_dir=gs://BUCKET/tensorflow_datasets
(built locally, then uploaded; README "Cloud TPU, with the data and the run in a bucket").
Compiled by `python -m hcnet.tools.aot --config=configs/hcnet_t.py --topology=v5e-64` (compiler figures, not
hardware; blocks scanned on TPU, model.block_loop='auto'): 1.9 of 16 GiB per v5e chip at 16 images each,
199 s to compile on a 2-core VM; 5.8 of 32 GiB per v4 chip on v4-32 (64 each).

Sources: [paper] arXiv 2408.05901 section 4.1; [yaml] the reference HcNet-T.yaml training config;
[swin] Swin's config.py defaults that the reference inherits; [ref] the reference's model and
training code (the README's audit table lists every training default beside the reference's).
"""
from hcnet.config import defaults


def get_config():
    c = defaults()
    c.seed = 0
    c.batch_size = 1024                 # [swin] 128 per GPU x 8 GPUs; lr scales with it
    c.epochs = 300.0                    # [paper] [yaml]
    c.log_every_steps = 100
    c.eval_every_steps = 6255           # every 5 epochs at batch 1024
    c.checkpoint_every_steps = 2502     # every 2 epochs at batch 1024
    c.keep_checkpoints = 3

    c.model.variant = "T"               # [paper] Table 1: depths 5,5,14,5, dims 64,128,320,512
    c.model.heat_operator = "mean8"     # [paper] the isotropic FDM step; see the README's operator table
    c.model.k_mode = "input"            # [paper] k = sigmoid(W GAP(x)) (Table 5's best)
    c.model.drop_path = 0.2             # [yaml] DROP_PATH_RATE 0.2, linear over blocks
    c.model.conv_init = "torch_default"  # [ref] stem/downsample convs keep nn.Conv2d's init (README: init)
    c.model.dtype = "bfloat16"          # [swin] AMP; bf16 compute, fp32 parameters and optimizer state

    c.dataset.name = "imagenet2012"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.image_size = 224          # [paper]
    c.dataset.num_classes = 1000
    c.dataset.crop_pct = 0.875          # [swin] resize 256, centre crop 224, bicubic
    c.dataset.scale = (0.08, 1.0)       # [swin] RandomResizedCrop
    c.dataset.hflip = 0.5               # [swin]

    c.augment.randaugment = "rand-m9-mstd0.5-inc1"  # [swin] AUG.AUTO_AUGMENT
    c.augment.reprob = 0.25             # [swin] AUG.REPROB, mode pixel
    c.augment.mixup = 0.8               # [swin] AUG.MIXUP
    c.augment.cutmix = 1.0              # [swin] AUG.CUTMIX
    c.augment.mix_prob = 1.0            # [swin] AUG.MIXUP_PROB
    c.augment.switch_prob = 0.5         # [swin] AUG.MIXUP_SWITCH_PROB
    c.augment.smoothing = 0.1           # [swin] MODEL.LABEL_SMOOTHING

    c.optim.lr = 1e-3                   # [yaml] BASE_LR, x batch/512 -> 2e-3 at 1024
    c.optim.warmup_lr = 5e-7            # [swin] WARMUP_LR, scaled the same way
    c.optim.min_lr = 5e-6               # [swin] MIN_LR, scaled the same way
    c.optim.scale_by_batch = 512        # [swin] main.py's linear scaling rule
    c.optim.warmup_epochs = 20.0        # [paper] [swin]
    c.optim.weight_decay = 0.05         # [paper] [swin]; none on norms, biases and k
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8  # [swin]
    c.optim.clip_norm = 5.0             # [swin] TRAIN.CLIP_GRAD
    c.optim.accum_steps = 1             # [swin] ACCUMULATION_STEPS 0
    c.optim.ema_decay = 0.0             # the reference keeps no EMA
    return c
