"""UperNet + HcNet-B on ADE20K: configs/upernet_hcnet_t_ade20k.py with the B backbone (the paper's
Table 4).

    python train.py --config=configs/upernet_hcnet_b_ade20k.py \\
        --workdir=gs://BUCKET/runs/upernet_hcnet_b \\
        --config.init_from=gs://BUCKET/runs/hcnet_b \\
            --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Hardware: as the T config (batch 16 over 8 GPUs or 8-16 TPU chips). Expected (Table 4): 51.0
single-scale and 51.5 multi-scale mIoU; 96M parameters, 1095G MACs at 512x2048. Nothing measured
here. Sources: [swinb] upernet_swin_base_patch4_window7_512x512_160k_ade20k.py: the T setting with
the base backbone; its decode head's in_channels follow the backbone (here HcNet-B's 96, 192, 384,
768).
"""

from configs import upernet_hcnet_t_ade20k


def get_config():
    c = upernet_hcnet_t_ade20k.get_config()
    c.model.variant = "B"
    c.model.drop_path = 0.3  # [swinb] drop_path_rate=0.3
    return c
