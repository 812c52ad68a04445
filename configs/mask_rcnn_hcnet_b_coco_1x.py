"""Mask R-CNN + HcNet-B on COCO 2017, Swin's 1x schedule (the paper's Table 3: box AP 48.8,
mask AP 44.3):
configs/mask_rcnn_hcnet_t_coco_1x.py with the B backbone and drop path 0.3, as Swin's Swin-B
Mask R-CNN configs set it.

    python train.py --config=configs/mask_rcnn_hcnet_b_coco_1x.py \\
        --workdir=gs://BUCKET/runs/mrcnn_b --config.init_from=gs://BUCKET/runs/hcnet_b \\
        --config.dataset.data_dir=gs://BUCKET/coco
"""

from configs import mask_rcnn_hcnet_t_coco_1x


def get_config():
    c = mask_rcnn_hcnet_t_coco_1x.get_config()
    c.model.variant = "B"
    c.model.drop_path = 0.3
    return c
