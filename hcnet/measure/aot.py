"""A run's training step compiled for a Cloud TPU slice ahead of time, on any machine with libtpu (a
CPU one included): per-chip memory against the chip's HBM, XLA's flops and bytes per image, the
compile time and a verdict, before anyone pays for the slice.

    # libtpu: the TPU compiler (what jax[tpu] installs on a TPU VM)
    pip install -r requirements-tpu.txt
    python -m hcnet.tools.aot --config=configs/hcnet_t.py --topology=v5e-64 \\
        [--config.field=value ...]
        [--out=F.json] [--parts=eval,augmentation]

The step is the one train_and_evaluate runs (hcnet.Run: the same config, mesh, shardings and
donation, the augmentation inside it), lowered onto libtpu's compile-only devices of the named slice
(jax.experimental.topologies) and compiled by the real TPU compiler; also the task's eval step (at
eval_batch_size) where its evaluation runs on the device, and the on-device augmentation alone.
Slice names are Cloud TPU's own: v5e-N and v6e-N count chips, v4-N and v5p-N count TensorCores (two
per chip, compiled as one device per chip, as JAX drives them). Everything reported is the
compiler's figure for a TPU, not a hardware measurement.

Memory per device: arguments + outputs - what donation aliases + temporaries + generated code, from
the compiled program's memory_analysis() (a bound: the compiler's own `peak` is reported beside it).
A step that needs more than the device's HBM stops with one line naming what would fit
(optim.accum_steps, mesh.fsdp, model.remat for unrolled blocks; eval_batch_size for the eval
step). `largest_batch` extrapolates the per-device batch that would fit. Flops and bytes per image
are XLA's per instruction, each loop body (scanned blocks, optim.accum_steps > 1) times its trip
count (hcnet.measure.hlo); `breakdown` says where they go.

libtpu's own account of each program (its HBM use, reserved memory included) and its stage timings
go to stderr with `TPU_MIN_LOG_LEVEL=0 TPU_STDERR_LOG_LEVEL=0`; XLA's per-pass times with
`TPU_VMODULE=hlo_pass_pipeline=1` (BENCHMARKS.md, "Compile time").
"""

import contextlib
import logging
import re
import time

import jax

from hcnet import sharding
from hcnet.measure import hlo, roofline, targets
from hcnet.measure.targets import GIB, first_line, without_cpu_flags
from hcnet.program import Run

NOTES = {
    "tpu": "compiler figures for a TPU (libtpu's compile-only devices), not hardware measurements",
    "gpu": "compiler figures for a GPU (XLA's GPU compiler and ptxas for a described card), not "
    "hardware measurements",
}
# for the schedule's constants only; shapes do not depend on it (COCO's train2017 as mmdet filters
# it: images with objects, 32 pixels a side or more)
TRAIN_EXAMPLES = {"imagenet2012": 1_281_167, "coco": 117_266}


@contextlib.contextmanager
def without_persistent_cache():
    """JAX's persistent compilation cache off for what runs inside: a compile-only executable cannot
    be loaded back. The cache decides once whether it is used, hence the resets."""
    from jax.experimental.compilation_cache import compilation_cache

    was = jax.config.jax_enable_compilation_cache
    logging.getLogger("jax._src.compilation_cache").setLevel(
        logging.WARNING
    )  # its reset logs at INFO
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", was)
        compilation_cache.reset_cache()


def figures(lowered, images: float, loops: bool = False, breakdown: bool = False) -> dict:
    """Compiles a lowered program: its per-device memory, XLA's flops and bytes per image, the
    compile time. `loops`: the program has loops (said where only the compiled program's own
    figures, which count a loop body once, can be had); `breakdown`: where the bytes go
    (hcnet.measure.hlo.breakdown_of). A program the compiler refuses for
    memory (RESOURCE_EXHAUSTED) gives `refused`, the compiler's line, and what it says it needed."""
    with without_persistent_cache(), without_cpu_flags():
        t, since = time.perf_counter(), time.time()
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return _refused(e, images, time.perf_counter() - t)
        compile_s = time.perf_counter() - t
    # the optimised program's text, read once: as jax prints it, else as the compiler dumped it
    text = hlo.program_text(compiled) or hlo.dumped_text(since)
    m = compiled.memory_analysis()
    memory = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "aliased": m.alias_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
        "code": m.generated_code_size_in_bytes,
        "peak": m.peak_memory_in_bytes,
    }
    args_out = memory["arguments"] + memory["outputs"] - memory["aliased"]
    return {
        "batch_per_device": images,
        "memory_bytes": memory,
        "needed_bytes": args_out + memory["temporaries"] + memory["code"],
        **hlo.compiled_costs(compiled, images, loops, breakdown, text),
        **_kernels(text),
        "compile_seconds": compile_s,
    }


