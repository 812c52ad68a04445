"""HcNet-T fine-tuned at 384 from a 224 run: Swin's 384 fine-tuning recipe on HcNet-T's.

    python train.py --config=configs/finetune_t_384.py --workdir=gs://BUCKET/runs/hcnet_t_384 \\
        --config.init_from=gs://BUCKET/runs/hcnet_t \\
            --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Hardware: as configs/hcnet_t.py; activations grow by (384/224)^2 = 2.9x, so raise optim.accum_steps
(or mesh.fsdp) where the 224 step only just fit. 30 epochs = 37,530 steps. Expected: the paper
reports no 384 result for HcNet; nothing measured here (no ImageNet on this machine).

Nothing in the network depends on the resolution: it has no positional tables, and mean8's
neighbour count is computed from each map's shape, so the 224 weights load unchanged (every array).
Sources: [swin384] Swin's swin_base_patch4_window12_384_finetune.yaml, the values it sets (the rest,
augmentation included, stays at Swin's defaults, as in configs/hcnet_t.py).
"""

from configs import hcnet_t


def get_config():
    c = hcnet_t.get_config()
    c.init_from = "required"  # give --config.init_from=: the run or export to start from
    c.dataset.image_size = 384  # [swin384] DATA.IMG_SIZE
    c.dataset.crop_pct = 1.0  # [swin384] TEST.CROP: False (resize to 384, no centre crop)
    c.epochs = 30.0  # [swin384] TRAIN.EPOCHS
    c.optim.warmup_epochs = 5.0  # [swin384] TRAIN.WARMUP_EPOCHS
    c.optim.weight_decay = 1e-8  # [swin384] TRAIN.WEIGHT_DECAY
    c.optim.lr = 2e-5  # [swin384] TRAIN.BASE_LR, per 512 images (scaled by batch_size / 512)
    c.optim.warmup_lr = 2e-8  # [swin384] TRAIN.WARMUP_LR
    c.optim.min_lr = 2e-7  # [swin384] TRAIN.MIN_LR
    c.model.drop_path = 0.2  # HcNet-T's own (the yaml's 0.5 is Swin-B's)
    return c
