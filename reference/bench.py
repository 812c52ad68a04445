"""HcNet's training and inference throughput in JAX (hcnet.measure.bench) beside the project's
PyTorch statement of it (reference/torch_model.py), in one run; from the repository root, with torch
installed:

    python -m reference.bench --variant=T --batch=16 --image_size=224 [--mode=train,infer] \\
        [--repeats=5]
        [--dtype=float32] [--torch_compile] [--channels_last] [--json]
"""

import time

from absl import flags

from hcnet import hostenv, tools
from hcnet.errors import UserError

flags.DEFINE_string("dtype", "float32", "compute dtype: float32, bfloat16 or float16")
flags.DEFINE_list("mode", ["train", "infer"], "train, infer or both")
flags.DEFINE_bool("torch_compile", False, "torch.compile the PyTorch model")
flags.DEFINE_bool("channels_last", False, "the PyTorch model in channels-last memory format")
for _name in ("variant", "heat_operator", "batch", "image_size", "repeats", "json"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def measure_torch(
    variant: str = "T",
    batch: int = 64,
    image_size: int = 224,
    *,
    mode: str = "train",
    dtype: str = "float32",
    repeats: int = 5,
    heat_operator: str = "mean8",
    drop_path: float = 0.0,
    num_classes: int = 1000,
    compile: bool = False,
    channels_last: bool = False,
):
    """The same step in PyTorch (reference/torch_model.py): AdamW + clipping, bf16 autocast for
    bfloat16."""
    try:
        import torch
    except ImportError:
        raise UserError(
            "reference.bench needs PyTorch: pip install torch==2.13.0 (not a requirement)"
        ) from None
    from hcnet.measure.bench import Result, median_seconds
    from hcnet.model import VARIANTS
    from reference.torch_model import TorchHcNet

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = TorchHcNet(
        **VARIANTS[variant],
        num_classes=num_classes,
        heat_operator=heat_operator,
        drop_path=drop_path,
        img_size=image_size,
    ).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    autocast = dtype != "float32"
    amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype, torch.float32)
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    run = torch.compile(net) if compile else net
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(run(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()

    @torch.no_grad()
    def infer():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
            run(x)

    fn = train if mode == "train" else infer
    net.train(mode == "train")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    step_s, host = median_seconds(lambda: (fn(), sync()), (), repeats)
    peak_bytes = int(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None
    kind = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    note = ", ".join(
        n
        for n, on in (
            ("torch.compile", compile),
            ("channels_last", channels_last),
            ("autocast", autocast),
        )
        if on
    )
    return Result(
        "torch",
        mode,
        variant,
        batch,
        image_size,
        dtype,
        1,
        kind,
        max(first - step_s, 0.0),
        step_s,
        batch / step_s,
        batch / step_s,
        peak_bytes=peak_bytes,
        peak_source="device" if peak_bytes else "",
        page_faults=host["page_faults"],
        system_s=host["system_s"],
        note=note,
    )


def main(argv):
    from hcnet.measure import bench

    shape = dict(variant=FLAGS.variant, batch=FLAGS.batch or 64, image_size=FLAGS.image_size or 224)
    common = dict(dtype=FLAGS.dtype, repeats=FLAGS.repeats or 5, heat_operator=FLAGS.heat_operator)
    results = []
    for mode in FLAGS.mode:
        results.append(bench.measure(**shape, mode=mode, **common))
        results.append(
            measure_torch(
                **shape,
                mode=mode,
                compile=FLAGS.torch_compile,
                channels_last=FLAGS.channels_last,
                **common,
            )
        )
    print(bench.render(results, FLAGS.json))


if __name__ == "__main__":
    hostenv.reexec_on_cpu()  # huge pages for XLA:CPU's buffers; see hcnet/hostenv.py
    tools.run(main)
