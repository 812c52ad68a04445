"""The process setting XLA:CPU needs before it starts: huge pages for malloc on Linux.

XLA:CPU takes every intermediate of a jitted step from one fresh allocation per execution. glibc
serves it with a new mmap, and the kernel then faults it in 4 KiB at a time; with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` glibc asks for transparent huge pages instead, and the
faults and their system time all but vanish (BENCHMARKS.md, version 6). glibc reads its tunables
only at process start, so `reexec_on_cpu()` starts the process again with the tunable set, before
JAX is imported.

It changes nothing where a GPU or TPU is attached or JAX_PLATFORMS names another platform,
off Linux or before glibc 2.35, where the tunable is already set, or when HCNET_KEEP_MALLOC=1.
"""

import glob
import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "HCNET_KEEP_MALLOC"
# the device files of an attached accelerator: NVIDIA GPUs, AMD GPUs, Cloud TPU chips (v4: accel,
# v5e and later: vfio)
NVIDIA_DEVICES = "/dev/nvidia[0-9]*"
TPU_DEVICES = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
ACCELERATOR_DEVICES = (NVIDIA_DEVICES, "/dev/kfd", *TPU_DEVICES)


def glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return tuple(int(v) for v in version.split(".")[:2]) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):
        return None


def accelerator_attached() -> bool:
    """True where the machine has a GPU or TPU (its device files): an installed JAX plugin
    (libtpu, the CUDA plugin) without one leaves JAX on the CPU, which wants the tunable."""
    return any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)


def cpu_malloc_env(
    environ,
    *,
    platform: str = sys.platform,
    glibc: tuple[int, int] | None = None,
    accelerator: bool | None = None,
) -> dict | None:
    """The environment to restart with, or None where there is nothing to change."""
    if environ.get(OPT_OUT, "") not in ("", "0") or platform != "linux":
        return None
    glibc = glibc if glibc is not None else glibc_version()
    if glibc is None or glibc < (2, 35):
        return None
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        if platforms.split(",")[0].strip() != "cpu":
            return None
    elif accelerator if accelerator is not None else accelerator_attached():
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb=" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def cpu_only(environ=os.environ, *, accelerator: bool | None = None) -> None:
    """JAX_PLATFORMS=cpu where no GPU or TPU is attached and nothing chose a platform, before JAX
    starts: the CUDA plugin and libtpu (requirements-gpu.txt, requirements-tpu.txt) print errors and
    tracebacks when they find no device. Compile-only TPU and GPU devices (hcnet.tools.aot) need
    no platform of theirs, so nothing is lost; an attached accelerator changes nothing."""
    attached = accelerator if accelerator is not None else accelerator_attached()
    if not environ.get("JAX_PLATFORMS") and not attached:
        environ["JAX_PLATFORMS"] = "cpu"
        if "jax" in sys.modules:  # imported already (JAX reads the variable then), not started
            sys.modules["jax"].config.update("jax_platforms", "cpu")


def reexec_on_cpu() -> None:
    """Restarts this command with the tunable set (see the module's docstring), or returns."""
    env = cpu_malloc_env(os.environ)
    if env is None:
        return
    print(
        f"hcnet: restarting with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} for XLA:CPU's buffers "
        f"(see BENCHMARKS.md; {OPT_OUT}=1 skips this)",
        file=sys.stderr,
        flush=True,
    )
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


# the libtpu releases jax 0.10.2's profiler traces beside (PJRT C API 0.112 and 0.113): from
# 0.0.45 on, libtpu's profiler interface is larger than jax 0.10.2's plugin tracer expects
# ("Unexpected PLUGIN_Profiler_Api size: expected 80, got 104") and a trace ends in SIGSEGV
# (BENCHMARKS.md, "libtpu releases beside jax 0.10.2")
TRACING_LIBTPU = ("0.0.43.2", "0.0.42.1")


def libtpu_loaded() -> bool:
    """Whether libtpu.so is mapped into this process (a TPU client or compile-only TPU devices
    made); JAX imports the libtpu package on start wherever it is installed, which loads nothing."""
    try:
        with open("/proc/self/maps") as maps:
            return "libtpu" in maps.read()
    except OSError:  # not Linux: the package's presence is the best sign there is
        return "libtpu" in sys.modules


def check_tracing(what: str) -> None:
    """One line, before anything compiles, when a jax.profiler trace is asked for (`what`: the
    setting that asks) in a process that has loaded a libtpu the profiler crashes beside."""
    import importlib.metadata

    from hcnet.errors import ConfigError

    if not libtpu_loaded():
        return
    version = importlib.metadata.version("libtpu")
    if version not in TRACING_LIBTPU:
        raise ConfigError(
            f"{what}: jax.profiler crashes beside libtpu {version}; trace from a second "
            f'environment with libtpu=={TRACING_LIBTPU[0]} (docs/training.md, "A slow step"), '
            "or leave the trace out"
        )
