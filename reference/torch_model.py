"""A PyTorch statement of HcNet (NCHW) and of the reference's training step, named as its
state_dicts are.

Only for making parity fixtures and for side-by-side benchmarks: the suite never imports torch. Any
input size works (the mean8 neighbour count is computed from the input's shape); a `mean_num` buffer
sized for `img_size` is still registered, as the reference's checkpoints hold one. The network
starts as the reference's does: trunc_normal(0.02) and zero biases on the head and on every
convolution inside a block, nn.Conv2d's own init on the stem and downsampling convolutions. The
training step (`train_steps`) is the reference's main.py loop: Swin's weight-decay groups, timm's
label-smoothing loss, global-norm clipping, torch's AdamW and timm's cosine scheduler stepped after
each update.

  python -m reference.fixtures --out=tests/fixtures
"""

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hcnet import paths
from hcnet.data.augment import MEAN as IMAGENET_MEAN
from hcnet.data.augment import STD as IMAGENET_STD
from hcnet.layers import drop_path_rates
from hcnet.model import HEAT_OPERATORS, VARIANTS
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
        setattr(
            self, filter_name, nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        )
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
            self.register_buffer(
                "mean_num", torch.from_numpy(neighbour_count(*resolution)[None, None, ..., 0])
            )
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


def trunc_normal_init(module: nn.Module):
    """The reference's _init_weights: trunc_normal(std 0.02, cut at +-2) weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class TorchHcNet(nn.Module):
    def __init__(
        self,
        depths,
        dims,
        *,
        num_classes=1000,
        in_chans=3,
        heat_operator="mean8",
        drop_path=0.0,
        dropout=0.0,
        img_size=224,
        conv_init="torch_default",
    ):
        super().__init__()
        self.patch_embed = Stem(in_chans, dims[0])
        self.stem_drop = nn.Dropout(dropout if heat_operator != "learned5" else 0.0)
        rates, layers, res = (
            iter(drop_path_rates(depths, drop_path)),
            [],
            (img_size // 4, img_size // 4),
        )
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            blocks = [Block(dim, heat_operator, res, next(rates), dropout) for _ in range(depth)]
            layers.append(
                Layer(blocks, Downsample(dim, dims[i + 1]) if i + 1 < len(dims) else None)
            )
            res = (res[0] // 2, res[1] // 2)
        self.layers = nn.ModuleList(layers)
        self.norm = group_norm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        for (
            layer
        ) in self.layers:  # the reference's blocks re-initialise every conv inside them, its
            layer.blocks.apply(
                trunc_normal_init
            )  # network the Linear head; stem and downsample keep torch's
        trunc_normal_init(self.head)
        if (
            conv_init == "trunc_normal"
        ):  # hcnet.model's other form: stem and downsample as the blocks
            self.patch_embed.apply(trunc_normal_init)
            for layer in self.layers:
                if layer.downsample is not None:
                    layer.downsample.apply(trunc_normal_init)

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
    return (
        np.random.RandomState(height * 1000 + width)
        .standard_normal((batch, 3, height, width))
        .astype(np.float32)
    )


def write_fixtures(out_dir: paths.Path):
    """For each operator form: a randomised mu state_dict and its logits at FIXTURE_SIZES."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)  # the expected logits carry no float32 rounding
    for seed, form in enumerate(HEAT_OPERATORS):
        model = TorchHcNet(**VARIANTS["mu"], heat_operator=form, num_classes=10).eval()
        randomize(model, seed)
        state = {k: v.float().numpy() for k, v in model.state_dict().items()}
        np.savez(out_dir / f"parity_{form}.npz", **state)
        with torch.no_grad():
            logits = {
                f"{h}x{w}": model(torch.from_numpy(fixture_input(h, w)).double())
                .numpy()
                .astype(np.float32)
                for h, w in FIXTURE_SIZES
            }
        np.savez(out_dir / f"parity_{form}_logits.npz", **logits)
        print(f"wrote {form}: {len(state)} tensors, logits at {', '.join(logits)}")


# ---------------------------------------------------------------- the reference's training step
def reference_lr(t, *, lr, warmup_lr, min_lr, warmup_steps, total_steps):
    """timm's CosineLRScheduler(t_initial=total, warmup_t=warmup, cycle_limit=1, t_in_epochs=False)
    at t."""
    if t < warmup_steps:
        return warmup_lr + t * (lr - warmup_lr) / warmup_steps
    if t >= total_steps:
        return min_lr
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t / total_steps))


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Swin's set_weight_decay: no decay on 1-D parameters and on names ending in .bias."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def label_smoothing_loss(logits, labels, smoothing: float):
    """timm's LabelSmoothingCrossEntropy (what the reference uses when mixup is off)."""
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, labels[:, None])[:, 0]
    return ((1.0 - smoothing) * nll - smoothing * logp.mean(dim=-1)).mean()


def normalize(images: np.ndarray, dtype=torch.float64):
    """uint8 NHWC -> (x / 255 - mean) / std, NCHW (torchvision's ToTensor then Normalize)."""
    x = torch.from_numpy(images).to(dtype).permute(0, 3, 1, 2) / 255.0
    mean, std = (
        torch.tensor(v, dtype=dtype).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD)
    )
    return (x - mean) / std


