"""Training and inference throughput of HcNet (`python -m reference.bench` times the PyTorch
statement of it beside).

    python -m hcnet.tools.bench --variant=T --batch=128 --image_size=224 --dtype=bfloat16 \\
        [--devices=N]
        [--mode=train,infer] [--repeats=10] [--json] [--trace=DIR]

Synthetic uint8 batches already on the devices, so only the device's work is timed: for `train`, the
project's whole jitted training step (normalisation, forward, backward, AdamW with clipping, sharded
over a data-parallel mesh of N devices, state donated); for `infer`, the eval-mode forward to
logits. Compile time is reported apart from the step time (median of --repeats after one warm-up
step).

    flops/img   XLA's FLOP count of the compiled step (per device, times devices, over the batch),
                each loop body times its trip count (hcnet.measure.hlo)
    XLA MB/img  XLA's "bytes accessed" the same way (on a TPU with arrays padded to tiles); on a
                CPU not a floor
                (see `python -m hcnet.tools.roofline` for the fewest bytes a fused step must move)
    model flops/img   the paper's convention: 2 x conv+linear MACs, x3 for a training step
    MFU         XLA flops per second over the device's dense peak for the dtype
    (hcnet.measure.roofline.DEVICES
                or --peak_tflops); printed only where the peak is known
    peak mem    peak bytes in use on device 0 where the backend reports it (GPU, TPU), else XLA's
                temporary buffer size of the program

For scripts: `train_step_seconds(variant, batch, image_size, repeats)` is the step's wall seconds.
"""

import contextlib
import dataclasses
import json
import math
import resource
import statistics
import time

import jax
import numpy as np

from hcnet import config as config_lib
from hcnet import hostenv, monitor, sharding
from hcnet.errors import UserError
from hcnet.measure import count, hlo, roofline
from hcnet.program import Run

MODES = ("train", "infer")


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
    system_s: float | None = None  # host kernel seconds per step
    note: str = ""


def median_seconds(fn, args, repeats: int, update=None) -> tuple[float, dict]:
    """(median wall seconds of fn(*args) after one warm-up call, host page faults and system seconds
    per call); `update` threads donated state through."""
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
    host = {
        "page_faults": (after.ru_minflt - before.ru_minflt) / max(repeats, 1),
        "system_s": (after.ru_stime - before.ru_stime) / max(repeats, 1),
    }
    return statistics.median(times), host


def _peak_memory(device, compiled) -> tuple[int | None, str]:
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device"
    memory = compiled.memory_analysis()
    if memory is not None:
        return int(
            memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
        ), "xla"
    return None, ""


def bench_config(
    variant: str,
    batch: int,
    image_size: int,
    *,
    dtype: str = "float32",
    heat_operator: str = "mean8",
    remat: bool = False,
    drop_path: float = 0.0,
    num_classes: int = 1000,
    depthwise_impl: str = "auto",
    block_loop: str = "auto",
):
    """A classification config on synthetic data with no augmentation (label smoothing 0.1): what is
    timed."""
    c = config_lib.defaults()
    c.batch_size = batch
    c.model.update(
        variant=variant,
        dtype=dtype,
        heat_operator=heat_operator,
        remat=remat,
        drop_path=drop_path,
        depthwise_impl=depthwise_impl,
        block_loop=block_loop,
    )
    c.dataset.update(name="synthetic", image_size=image_size, num_classes=num_classes)
    c.augment.update(config_lib.NO_AUGMENTATION, smoothing=0.1)
    c.optim.update(scale_by_batch=0, warmup_steps=10)
    c.total_steps = 1000  # the schedule's length only
    return c


def _train_program(run, data):
    """(jitted step, its arguments, how to thread the donated state) of the project's training
    step."""
    key = sharding.replicated_key(0, run.mesh)
    return run.program.step, (run.program.init(), data, key), _thread_state


def _thread_state(args, out):
    return out[0], args[1], args[2]


def _infer_program(run, data):
    """(jitted eval-mode forward to logits, its arguments, None)."""
    program = run.program
    weights = jax.device_put(program.init()["params"], sharding.replicated(run.mesh))

    def forward(w, batch):
        return run.predict()(w, batch["image"])

    return jax.jit(forward, out_shardings=sharding.batch_sharding(run.mesh)), (weights, data), None


