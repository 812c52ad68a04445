"""HcNet-T from an ImageNet checkpoint onto your own images (an image folder prepared with
hcnet.tools.prepare), on one host.

    python -m hcnet.tools.prepare --dataset=image_folder --manual_dir=ROOT --name=flowers \\
        --data_dir=DIR
    python train.py --config=configs/transfer_folder.py --workdir=RUN \\
        --config.init_from=IMAGENET_RUN_OR_EXPORT \\
        --config.dataset.name=flowers --config.dataset.data_dir=DIR --config.dataset.num_classes=N

ROOT holds ROOT/train/<class>/<image> and ROOT/test/<class>/<image>. Hardware: one GPU (or a CPU for
small folders). Expected: depends on your data; configs/digits_transfer.py is the same path at the
size of this machine, with its measured figures. The head is new (another class count); the backbone
fine-tunes with layer-wise lr decay, no mixing and light drop path, as BEiT's and MAE's fine-tunes
do ([mae] --layer_decay 0.75, --drop_path 0.1 in MAE's fine-tuning commands); the rest is this
project's choice.
"""

from configs import hcnet_t


def get_config():
    c = hcnet_t.get_config()
    c.init_from = "required"  # give --config.init_from=: the run or export to start from
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
    return c