def _kernels(text: str | None) -> dict:
    """How many fusions and custom calls (cuDNN, cuBLAS, ...) the optimised program has; None where
    its text could not be had."""
    if text is None:
        return {"fusions": None, "custom_calls": None}
    return {
        "fusions": len(re.findall(r" fusion\(", text)),
        "custom_calls": len(re.findall(r" custom-call\(", text)),
    }


def _refused(e: BaseException, images: float, seconds: float) -> dict:
    """The record of a program the compiler refused for memory; `needed_bytes` is what it said it
    needed for the program's temporaries, where it says so (else None)."""
    line = next((x for x in str(e).splitlines() if "RESOURCE_EXHAUSTED" in x), first_line(e))
    size = re.search(r"temporaries \(([\d.]+)([KMGT])\)", str(e))
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    needed = round(float(size[1]) * units[size[2]]) if size else None
    return {
        "batch_per_device": images,
        "refused": line.strip(),
        "needed_bytes": needed,
        "compile_seconds": seconds,
    }


def compile_train_step(
    c,
    topology: str,
    *,
    eval_step: bool = True,
    augmentation: bool = True,
    breakdown: bool = False,
) -> dict:
    """Compiles config c's train step (and its task's eval step and its augmentation alone) for the
    slice `topology`; the report (see the module's docstring), with where the train step's bytes
    go if `breakdown`."""
    kind, chips, devs = targets.devices(topology)
    if (
        c.init_from == "required"
    ):  # a fine-tuning config: the step's shapes do not depend on where it starts
        c = c.copy_and_resolve_references()
        c.init_from = ""
    examples = TRAIN_EXAMPLES.get(c.dataset.name, TRAIN_EXAMPLES["imagenet2012"])
    run = Run.create(c, train_examples=examples, devices=devs)
    program, per_device = run.program, len(devs)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(run.mesh))
    batch = run.abstract_batch()
    t = time.perf_counter()
    lowered = program.step.lower(program.abstract_state, batch, key)
    lower_s = time.perf_counter() - t
    block_loop = program.spec["block_loop"]  # what Program.build chose for the slice
    scanned = block_loop == "scan"
    loops = scanned or c.optim.accum_steps > 1
    train = figures(lowered, c.batch_size / per_device, loops=loops, breakdown=breakdown)
    height, width = batch["image"].shape[1:3]
    report = {
        "topology": topology,
        "model": {
            **{k: c.model[k] for k in ("variant", "dtype", "remat")},
            "block_loop": block_loop,
        },
        "image_size": height if height == width else [height, width],
        "chips": chips,
        "devices": per_device,
        "device_kind": devs[0].device_kind,
        "global_batch": c.batch_size,
        "accum_steps": c.optim.accum_steps,
        "mesh": {"data": run.mesh.shape[sharding.DATA], "fsdp": run.mesh.shape[sharding.FSDP]},
        **train,
        "lower_seconds": lower_s,
        "note": NOTES["tpu" if kind in targets.CHIPS else "gpu"],
    }
    act_bytes = 4 if c.model.dtype == "float32" else 2
    floor = roofline.bytes_per_image(program.spec, height, c.batch_size // per_device, act_bytes)
    if floor is not None:
        report["roofline_bytes_per_image"] = floor
    step = run.task.eval_step(run.predict())
    if eval_step and step is not None:
        eval_batch = c.eval_batch_size or c.batch_size
        jitted = jax.jit(step, out_shardings=sharding.replicated(run.mesh))
        lowered = jitted.lower(program.abstract_state["params"], run.abstract_batch(eval_batch))
        report["eval"] = figures(lowered, eval_batch / per_device, loops=scanned)
    if augmentation:
        inputs = jax.jit(run.task.train_inputs)
        report["augmentation"] = figures(inputs.lower(key, batch), c.batch_size / per_device)
    return judge(report, targets.device_memory(kind, per_device // chips))


def largest_batch(report: dict) -> int | None:
    """The largest per-device batch whose train step would fit, extrapolated from one compile: the
    temporaries (activations, gradients' workspace) grow in proportion to the batch, the rest (the
    state, the code) does not. An estimate, to be confirmed by compiling at it; None for a step the
    compiler refused."""
    if "refused" in report:
        return None
    temporaries = report["memory_bytes"]["temporaries"]
    per_image = temporaries / report["batch_per_device"]
    if per_image == 0:  # older libtpu releases report no temporaries for some chips
        return None
    return int((report["hbm_bytes"] - (report["needed_bytes"] - temporaries)) // per_image)


def _fits(program: dict, memory: int) -> bool:
    return "refused" not in program and program["needed_bytes"] <= memory


def judge(report: dict, hbm_bytes: int) -> dict:
    """The report with the device's memory and whether the train step (and the eval step) fit."""
    eval_fits = "eval" not in report or _fits(report["eval"], hbm_bytes)
    report = {
        **report,
        "hbm_bytes": hbm_bytes,
        "fits": _fits(report, hbm_bytes) and eval_fits,
        "eval_fits": eval_fits,
    }
    return {**report, "largest_batch_per_device_estimate": largest_batch(report)}


def _gib(n) -> str:
    return f"{n / GIB:.2f} GiB"


def _needs(program: dict) -> str:
    if "refused" not in program:
        return f"needs {_gib(program['needed_bytes'])}"
    if program["needed_bytes"] is None:
        return "refused by the compiler for memory"
    return f"refused by the compiler: its temporaries alone need {_gib(program['needed_bytes'])}"


def verdict(report: dict) -> str:
    """One line: fits, or what would."""
    head = (
        f"{report['topology']}: {_needs(report)} of {_gib(report['hbm_bytes'])} per device "
        f"(batch {report['batch_per_device']:g} per device"
    )
    if "eval" in report:
        e = report["eval"]
        head += f"; evaluation {_needs(e).removeprefix('needs ')} at {e['batch_per_device']:g}"
    if report["fits"]:
        return head + ", fits)"
    if _fits(report, report["hbm_bytes"]):
        return head + "), evaluation does not fit: lower config.eval_batch_size"
    remat = ""
    if report.get("model", {}).get("block_loop") != "scan":  # scanned blocks are recomputed
        remat = ", or recompute activations with config.model.remat=True"
    return head + (
        f"), does not fit: raise config.optim.accum_steps (now {report['accum_steps']}) to cut the "
        "activations per micro-batch, shard parameters and optimizer state with config.mesh.fsdp"
        + remat
    )


def describe(report: dict, line: str) -> str:
    """The report for a terminal: the verdict, then each compiled program's figures."""
    estimate = report["largest_batch_per_device_estimate"]
    rows = [line]
    if estimate is not None:
        rows.append(
            "  largest batch per device that would fit, extrapolated from the temporaries: "
            f"{estimate} (compile at it to confirm)"
        )
    programs = {
        "train step": report,
        "eval step": report.get("eval"),
        "augmentation alone": report.get("augmentation"),
    }
    for name, r in programs.items():
        if r is not None:
            rows.append(f"  {name}: {_program_line(r)}")
    if "breakdown" in report:
        rows.append(hlo.describe(report["breakdown"]))
    return "\n".join([*rows, f"  {report['note']}"])


def _program_line(r: dict) -> str:
    """One compiled program's compile time, XLA's cost per image and its memory."""
    if "refused" in r:
        return f"compile {r['compile_seconds']:.0f} s; refused: {r['refused']}"
    cost = (
        f"{r['flops_per_image'] / 1e9:.2f} GFLOP and {r['bytes_accessed_per_image'] / 1e6:.0f} MB "
        "accessed per image ("
    )
    if r.get("cost_counts_loops_once"):
        cost += (
            "XLA's cost analysis of the compiled program, which counts each loop body once: not "
            "the program's; --config.model.block_loop=unroll and optim.accum_steps=1 give the "
            "program's)"
        )
    elif "plain_bytes_accessed_per_image" in r:
        cost += (
            "XLA's cost analysis of each instruction, loops by their trip counts; "
            f"{r['plain_bytes_accessed_per_image'] / 1e6:.0f} MB without tile padding"
        )
        own = r.get("compiler_counts_loops_once")
        if own:
            cost += (
                f"; the compiler's own count, each loop body once: "
                f"{own['bytes_accessed_per_image'] / 1e6:.0f} MB"
            )
        cost += ")"
    else:
        cost += "XLA's cost analysis of the compiled program)"
    memory = ", ".join(f"{k} {v / GIB:.3f} GiB" for k, v in r["memory_bytes"].items())
    return f"compile {r['compile_seconds']:.0f} s; {cost}; {memory}"
