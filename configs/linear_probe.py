"""A linear probe of a pretrained HcNet-T: only the head trains, on frozen features.

    python train.py --config=configs/linear_probe.py --workdir=DIR \\
        --config.init_from=PRETRAINED_RUN_OR_EXPORT \\
        [--config.dataset.name=NAME --config.dataset.num_classes=N]

Hardware: one GPU or TPU host is plenty (only the head's gradient updates anything; the backbone's
forward and backward still run). Expected: nothing measured here for ImageNet (no ImageNet on this
machine). The head is left new when the class count differs from the checkpoint's, and trained with
AdamW on the plain crops: no RandAugment, erasing, mixing, smoothing or drop path, which would
perturb fixed features; the backbone, GroupNorm included (no running statistics), stays exactly as
loaded. The values below are this project's choice, not a published recipe.
"""

from configs import hcnet_t
from hcnet.config import NO_AUGMENTATION


def get_config():
    c = hcnet_t.get_config()
    c.init_from = "required"  # give --config.init_from=: the run or export to start from
    c.init_skip = ("^head/",)  # a fresh head even for the same classes
    c.optim.trainable = "^head/"
    c.epochs = 90.0
    c.optim.warmup_epochs = 5.0
    c.optim.lr = 1e-3  # per 512 images
    c.optim.weight_decay = 0.0
    c.model.drop_path = 0.0
    c.augment.update(NO_AUGMENTATION)
    c.augment.smoothing = 0.0
    return c
