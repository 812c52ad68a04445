"""The accelerators hcnet.tools.aot compiles for, by name, as compile-only JAX devices: Cloud TPU
slices (libtpu's topologies) and nodes of NVIDIA GPUs (XLA's GPU compiler given a card's
description), with each device's memory.
"""

import contextlib
import dataclasses
import importlib.util
import math
import os
import pathlib
import re

from hcnet.errors import ConfigError, UserError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm: int  # bytes per chip
    cores: int  # TensorCores per chip, as Cloud TPU counts them in a slice's name
    dims: int  # the torus's dimensions
    name_counts: str  # what the number in a slice's name counts
    megacore: bool = True  # JAX drives a chip's TensorCores as one device (else one device each)


CHIPS = {
    "v4": Chip(32 * GIB, 2, 3, "TensorCores"),
    "v5e": Chip(16 * GIB, 1, 2, "chips"),
    "v5p": Chip(95 * GIB, 2, 3, "TensorCores"),
    "v6e": Chip(32 * GIB, 1, 2, "chips"),
    # Ironwood: two TensorCores a chip, on two chiplets with their own HBM, each its own device
    "tpu7x": Chip(192 * GIB, 2, 3, "TensorCores", megacore=False),
}
# GPUs by name: XLA's target description of each (hcnet/measure/gpus/<name>.txtpb, its source in its
# first lines); a node of N is <name>-N, several nodes <M>x<name>-N
GPUS = ("h100", "h200", "a100", "b200")
GPU_DIR = pathlib.Path(__file__).resolve().parent / "gpus"


def topology_names() -> str:
    """What --topology takes, from the tables above (hcnet.tools.aot's --help)."""
    by_count = {}
    for name, chip in CHIPS.items():
        by_count.setdefault(chip.name_counts, []).append(f"{name}-N")
    slices = "; ".join(f"{', '.join(names)}: N {counts}" for counts, names in by_count.items())
    return (
        f"a Cloud TPU slice ({slices}) or GPU nodes (<gpu>-N: a node of N GPUs, <M>x<gpu>-N: M "
        f"such nodes; <gpu> one of {', '.join(GPUS)}), e.g. v5e-64, h100-8, 2xh100-8"
    )


def chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """Cloud TPU's slice shape for a chip count: 2D 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16; 3D 2x2x1,
    2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ... (single chips and pairs as 1x1 and 1x2)."""
    if chips < 4:
        return (1, chips) if dims == 2 else (1, 1, chips)
    grid = [2, 2] if dims == 2 else [2, 2, 1]
    while math.prod(grid) < chips:
        i = min(range(dims), key=lambda k: (grid[k], -k))  # the smallest side, the last first
        grid[i] *= 2
    return tuple(grid)


def parse_topology(name: str) -> tuple[str, int, str]:
    """'v5e-64' -> ('v5e', 64 chips, 'v5e:8x8'), the name libtpu's topology takes; one line if it is
    not one."""
    m = re.fullmatch(r"(v4|v5e|v5p|v6e|tpu7x)-(\d+)", name)
    accepted = (
        "a Cloud TPU slice name: v4-N, v5p-N or tpu7x-N (N TensorCores), v5e-N or v6e-N (N chips), "
        "e.g. v5e-64"
    )
    if not m:
        raise ConfigError(f"--topology={name!r}: {accepted}")
    kind, count = m[1], int(m[2])
    chip = CHIPS[kind]
    chips, extra = divmod(count, chip.cores)
    if extra or chips < 1 or chips & (chips - 1):
        raise ConfigError(
            f"--topology={name!r}: {kind}-N counts {chip.name_counts}; N must be "
            + ("a power of two" if chip.cores == 1 else f"{chip.cores} x a power of two")
            + f" (e.g. {kind}-{chip.cores * 4})"
        )
    return kind, chips, f"{kind}:{'x'.join(map(str, chip_grid(chips, chip.dims)))}"


