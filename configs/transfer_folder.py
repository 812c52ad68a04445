"""HcNet-T on your own images (an image folder prepared with hcnet.tools.prepare), on one host:
fine-tuned from an ImageNet run of your own, or (`:scratch`) trained from scratch.

    python -m hcnet.tools.prepare --dataset=image_folder --manual_dir=ROOT --name=flowers \\
        --data_dir=DIR
    python train.py --config=configs/transfer_folder.py --workdir=RUN \\
        --config.init_from=IMAGENET_RUN_OR_EXPORT \\
        --config.dataset.name=flowers --config.dataset.data_dir=DIR --config.dataset.num_classes=N
    python train.py --config=configs/transfer_folder.py:scratch --workdir=RUN \\
        --config.dataset.name=flowers --config.dataset.data_dir=DIR --config.dataset.num_classes=N

No pretrained HcNet weights are published (the authors' repository has none, and none has been
trained here), so fine-tuning starts from an ImageNet run you trained (configs/hcnet_t.py) or
weights you converted; without one, `:scratch` trains the same network from a fresh init with the
ImageNet recipe's learning rate and augmentation. ROOT holds ROOT/train/<class>/<image> and
ROOT/test/<class>/<image>; a folder with val/ instead of test/ takes
--config.dataset.eval_split=val. N is the number of class folders. Hardware: one GPU (or a CPU for
small folders and --config.model.variant=mu). Expected: depends on your data; from scratch lands
below fine-tuning, and the smaller the folder the further (configs/digits_transfer.py measures both
at a CPU's size: top-1 0.708 from scratch against 0.809 fine-tuned on 50 images).
Fine-tuning: the head is new (another class count); the backbone fine-tunes with layer-wise lr
decay, no mixing and light drop path, as BEiT's and MAE's fine-tunes do ([mae] --layer_decay 0.75,
--drop_path 0.1 in MAE's fine-tuning commands); the rest is this project's choice.
"""

from configs import hcnet_t


def get_config(start: str = "pretrained"):
    """start: 'pretrained' (give --config.init_from) or 'scratch'."""
    if start not in ("pretrained", "scratch"):
        raise ValueError(f"configs/transfer_folder.py:{start}: 'pretrained' or 'scratch'")
    c = hcnet_t.get_config()
    c.init_from = "required" if start == "pretrained" else ""  # the run or export to start from
    c.init_ema = False
    c.batch_size = 64
    c.epochs = 30.0
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.dataset.name = ""  # required: the folder's dataset name (--name of prepare)
    c.dataset.train_split = "train"
    c.dataset.eval_split = "test"
    c.dataset.threads = 8
    c.optim.scale_by_batch = 0  # the lr as given
    c.optim.lr = 1e-4
    c.optim.warmup_lr = 1e-6
    c.optim.min_lr = 1e-6
    c.optim.warmup_epochs = 2.0
    c.optim.layer_decay = 0.75  # [mae]
    c.model.drop_path = 0.1  # [mae]
    c.augment.mixup = 0.0  # no mixing
    c.augment.cutmix = 0.0
    if start == "scratch":  # hcnet_t.py's lr (not scaled down to this batch), its augmentation
        c.epochs = 100.0
        c.optim.lr, c.optim.warmup_lr, c.optim.min_lr = 1e-3, 5e-7, 5e-6
        c.optim.warmup_epochs = 5.0
        c.optim.layer_decay = 1.0
        c.model.drop_path = 0.1
        hcnet = hcnet_t.get_config().augment
        c.augment.mixup, c.augment.cutmix = hcnet.mixup, hcnet.cutmix
    return c