def train_steps(
    model: nn.Module,
    batches,
    *,
    steps: int,
    lr: float,
    warmup_lr: float,
    min_lr: float,
    warmup_steps: int,
    weight_decay: float,
    clip_norm: float,
    smoothing: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> dict:
    """The reference's loop for `steps` updates over `batches` [(uint8 NHWC images, labels)],
    cycled.

    Per update: loss, backward, clip_grad_norm_ over all parameters, AdamW step, then the
    scheduler's step_update(n) sets the next update's lr (so update 0 runs at warmup_lr, update n at
    lr(n - 1)). Returns each update's loss, gradient norm before clipping and lr.
    """
    dtype = next(model.parameters()).dtype
    schedule = dict(
        lr=lr, warmup_lr=warmup_lr, min_lr=min_lr, warmup_steps=warmup_steps, total_steps=steps
    )
    opt = torch.optim.AdamW(
        weight_decay_groups(model, weight_decay), lr=lr, betas=(b1, b2), eps=eps
    )
    for group in opt.param_groups:  # timm's scheduler starts the optimizer at warmup_lr_init
        group["lr"] = warmup_lr if warmup_steps else lr
    model.train()
    out = {"loss": [], "grad_norm": [], "lr": []}
    for n in range(steps):
        images, labels = batches[n % len(batches)]
        out["lr"].append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        loss = label_smoothing_loss(
            model(normalize(images, dtype)), torch.from_numpy(labels).long(), smoothing
        )
        loss.backward()
        out["grad_norm"].append(
            float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm))
        )
        opt.step()
        for group in opt.param_groups:  # lr_scheduler.step_update(n)
            group["lr"] = reference_lr(n, **schedule)
        out["loss"].append(float(loss.detach()))
    return {k: np.asarray(v) for k, v in out.items()}


# The step-parity fixture: mu on real photo crops, every part of the recipe switched on; the clip
# norm is chosen per form (write_step_fixtures) so that some updates clip and some do not.
STEP_RECIPE = dict(
    steps=24,
    lr=2e-3,
    warmup_lr=1e-5,
    min_lr=1e-5,
    warmup_steps=4,
    weight_decay=0.05,
    smoothing=0.1,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
)
STEP_DATA = dict(batches=3, batch=8, image_size=64, seed=0)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def photo_crops(
    count: int, size: int, seed: int, sides=(0.25, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """`count` random square crops (sides a fraction in `sides` of the short side) of scikit-image's
    sample photographs, resized to `size` (bicubic), labelled by photograph: (uint8 NHWC, int
    labels)."""
    import skimage.data
    from PIL import Image

    rng = np.random.RandomState(seed)
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    images, labels = [], []
    for i in range(count):
        label = i % len(photos)
        a = photos[label]
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        short = min(a.shape[:2])
        side = rng.randint(int(sides[0] * short), int(sides[1] * short) + 1)
        y, x = rng.randint(0, a.shape[0] - side + 1), rng.randint(0, a.shape[1] - side + 1)
        crop = Image.fromarray(a[y : y + side, x : x + side, :3]).resize(
            (size, size), Image.Resampling.BICUBIC
        )
        images.append(np.asarray(crop))
        labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32)


def write_step_fixtures(out_dir: paths.Path, forms=("mean8", "learned5")):
    """For each form: the reference-initialised mu weights, STEP_RECIPE's updates of them in float64
    on fixed photo batches, and the trajectory (loss, gradient norm, lr per update)."""
    torch.set_default_dtype(torch.float32)  # the initial weights are float32 draws, as a run's are
    d = STEP_DATA
    images, labels = photo_crops(d["batches"] * d["batch"], d["image_size"], d["seed"])
    images = images.reshape(d["batches"], d["batch"], *images.shape[1:])
    labels = labels.reshape(d["batches"], d["batch"])
    batches = list(zip(images, labels))
    for seed, form in enumerate(forms):
        torch.manual_seed(seed)
        model = TorchHcNet(
            **VARIANTS["mu"], heat_operator=form, num_classes=len(PHOTOS), img_size=d["image_size"]
        )
        init = {k: v.numpy().copy() for k, v in model.state_dict().items()}  # float32 draws
        # the median of the unclipped gradient norms: about half the updates clip
        probe = train_steps(
            copy.deepcopy(model).double(), batches, **STEP_RECIPE, clip_norm=math.inf
        )
        recipe = {**STEP_RECIPE, "clip_norm": float(np.round(np.median(probe["grad_norm"]), 3))}
        trajectory = train_steps(model.double(), batches, **recipe)
        final = {k: v.float().numpy() for k, v in model.state_dict().items()}
        np.savez_compressed(
            out_dir / f"steps_{form}.npz",
            images=images,
            labels=labels,
            **{f"recipe.{k}": v for k, v in recipe.items()},
            **{f"torch.{k}": v for k, v in trajectory.items()},
            **{f"init.{k}": v for k, v in init.items()},
            **{f"final.{k}": v for k, v in final.items()},
        )
        clipped = int((trajectory["grad_norm"] > recipe["clip_norm"]).sum())
        print(
            f"wrote steps_{form}: {recipe['steps']} updates, {clipped} clipped at "
            f"{recipe['clip_norm']}, "
            f"loss {trajectory['loss'][0]:.4f} -> {trajectory['loss'][-1]:.4f}"
        )