def tpu_devices(name: str):
    """(kind, chips, compile-only devices, one per chip) of a slice; one line if libtpu is
    missing."""
    kind, chips, topology = parse_topology(name)
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise UserError(
            "hcnet.tools.aot needs the TPU compiler: pip install -r requirements-tpu.txt (libtpu)"
        ) from None
    from jax.experimental import topologies

    grid = [int(n) for n in topology.split(":")[1].split("x")]
    # libtpu's default host holds 2x2(x1) chips; a slice smaller than that is one host of its own
    # size
    host = {} if math.prod(grid) >= 4 else {"chips_per_host_bounds": (grid + [1])[:3]}
    with without_cpu_flags():
        devs = topologies.get_topology_desc(platform="tpu", topology_name=topology, **host).devices
    # v4 and v5p chips are two TensorCores, which JAX drives as one device ("megacore"): libtpu's
    # compile-only topology lists both cores and has no megacore option, so the program is compiled
    # for the first core of each chip, one device per chip as jax.make_mesh requires, against the
    # chip's whole HBM; a TPU7x chip's cores are two devices, each with half the chip's HBM
    if not CHIPS[kind].megacore:
        return kind, chips, devs
    return kind, chips, [d for d in devs if getattr(d, "core_on_chip", 0) == 0]


@contextlib.contextmanager
def without_cpu_flags():
    """XLA_FLAGS without XLA:CPU's own flags (--xla_cpu_*) while libtpu starts and compiles: it
    parses XLA_FLAGS and stops the process on a flag it does not know (0.0.52 does on
    --xla_cpu_use_fusion_emitters)."""
    flags = os.environ.get("XLA_FLAGS")
    if flags is not None:
        kept = [f for f in flags.split() if not f.startswith("--xla_cpu_")]
        os.environ["XLA_FLAGS"] = " ".join(kept)
    try:
        yield
    finally:
        if flags is not None:
            os.environ["XLA_FLAGS"] = flags


def parse_gpu_topology(name: str) -> tuple[str, int, int]:
    """'h100-8' -> ('h100', 1 node, 8 GPUs a node); '2xh100-8' -> ('h100', 2, 8); one line if it is
    not one."""
    m = re.fullmatch(r"(?:(\d+)x)?([a-z]\d+)-(\d+)", name)
    if not m or m[2] not in GPUS or int(m[3]) < 1 or (m[1] is not None and int(m[1]) < 1):
        raise ConfigError(
            f"--topology={name!r}: a node of N GPUs, <gpu>-N, or M nodes, <M>x<gpu>-N, with <gpu> "
            f"one of {', '.join(GPUS)} (e.g. h100-8, 2xh100-8), or a Cloud TPU slice (e.g. v5e-64)"
        )
    return m[2], int(m[1] or 1), int(m[3])


def gpu_target(kind: str) -> str:
    """XLA's GpuTargetConfigProto of a GPU, in text form (hcnet/measure/gpus/<kind>.txtpb)."""
    return (GPU_DIR / f"{kind}.txtpb").read_text()


def gpu_memory(target: str) -> int:
    """A GPU's memory in bytes, as its target description gives it."""
    return int(re.search(r"device_memory_size:\s*(\d+)", target)[1])


def gpu_devices(name: str):
    """(kind, GPUs, compile-only devices) of GPU nodes; one line if the CUDA plugin is missing."""
    kind, nodes, per_node = parse_gpu_topology(name)
    if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
        raise UserError(
            "hcnet.tools.aot needs the GPU compiler for a GPU: pip install -r requirements-gpu.txt "
            "(JAX's CUDA plugin; no GPU needed)"
        )
    from jax.experimental import topologies

    topology = f"1x{nodes}x{per_node}"  # one slice of `nodes` hosts of `per_node` GPUs each
    try:
        devs = topologies.get_topology_desc(
            platform="cuda", target_config=gpu_target(kind), topology=topology
        ).devices
    except (RuntimeError, ValueError) as e:  # the plugin loaded but its platform did not start
        raise UserError(
            f"--topology={name}: JAX's CUDA platform is not available here ({first_line(e)}); "
            "set JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 before JAX starts on a machine without a GPU "
            "(hcnet.tools.aot does)"
        ) from None
    return kind, nodes * per_node, devs


def devices(name: str):
    """(kind, chips or GPUs, compile-only devices, one per chip or GPU) of a TPU slice or of GPU
    nodes."""
    if re.fullmatch(r"(v\w+|tpu\w+)-\d+", name):
        return tpu_devices(name)
    return gpu_devices(name)


def device_memory(kind: str, devices_per_chip: int) -> int:
    """Bytes of memory a device of `kind` has: a TPU chip's HBM (shared by its devices), a GPU's."""
    if kind in CHIPS:
        return CHIPS[kind].hbm // devices_per_chip  # TPU7x: two devices a chip
    return gpu_memory(gpu_target(kind))


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
