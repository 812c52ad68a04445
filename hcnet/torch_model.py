"""A PyTorch statement of HcNet (NCHW), named as the reference's state_dicts are.

Only for making parity fixtures and for side-by-side benchmarks: the suite never imports torch.
Any input size works (the mean8 neighbour count is computed from the input's shape); a
`mean_num` buffer sized for `img_size` is still registered, as the reference's checkpoints hold one.

  python -m hcnet.tools.torch_fixtures --out=tests/fixtures
"""
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hcnet.model import HEAT_OPERATORS, VARIANTS, drop_path_rates
from hcnet.stencils import neighbour_count


def drop_path(x, rate, training):
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    return x * x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep) / keep


def group_norm(dim):
    return nn.GroupNorm(1, dim, eps=1e-5)


class RA(nn.Module):
    def __init__(self, dim, hidden, filter_name, dropout):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.filter_name = filter_name
        setattr(self, filter_name, nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = getattr(self, self.filter_name)(F.gelu(self.fc1(x)))
        return self.drop(self.fc2(self.drop(x)))


class Block(nn.Module):
    def __init__(self, dim, heat_operator, resolution, drop_path_rate, dropout):
        super().__init__()
        self.heat_operator, self.rate = heat_operator, drop_path_rate
        self.gate_name = "DeltaT_DeltaD" if heat_operator == "learned5" else "fc_0"
        setattr(self, self.gate_name, nn.Conv2d(dim, dim, 1, bias=False))
        if heat_operator == "mean8":
            self.register_buffer("mean_num", torch.from_numpy(neighbour_count(*resolution)[None, None, ..., 0]))
        else:
            k = 3 if heat_operator == "learned3" else 5
            self.Anisotropic_conv = nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False)
        self.norm2 = group_norm(dim)
        self.mlp = RA(dim, 4 * dim, "dwconv" if heat_operator == "mean8" else "Filters", dropout)

    def laplacian(self, x):
        if self.heat_operator == "mean8":
            count = torch.from_numpy(neighbour_count(*x.shape[2:])[..., 0]).to(x)
            around = F.avg_pool2d(x, 3, 1, 1, count_include_pad=True) * 9.0 - x
            return around / count - x
        w = self.Anisotropic_conv.weight  # (C, 1, k, k)
        total = w.sum(dim=(-2, -1)).view(1, -1, 1, 1)
        conv = self.Anisotropic_conv(x)
        if self.heat_operator == "learned5":
            return conv - x * total
        c = w.shape[-1] // 2
        return conv - x * w[:, :, c, c].view(1, -1, 1, 1) - 2.0 * x * total

    def forward(self, x):
        k = torch.sigmoid(getattr(self, self.gate_name)(x.mean(dim=(2, 3), keepdim=True)))
        dx = k * self.laplacian(x)
        x = x + (drop_path(dx, self.rate, self.training) if self.heat_operator == "mean8" else dx)
        return x + drop_path(self.mlp(self.norm2(x)), self.rate, self.training)


class Downsample(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.reduction = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.norm = group_norm(cout)

    def forward(self, x):
        return self.norm(self.reduction(x))


class Layer(nn.Module):
    def __init__(self, blocks, downsample):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class Stem(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, dim // 2, 3, stride=2, padding=1)
        self.norm1 = group_norm(dim // 2)
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = group_norm(dim)

    def forward(self, x):
        return self.norm2(self.conv2(F.gelu(self.norm1(self.conv1(x)))))


class TorchHcNet(nn.Module):
    def __init__(self, depths, dims, *, num_classes=1000, in_chans=3, heat_operator="mean8",
                 drop_path=0.0, dropout=0.0, img_size=224):
        super().__init__()
        self.patch_embed = Stem(in_chans, dims[0])
        self.stem_drop = nn.Dropout(dropout if heat_operator != "learned5" else 0.0)
        rates, layers, res = iter(drop_path_rates(depths, drop_path)), [], (img_size // 4, img_size // 4)
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            blocks = [Block(dim, heat_operator, res, next(rates), dropout) for _ in range(depth)]
            layers.append(Layer(blocks, Downsample(dim, dims[i + 1]) if i + 1 < len(dims) else None))
            res = (res[0] // 2, res[1] // 2)
        self.layers = nn.ModuleList(layers)
        self.norm = group_norm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        x = self.stem_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(dim=(2, 3)))


def randomize(model: nn.Module, seed: int):
    """Every parameter drawn at random (norm scales near 1), so parity exercises each one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_((1.0 + 0.1 * noise if is_norm_scale else 0.1 * noise).float())  # float32 values


FIXTURE_SIZES = ((224, 224), (160, 96))  # square, and non-square with odd stage sizes


def fixture_input(height, width, batch=2):
    """The parity input, NCHW float32, reproducible from numpy's frozen legacy generator."""
    return np.random.RandomState(height * 1000 + width).standard_normal((batch, 3, height, width)).astype(np.float32)


def write_fixtures(out_dir: pathlib.Path):
    """For each operator form: a randomised mu state_dict and its logits at FIXTURE_SIZES."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)  # the expected logits carry no float32 rounding
    for seed, form in enumerate(HEAT_OPERATORS):
        model = TorchHcNet(**VARIANTS["mu"], heat_operator=form, num_classes=10).eval()
        randomize(model, seed)
        state = {k: v.float().numpy() for k, v in model.state_dict().items()}
        np.savez(out_dir / f"parity_{form}.npz", **state)
        with torch.no_grad():
            logits = {f"{h}x{w}": model(torch.from_numpy(fixture_input(h, w)).double()).numpy().astype(np.float32)
                      for h, w in FIXTURE_SIZES}
        np.savez(out_dir / f"parity_{form}_logits.npz", **logits)
        print(f"wrote {form}: {len(state)} tensors, logits at {', '.join(logits)}")
