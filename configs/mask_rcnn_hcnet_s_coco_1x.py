"""Mask R-CNN + HcNet-S on COCO 2017, Swin's 1x schedule (the paper's Table 3: box AP 47.6,
mask AP 43.1):
configs/mask_rcnn_hcnet_t_coco_1x.py with the S backbone and drop path 0.2, as Swin's Swin-S
Mask R-CNN configs set it.

    python train.py --config=configs/mask_rcnn_hcnet_s_coco_1x.py \\
        --workdir=gs://BUCKET/runs/mrcnn_s --config.init_from=gs://BUCKET/runs/hcnet_s \\
        --config.dataset.data_dir=gs://BUCKET/coco
"""

from configs import mask_rcnn_hcnet_t_coco_1x


def get_config():
    c = mask_rcnn_hcnet_t_coco_1x.get_config()
    c.model.variant = "S"
    c.model.drop_path = 0.2
    return c
