"""The segmentation quickstart: UperNet on HcNet-mu, trained from scratch on hcnet_collages
(collages cut from four real photographs, 96x72, the mask naming each pixel's photograph).

    python train.py --config=configs/seg_quickstart.py --workdir=/tmp/hcnet-seg-quickstart

Hardware: any CPU; 2m53 on a 2-core Intel Xeon VM (first step compiled in 41 s). Expected: eval/mIoU
about 0.83 on the 120 test collages (measured 0.8326, mAcc 0.9110; `eval.py --multiscale` 0.8448); a
constant answer scores at most 0.25, a uniform guess about 0.14. The dataset builds itself on first
use in ~/tensorflow_datasets (or dataset.data_dir); nothing downloads.

The recipe is the ADE20K one's shape (mmseg's pipeline, the auxiliary head, AdamW with poly decay),
at this size: 64x64 crops of collages rescaled around their own size, a mu backbone, 64-channel
heads, and a learning rate for training from scratch rather than from an ImageNet backbone.
"""

from configs import upernet_hcnet_t_ade20k


def get_config():
    c = upernet_hcnet_t_ade20k.get_config()
    c.init_from = ""
    c.batch_size = 16
    c.total_steps = 600
    c.log_every_steps = 50
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300

    c.model.variant = "mu"
    c.model.drop_path = 0.1
    c.model.dtype = "float32"  # CPUs gain nothing from bf16

    c.dataset.name = "hcnet_collages"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "test"
    c.dataset.num_classes = 4
    c.dataset.threads = 2

    s = c.segmentation
    s.channels, s.aux_channels = 64, 32
    s.crop = (64, 64)
    s.scale = (128, 72)  # a collage (96x72) keeps its size at ratio 1
    s.eval_mode = "whole"  # every test collage is 96x72: one compiled shape

    o = c.optim
    o.lr = 2e-3
    o.warmup_steps = 30
    o.warmup_lr = 2e-3 * 1e-3
    o.weight_decay = 0.01
    o.clip_norm = 5.0
    return c
