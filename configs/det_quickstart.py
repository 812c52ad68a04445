"""Mask R-CNN on HcNet-mu, learning the embedded instance collages on a CPU in minutes.

    python train.py --config=configs/det_quickstart.py --workdir=/tmp/hcnet-det-quickstart

`hcnet_instances` (built in memory, nothing downloads): 400 training and 80 validation collages of
128 x 96, each a background cut from one of scikit-image's photographs (chelsea, coffee,
astronaut, rocket) with one to four ellipses or rectangles cut from the other three; each is an
object of its photograph's class with its exact mask. What the network learns: where each cut-out
is and which photograph it comes from. Box and mask AP by COCOeval on the 80 validation images
(BENCHMARKS.md, "Quickstarts and small runs").

The heads are narrower than Swin's (64 channels, 256-wide box head, two mask convolutions) and the
counts of anchors and RoIs smaller, so that a CPU trains it; the recipe is Swin's otherwise (AdamW,
weight decay 0.05, linear warmup from 0.001 x lr, step decay x0.1 late in training), at a learning
rate for a backbone that starts from scratch.
"""

from hcnet.config import NO_AUGMENTATION, defaults


def get_config():
    c = defaults()
    c.task = "detection"
    c.best_metric = "eval/bbox_AP"
    c.model.variant = "mu"
    c.model.drop_path = 0.0
    c.model.dtype = "float32"
    c.dataset.name = "hcnet_instances"
    c.dataset.train_split, c.dataset.eval_split = "train", "val"
    c.dataset.num_classes = 4
    c.dataset.threads = 4
    c.augment.update(NO_AUGMENTATION)
    d = c.detection
    d.canvas = (128, 128)
    d.scales = ((128, 96),)
    d.test_scale = (128, 96)
    d.max_instances = 4
    d.channels, d.fc_channels, d.mask_convs = 64, 256, 2
    d.rpn_train_pre, d.rpn_test_pre, d.rpn_post = 500, 300, 200
    d.rpn_samples, d.roi_samples, d.rcnn_pre, d.max_detections = 128, 128, 400, 20
    c.batch_size = 8
    c.epochs = 12
    c.log_every_steps = 50
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 300
    o = c.optim
    o.schedule, o.milestones, o.gamma = "step", (8, 11), 0.1
    o.lr, o.warmup_lr, o.warmup_steps, o.scale_by_batch = 1e-3, 1e-6, 50, 0
    o.weight_decay, o.clip_norm = 0.05, 0.0
    return c
