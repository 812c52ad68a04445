"""A smoke test: HcNet-mu on 32 px synthetic data for 8 steps, in seconds; what the tests train (the
recipe on the device except RandAugment; EMA, drop path, checkpoints and evaluation).

    python train.py --config=configs/smoke.py --workdir=/tmp/hcnet-smoke

Hardware: any CPU. Expected: it runs, checkpoints and evaluates; synthetic labels carry no signal,
so eval/top1 stays near chance (0.1).
"""

from hcnet.config import defaults


def get_config():
    c = defaults()
    c.batch_size = 16
    c.total_steps = 8
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 4
    c.keep_checkpoints = 2

    c.model.variant = "mu"
    c.model.drop_path = 0.1
    c.model.dtype = "float32"

    c.dataset.name = "synthetic"
    c.dataset.train_split = "train[:256]"
    c.dataset.eval_split = "validation[:40]"
    c.dataset.image_size = 32
    c.dataset.num_classes = 10
    c.dataset.threads = 2

    # the rest of the recipe on the device (erasing, mixup / cutmix, label smoothing) but not
    # RandAugment: it is a third of the step's compile time and tests/test_augment.py checks it op
    # by op, statistically and jitted on a sharded batch; a smoke run cost 11 s more to compile with
    # it
    c.augment.randaugment = ""
    c.optim.scale_by_batch = 0
    c.optim.warmup_steps = 2
    c.optim.ema_decay = 0.9  # exercises EMA evaluation
    return c
