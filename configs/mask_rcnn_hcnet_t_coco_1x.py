"""Mask R-CNN + HcNet-T on COCO 2017, Swin's 1x schedule (the paper's Table 3: box AP 46.0, mask AP
41.9).

    python train.py --config=configs/mask_rcnn_hcnet_t_coco_1x.py \\
        --workdir=gs://BUCKET/runs/mrcnn_t --config.init_from=gs://BUCKET/runs/hcnet_t \\
        --config.dataset.data_dir=gs://BUCKET/coco

dataset.data_dir holds COCO as cocodataset.org ships it: train2017/, val2017/ and
annotations/instances_{train,val}2017.json (docs/detection.md). Compiled ahead of time for a TPU
slice and a GPU node: BENCHMARKS.md, "Compiled ahead of time".

Where each value comes from ([swin] Swin-Transformer-Object-Detection's
mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_1x_coco.py and the mmdet 2.11 _base_
files it names; [mmdet] mmdetection's schedule_1x.py): AdamW lr 1e-4, betas (0.9, 0.999), weight
decay 0.05 [swin]; linear warmup over 500 iterations from 0.001 x lr, lr x 0.1 after epochs 8 and
11, 12 epochs [mmdet]; batch 16 (2 images x 8 GPUs) [swin]; drop path 0.2 [swin]; multi-scale
training, shorter side 480 to 800 in steps of 32 with the longer at most 1333, or for half the
images (AutoAugment's second policy) resize 400/500/600, crop 384-600, then 480-800, flip 0.5
[swin]; test at 1333 x 800 [swin]; no gradient clipping [swin] (grad_clip=None); fp16 there, bf16
here. The heads and the train and test settings are hcnet.config.defaults()'s detection section
(mmdet's mask_rcnn_swin_fpn.py).

Differences, stated: weight decay falls on arrays of 2 or more dimensions, where Swin's
paramwise_cfg exempts names containing "norm" (so Swin decays the FPN's and heads' biases and this
does not); RoIAlign samples 2 x 2 points a bin where Swin's sampling_ratio=0 adapts to each RoI's
size; losses are normalised over the global batch where mmdet normalises over each GPU's 2 images;
the box head's NMS looks at the 2,000 best class scores (a static count).
"""

from hcnet.config import NO_AUGMENTATION, defaults

MULTISCALE = tuple((1333, short) for short in range(480, 801, 32))


def get_config():
    c = defaults()
    c.task = "detection"
    c.best_metric = "eval/bbox_AP"
    c.model.variant = "T"
    c.model.drop_path = 0.2
    c.model.dtype = "bfloat16"
    c.dataset.name = "coco"
    c.dataset.train_split, c.dataset.eval_split = "train2017", "val2017"
    c.dataset.num_classes = 80
    c.dataset.threads = 16
    c.augment.update(NO_AUGMENTATION)
    c.detection.scales = MULTISCALE
    c.detection.crop_branch = True
    c.batch_size = 16
    c.epochs = 12
    c.log_every_steps = 50
    c.eval_every_steps = 7330  # every epoch of 117,266 images at batch 16
    c.checkpoint_every_steps = 7330
    o = c.optim
    o.schedule, o.milestones, o.gamma = "step", (8, 11), 0.1
    o.lr, o.warmup_lr, o.warmup_steps, o.scale_by_batch = 1e-4, 1e-7, 500, 0
    o.weight_decay, o.clip_norm = 0.05, 0.0
    return c
