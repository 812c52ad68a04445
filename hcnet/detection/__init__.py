"""Mask R-CNN's parts on HcNet, in JAX with static shapes (boxes, anchors, NMS, RoIAlign, target
assignment, losses, COCO evaluation), each stated as mmdetection 2.11 computes it for Swin's
`mask_rcnn_swin_fpn` config, which the paper's Table 3 follows."""
