"""Training and inference throughput of HcNet, optionally beside the project's PyTorch statement of it.

    python -m hcnet.bench --variant=T --batch=128 --image-size=224 --dtype=bfloat16 [--devices=N]
        [--mode=train,infer] [--repeats=10] [--torch] [--torch-compile] [--channels-last] [--json]

Synthetic uint8 batches already on the devices, so only the device's work is timed: for `train`, the
project's whole jitted training step (normalisation, forward, backward, AdamW with clipping, sharded
over a data-parallel mesh of N devices, state donated); for `infer`, the eval-mode forward to logits.
Compile time is reported apart from the step time (median of --repeats after one warm-up step).

    flops/img   XLA's FLOP count of the compiled step (per device, times devices, over the batch)
    XLA MB/img  XLA's "bytes accessed" the same way: summed over ops as compiled; on a CPU not a floor
                (see `python -m hcnet.roofline` for the fewest bytes a fused step must move)
    model flops/img   the paper's convention: 2 x conv+linear MACs, x3 for a training step
    MFU         XLA flops per second over the device's dense peak for the dtype (table below or
                --peak-tflops); printed only where the peak is known
    peak mem    peak bytes in use on device 0 where the backend reports it (GPU, TPU), else XLA's
                temporary buffer size of the program

For scripts: `train_step_seconds(variant, batch, image_size, repeats)` is the step's wall seconds.
"""
import argparse
import dataclasses
import functools
import json
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# dense TFLOP/s per chip; first match of device_kind (lower case) wins
PEAK_TFLOPS = (
    ("h200", {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),
    ("h100", {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),  # SXM
    ("a100", {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
    ("l4", {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3}),
    ("v6 lite", {"bfloat16": 918.0}),  # TPU v6e
    ("v5 lite", {"bfloat16": 197.0}),  # TPU v5e
    ("v5p", {"bfloat16": 459.0}),
    ("v5", {"bfloat16": 459.0}),  # TPU v5p reports "TPU v5"
    ("v4", {"bfloat16": 275.0}),
)
MODES = ("train", "infer")


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    kind = device_kind.lower()
    for name, peaks in PEAK_TFLOPS:
        if name in kind:
            return peaks.get(dtype)
    return None


@dataclasses.dataclass
class Result:
    framework: str
    mode: str
    variant: str
    batch: int
    image_size: int
    dtype: str
    devices: int
    device_kind: str
    compile_s: float
    step_s: float
    images_per_s: float
    images_per_s_per_device: float
    flops_per_image: float | None = None
    bytes_per_image: float | None = None
    model_flops_per_image: float | None = None
    mfu: float | None = None
    peak_bytes: int | None = None
    peak_source: str = ""
    page_faults: float | None = None  # host minor page faults per step (this process)
    system_s: float | None = None     # host kernel seconds per step
    note: str = ""


def _median_run(fn, args, repeats: int, update=None) -> tuple[float, dict]:
    """(median wall seconds of fn(*args) after one warm-up call, host page faults and system seconds per
    call); `update` threads donated state through."""
    out = jax.block_until_ready(fn(*args))
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        if update is not None:
            args = update(args, out)
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    host = {"page_faults": (after.ru_minflt - before.ru_minflt) / max(repeats, 1),
            "system_s": (after.ru_stime - before.ru_stime) / max(repeats, 1)}
    return statistics.median(times), host


def _peak_memory(device, compiled) -> tuple[int | None, str]:
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device"
    memory = compiled.memory_analysis()
    if memory is not None:
        return int(memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes), "xla"
    return None, ""


def _spec(variant, dtype, heat_operator, remat, drop_path, num_classes):
    from hcnet.model import model_spec
    return model_spec(variant, num_classes=num_classes, dtype=dtype, heat_operator=heat_operator, remat=remat,
                      drop_path=drop_path)


def measure(variant: str = "T", batch: int = 64, image_size: int = 224, *, mode: str = "train",
            dtype: str = "float32", devices: int | None = None, repeats: int = 5, heat_operator: str = "mean8",
            remat: bool = False, drop_path: float = 0.0, num_classes: int = 1000,
            peak: float | None = None, model_flops: bool = True) -> Result:
    """Times one jitted training step or forward pass of HcNet on synthetic data."""
    from hcnet import count, sharding, trainer
    from hcnet.data import augment
    from hcnet.model import build
    from hcnet.optim import lr_schedule, make_optimizer

    if mode not in MODES:
        raise ValueError(f"--mode={mode!r}: one of {', '.join(MODES)}")
    devs = jax.devices()[:devices] if devices else jax.devices()
    if devices and devices > len(jax.devices()):
        raise ValueError(f"--devices={devices}: only {len(jax.devices())} {jax.devices()[0].platform} devices here")
    if batch % len(devs):
        raise ValueError(f"--batch={batch} must be a multiple of the {len(devs)} devices")
    mesh = sharding.make_mesh(-1, 1, devices=devs)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    spec = _spec(variant, dtype, heat_operator, remat, drop_path, num_classes)
    model, _ = trainer.Model.abstract(spec)
    rng = np.random.default_rng(0)
    data = {"image": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
            "label": rng.integers(0, num_classes, batch).astype(np.int32), "mask": np.ones(batch, bool)}
    data = jax.device_put(data, batch_sh)

    if mode == "train":
        kw = dict(warmup_lr=1e-6, min_lr=1e-5, warmup_steps=10, total_steps=1000)
        tx = make_optimizer(lr=1e-3, **kw, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, clip_norm=5.0)
        recipe = augment.Recipe(randaugment=None, reprob=0.0, mixup=0.0, cutmix=0.0, smoothing=0.1)
        init = functools.partial(trainer.init_state, model, tx, 0, spec, False)
        state_sh = sharding.state_shardings(mesh, jax.eval_shape(init))
        state = jax.jit(init, out_shardings=state_sh)()
        step = jax.jit(functools.partial(trainer.train_step, model=model, tx=tx, schedule=lr_schedule(base_lr=1e-3, **kw),
                                         recipe=recipe, num_classes=num_classes, accum=1, ema_decay=0.0),
                       in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl), donate_argnums=0)
        key = jax.device_put(jax.random.key(0), repl)
        args = (state, data, key)
        update = lambda a, out: (out[0], a[1], a[2])
    else:
        params = jax.device_put(nnx.to_pure_dict(nnx.state(build(spec, rngs=nnx.Rngs(0)), nnx.Param)), repl)
        step = jax.jit(lambda p, b: nnx.view(model(p), deterministic=True)(augment.normalize(b["image"])),
                       in_shardings=(repl, batch_sh), out_shardings=batch_sh)
        args, update = (params, data), None

    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - start
    step_s, host = _median_run(compiled, args, repeats, update)

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost["flops"]) * len(devs) / batch if cost and cost.get("flops") else None
    moved = float(cost["bytes accessed"]) * len(devs) / batch if cost and cost.get("bytes accessed") else None
    macs = count.count_macs(spec, image_size) if model_flops else None
    peak = peak if peak is not None else peak_tflops(devs[0].device_kind, dtype)
    mfu = flops * batch / step_s / (peak * 1e12 * len(devs)) if flops and peak else None
    peak_bytes, source = _peak_memory(devs[0], compiled)
    return Result("jax", mode, variant, batch, image_size, dtype, len(devs), devs[0].device_kind, compile_s, step_s,
                  batch / step_s, batch / step_s / len(devs), flops, moved,
                  None if macs is None else 2.0 * macs * (3 if mode == "train" else 1), mfu, peak_bytes, source,
                  host["page_faults"], host["system_s"])


def train_step_seconds(variant: str, batch: int, image_size: int, repeats: int = 3, **kwargs) -> float:
    """Wall seconds of one HcNet training step after compilation (median of `repeats`); kwargs as `measure`."""
    return measure(variant, batch, image_size, mode="train", repeats=repeats, model_flops=False, **kwargs).step_s


def measure_torch(variant: str = "T", batch: int = 64, image_size: int = 224, *, mode: str = "train",
                  dtype: str = "float32", repeats: int = 5, heat_operator: str = "mean8", drop_path: float = 0.0,
                  num_classes: int = 1000, compile: bool = False, channels_last: bool = False) -> Result:
    """The same step in PyTorch (hcnet.torch_model): AdamW + clipping, bf16 autocast for bfloat16."""
    try:
        import torch
    except ImportError:
        raise ValueError("--torch needs PyTorch: pip install torch (it is not in requirements.txt)") from None
    from hcnet.model import VARIANTS
    from hcnet.torch_model import TorchHcNet

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = TorchHcNet(**VARIANTS[variant], num_classes=num_classes, heat_operator=heat_operator,
                     drop_path=drop_path, img_size=image_size).to(device)
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
    step_s, host = _median_run(lambda: (fn(), sync()), (), repeats)
    peak_bytes = int(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None
    kind = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    note = ", ".join(n for n, on in (("torch.compile", compile), ("channels_last", channels_last),
                                     ("autocast", autocast)) if on)
    return Result("torch", mode, variant, batch, image_size, dtype, 1, kind, max(first - step_s, 0.0), step_s,
                  batch / step_s, batch / step_s, peak_bytes=peak_bytes, peak_source="device" if peak_bytes else "",
                  page_faults=host["page_faults"], system_s=host["system_s"], note=note)


def table(results: list[Result]) -> str:
    head = ("framework", "mode", "model", "batch", "size", "dtype", "devices", "compile s", "step ms", "img/s",
            "img/s/dev", "GFLOP/img", "model GFLOP/img", "XLA MB/img", "MFU", "peak mem", "faults/step",
            "sys s/step", "notes")
    fmt_mem = lambda r: "-" if r.peak_bytes is None else f"{r.peak_bytes / 2 ** 30:.2f} GiB ({r.peak_source})"
    rows = [(r.framework, r.mode, r.variant, str(r.batch), str(r.image_size), r.dtype, str(r.devices),
             f"{r.compile_s:.1f}", f"{1e3 * r.step_s:.1f}", f"{r.images_per_s:.1f}", f"{r.images_per_s_per_device:.1f}",
             "-" if r.flops_per_image is None else f"{r.flops_per_image / 1e9:.4g}",
             "-" if r.model_flops_per_image is None else f"{r.model_flops_per_image / 1e9:.4g}",
             "-" if r.bytes_per_image is None else f"{r.bytes_per_image / 1e6:.0f}",
             "-" if r.mfu is None else f"{100 * r.mfu:.1f}%", fmt_mem(r),
             "-" if r.page_faults is None else f"{r.page_faults:,.0f}", "-" if r.system_s is None else f"{r.system_s:.2f}",
             r.note) for r in results]
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(n) for v, n in zip(row, widths)).rstrip() for row in (head, *rows))


def main(argv=None):
    from hcnet.model import HEAT_OPERATORS, VARIANTS
    p = argparse.ArgumentParser(prog="python -m hcnet.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="T", choices=sorted(VARIANTS))
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--devices", type=int, default=None, help="the first N devices (default: all)")
    p.add_argument("--mode", default="train,infer", help="train, infer or both (comma-separated)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--heat-operator", default="mean8", choices=HEAT_OPERATORS)
    p.add_argument("--remat", action="store_true", help="recompute each block in the backward pass")
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--peak-tflops", type=float, default=None, help="per-device dense peak, for MFU")
    p.add_argument("--torch", action="store_true", help="also time hcnet.torch_model in the same run")
    p.add_argument("--torch-compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    results = []
    try:
        for mode in modes:
            results.append(measure(args.variant, args.batch, args.image_size, mode=mode, dtype=args.dtype,
                                   devices=args.devices, repeats=args.repeats, heat_operator=args.heat_operator,
                                   remat=args.remat, drop_path=args.drop_path, peak=args.peak_tflops))
            if args.torch:
                results.append(measure_torch(args.variant, args.batch, args.image_size, mode=mode, dtype=args.dtype,
                                             repeats=args.repeats, heat_operator=args.heat_operator,
                                             drop_path=args.drop_path, compile=args.torch_compile,
                                             channels_last=args.channels_last))
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in results]))
    else:
        print(table(results))


if __name__ == "__main__":
    from hcnet import hostenv
    hostenv.reexec_on_cpu()  # huge pages for XLA:CPU's buffers; see hcnet/hostenv.py
    main()
