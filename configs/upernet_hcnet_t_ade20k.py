"""UperNet + HcNet-T on ADE20K, 512x512 crops, 160k iterations: the paper's Table 4 row (Swin's
ADE20K setting).

    python -m hcnet.tools.prepare --dataset=hcnet_ade20k \\
        --manual_dir=DIR_WITH_ADEChallengeData2016.zip \\
        --data_dir=gs://BUCKET/tensorflow_datasets
    python train.py --config=configs/upernet_hcnet_t_ade20k.py \\
        --workdir=gs://BUCKET/runs/upernet_hcnet_t \\
        --config.init_from=gs://BUCKET/runs/hcnet_t \\
            --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
    # single- and multi-scale rows
    python eval.py --workdir=gs://BUCKET/runs/upernet_hcnet_t --multiscale

Hardware: mmseg's 8 GPUs x 2 images (batch 16), or a TPU slice of 8 or 16 chips (batch 16 over the
data axis). Expected (the paper's Table 4): 48.1 single-scale mIoU, 48.3 multi-scale with flip; 50M
parameters and 851G MACs at 512x2048 (`python -m hcnet.tools.count --segmentation --variant=T` gives
ours). Nothing measured here: no ADE20K and no accelerator on this machine.

init_from: an ImageNet-1K HcNet-T (a training workdir, an export or a converted reference
checkpoint); its backbone arrays load under `backbone/`, its classification head is left out, the
heads start fresh.

Sources: [swin] Swin-Transformer-Semantic-Segmentation's
upernet_swin_tiny_patch4_window7_512x512_160k_ade20k.py and the _base_ files it inherits
(upernet_swin.py, ade20k.py, schedule_160k.py); [mmseg] mmsegmentation 0.x. Where this differs:
[swin] trains in fp16 (DistOptimizerHook use_fp16) where this config computes in bf16; its weight
decay skips parameters whose names contain 'norm' (biases and the heads' BatchNorm decay), where
this project decays parameters of 2 or more dimensions only (hcnet.optim.decay_mask); the test here
is sliding window 512 / 341 (the issue's single-scale protocol, [mmseg]'s slide mode) where [swin]'s
base config says whole-image: set --config.segmentation.eval_mode=whole for that (each image size
then compiles once).
"""

from hcnet.config import defaults


def get_config():
    c = defaults()
    c.task = "segmentation"
    c.init_from = "required"  # give --config.init_from=: the ImageNet HcNet-T run or export
    c.batch_size = 16  # [swin] samples_per_gpu=2 x 8 GPUs
    c.eval_batch_size = 0
    c.total_steps = 160_000  # [swin] runner max_iters=160000
    c.log_every_steps = 50  # [mmseg] log_config interval=50
    c.eval_every_steps = 16_000  # [swin] evaluation interval=16000
    c.checkpoint_every_steps = 16_000  # [swin] checkpoint_config interval=16000
    c.keep_checkpoints = 2
    c.best_metric = "eval/mIoU"

    c.model.variant = "T"
    c.model.drop_path = 0.3  # [swin] backbone drop_path_rate=0.3
    c.model.dtype = "bfloat16"

    c.dataset.name = (
        "hcnet_ade20k"  # ADEChallengeData2016, 150 classes, reduce_zero_label ([mmseg] ade20k.py)
    )
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.num_classes = 150  # [swin] decode_head / auxiliary_head num_classes=150
    c.dataset.threads = 16

    s = c.segmentation
    s.channels = 512  # [swin] decode_head channels=512, pool_scales=(1, 2, 3, 6)
    s.aux_channels = 256  # [swin] auxiliary_head FCNHead channels=256, in_index=2
    s.dropout = 0.1  # [swin] dropout_ratio=0.1 (both heads)
    s.aux_weight = 0.4  # [swin] auxiliary_head loss_weight=0.4
    s.crop = (512, 512)  # [mmseg] ade20k.py crop_size=(512, 512)
    s.scale = (2048, 512)  # [mmseg] Resize img_scale=(2048, 512)
    s.ratio_range = (0.5, 2.0)  # [mmseg] ratio_range=(0.5, 2.0)
    s.cat_max_ratio = 0.75  # [mmseg] RandomCrop cat_max_ratio=0.75
    s.flip = 0.5  # [mmseg] RandomFlip prob=0.5
    s.photometric = True  # [mmseg] PhotoMetricDistortion
    s.eval_mode, s.eval_stride = (
        "slide",
        (341, 341),
    )  # sliding 512x512 windows, stride 341 (see above)
    s.ms_ratios = ()  # eval.py's multi-scale: [mmseg] img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    s.ms_flip = True  # [mmseg] MultiScaleFlipAug flip=True (aug_test)

    o = c.optim
    o.schedule = "poly"  # [swin] lr_config policy='poly', power=1.0, min_lr=0.0, by_epoch=False
    o.power = 1.0
    o.lr = 6e-5  # [swin] AdamW lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01
    o.scale_by_batch = 0  # the lr as given, for batch 16
    o.b1, o.b2 = 0.9, 0.999
    o.weight_decay = 0.01
    o.min_lr = 0.0
    o.warmup_steps = 1500  # [swin] warmup='linear', warmup_iters=1500
    o.warmup_lr = 6e-5 * 1e-6  # [swin] warmup_ratio=1e-6 (of the lr)
    o.clip_norm = 0.0  # [swin] grad_clip=None
    return c