def measure(
    variant: str = "T",
    batch: int = 64,
    image_size: int = 224,
    *,
    mode: str = "train",
    dtype: str = "float32",
    devices: int | None = None,
    repeats: int = 5,
    heat_operator: str = "mean8",
    remat: bool = False,
    drop_path: float = 0.0,
    num_classes: int = 1000,
    peak: float | None = None,
    model_flops: bool = True,
    depthwise_impl: str = "auto",
    block_loop: str = "auto",
    trace: str | None = None,
) -> Result:
    """Times one jitted training step or forward pass of HcNet on synthetic data; with `trace`, a
    jax.profiler trace of the timed steps is written there (to open with XProf:
    requirements-profile.txt)."""
    if mode not in MODES:
        raise UserError(f"--mode={mode!r}: one of {', '.join(MODES)}")
    if trace:
        hostenv.check_tracing(f"--trace={trace}")
    if devices and devices > len(jax.devices()):
        raise UserError(
            f"--devices={devices}: only {len(jax.devices())} {jax.devices()[0].platform} devices "
            "here"
        )
    devs = jax.devices()[:devices] if devices else jax.devices()
    if batch % len(devs):
        raise UserError(f"--batch={batch} must be a multiple of the {len(devs)} devices")
    c = bench_config(
        variant,
        batch,
        image_size,
        dtype=dtype,
        heat_operator=heat_operator,
        remat=remat,
        drop_path=drop_path,
        num_classes=num_classes,
        depthwise_impl=depthwise_impl,
        block_loop=block_loop,
    )
    rng = np.random.default_rng(0)
    data = {
        "image": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
        "label": rng.integers(0, num_classes, batch).astype(np.int32),
        "mask": np.ones(batch, bool),
    }
    run = Run.create(c, train_examples=batch, devices=devs)
    data = jax.device_put(data, run.program.batch_sharding)
    step, args, update = (_train_program if mode == "train" else _infer_program)(run, data)

    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - start
    with contextlib.ExitStack() as scope:
        if trace:
            scope.enter_context(jax.profiler.trace(trace))
        step_s, host = median_seconds(compiled, args, repeats, update)

    # the program of one device, its loops counted by their trip counts
    cost = hlo.compiled_costs(compiled, batch / len(devs))
    flops = cost["flops_per_image"] if math.isfinite(cost["flops_per_image"]) else None
    moved = cost["bytes_accessed_per_image"]
    moved = moved if math.isfinite(moved) else None
    macs = count.count_macs(run.task.spec, image_size) if model_flops else None
    peak = peak if peak is not None else roofline.peak_tflops(devs[0].device_kind, dtype)
    mfu = flops * batch / step_s / (peak * 1e12 * len(devs)) if flops and peak else None
    peak_bytes, source = _peak_memory(devs[0], compiled)
    return Result(
        "jax",
        mode,
        variant,
        batch,
        image_size,
        dtype,
        len(devs),
        devs[0].device_kind,
        compile_s,
        step_s,
        batch / step_s,
        batch / step_s / len(devs),
        flops,
        moved,
        None if macs is None else 2.0 * macs * (3 if mode == "train" else 1),
        mfu,
        peak_bytes,
        source,
        host["page_faults"],
        host["system_s"],
    )


def train_step_seconds(
    variant: str, batch: int, image_size: int, repeats: int = 3, **kwargs
) -> float:
    """Wall seconds of one HcNet training step after compilation (median of `repeats`); kwargs as
    `measure`."""
    return measure(
        variant, batch, image_size, mode="train", repeats=repeats, model_flops=False, **kwargs
    ).step_s


def results_table(results: list[Result]) -> str:
    head = (
        "framework",
        "mode",
        "model",
        "batch",
        "size",
        "dtype",
        "devices",
        "compile s",
        "step ms",
        "img/s",
        "img/s/dev",
        "GFLOP/img",
        "model GFLOP/img",
        "XLA MB/img",
        "MFU",
        "peak mem",
        "faults/step",
        "sys s/step",
        "notes",
    )

    def fmt_mem(r):
        return "-" if r.peak_bytes is None else f"{r.peak_bytes / 2**30:.2f} GiB ({r.peak_source})"

    rows = [
        (
            r.framework,
            r.mode,
            r.variant,
            str(r.batch),
            str(r.image_size),
            r.dtype,
            str(r.devices),
            f"{r.compile_s:.1f}",
            f"{1e3 * r.step_s:.1f}",
            f"{r.images_per_s:.1f}",
            f"{r.images_per_s_per_device:.1f}",
            "-" if r.flops_per_image is None else f"{r.flops_per_image / 1e9:.4g}",
            "-" if r.model_flops_per_image is None else f"{r.model_flops_per_image / 1e9:.4g}",
            "-" if r.bytes_per_image is None else f"{r.bytes_per_image / 1e6:.0f}",
            "-" if r.mfu is None else f"{100 * r.mfu:.1f}%",
            fmt_mem(r),
            "-" if r.page_faults is None else f"{r.page_faults:,.0f}",
            "-" if r.system_s is None else f"{r.system_s:.2f}",
            r.note,
        )
        for r in results
    ]
    return monitor.text_table(head, rows)


def render(results: list[Result], as_json: bool = False) -> str:
    """The results as one JSON list, or as the text table."""
    if as_json:
        return json.dumps([dataclasses.asdict(r) for r in results])
    return results_table(results)
