"""Mask R-CNN + HcNet-T on COCO 2017, Swin's 3x multi-scale schedule (the paper's Table 3: box AP
47.6, mask AP 42.8): configs/mask_rcnn_hcnet_t_coco_1x.py for 36 epochs with lr x 0.1 after epochs
27 and 33 ([swin] mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco.py, the same
multi-scale pipeline with its crop branch).

    python train.py --config=configs/mask_rcnn_hcnet_t_coco_3x.py \\
        --workdir=gs://BUCKET/runs/mrcnn_t_3x --config.init_from=gs://BUCKET/runs/hcnet_t \\
        --config.dataset.data_dir=gs://BUCKET/coco
"""

from configs import mask_rcnn_hcnet_t_coco_1x


def get_config():
    c = mask_rcnn_hcnet_t_coco_1x.get_config()
    c.epochs = 36
    c.optim.milestones = (27, 33)
    return c
