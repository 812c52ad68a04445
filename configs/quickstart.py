"""The quickstart: HcNet-mu on the embedded digits (scikit-learn's 8x8 digits, shown at 32 px).

    python train.py --config=configs/quickstart.py --workdir=/tmp/hcnet-quickstart

Hardware: any CPU; about 2 minutes on a 2-core machine. Expected: eval/top1 >= 0.95 on the 360 test
digits (measured 0.9611 with this recipe). Nothing downloads: the dataset is built from scikit-learn
on first use in ~/tensorflow_datasets (or dataset.data_dir).
"""

from hcnet.config import NO_AUGMENTATION, defaults


def get_config():
    c = defaults()
    c.batch_size = 64
    c.epochs = 40.0  # 1437 training digits: 22 updates an epoch, 880 steps
    c.log_every_steps = 100
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
    c.keep_checkpoints = 2

    c.model.variant = "mu"
    c.model.drop_path = 0.0
    c.model.dtype = "float32"  # CPUs gain nothing from bf16

    c.dataset.name = "hcnet_digits"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "test"
    c.dataset.image_size = 32
    c.dataset.num_classes = 10
    c.dataset.crop_pct = 1.0  # the digit fills the image: no centre crop
    c.dataset.scale = (0.5, 1.0)
    c.dataset.hflip = 0.0  # a mirrored digit is another symbol
    c.dataset.threads = 2

    c.augment.update(NO_AUGMENTATION)
    c.augment.smoothing = 0.1

    c.optim.lr = 2e-3
    c.optim.warmup_lr = 1e-5
    c.optim.min_lr = 1e-5
    c.optim.scale_by_batch = 0  # the lr as given
    c.optim.warmup_epochs = 2.0
    return c
