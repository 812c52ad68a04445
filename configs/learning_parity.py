"""Learning parity: HcNet-mu on five classes of photo crops, the run the PyTorch statement is set
beside.

    # makes the data, runs all
    python -m reference.learning_parity --workdir=/tmp/hcnet-learning-parity

or one run by hand, once the tool has prepared the data:

    python train.py --config=configs/learning_parity.py --workdir=DIR \
        --config.dataset.data_dir=/tmp/hcnet-learning-parity/tfds --config.seed=0

Hardware: any CPU (about a minute a run on 2 cores). Data: 48 small random crops of each of five of
scikit-image's sample photographs, as ILSVRC2012 tars through the real imagenet2012 builder; trained
on train[:80%], scored on train[80%:]. Expected (BENCHMARKS.md, learning parity; 10 seeds on a
2-core AMD EPYC): held-out top-1 0.921 (0.875-0.979), mean training loss over the last 40 updates
1.310; the PyTorch statement of the reference on the same batches: 0.935 and 1.300.
"""

from hcnet.config import NO_AUGMENTATION, defaults


def get_config():
    c = defaults()
    c.batch_size = 16
    c.total_steps = 400
    c.log_every_steps = 40  # the last log: the mean training loss over the last 40 updates
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 400
    c.keep_checkpoints = 1

    c.model.variant = "mu"
    c.model.drop_path = 0.0
    c.model.dtype = "float32"

    c.dataset.name = "imagenet2012"
    c.dataset.train_split = "train[:80%]"
    c.dataset.eval_split = "train[80%:]"
    c.dataset.image_size = 64
    c.dataset.num_classes = 1000  # the builder's classes; five of them hold images
    c.dataset.crop_pct = 0.875
    c.dataset.threads = 2

    c.augment.update(NO_AUGMENTATION)
    c.augment.smoothing = 0.1

    c.optim.lr = 1e-3
    c.optim.warmup_lr = 1e-5
    c.optim.min_lr = 1e-5
    c.optim.scale_by_batch = 0  # the lr as given
    c.optim.warmup_steps = 20
    return c
