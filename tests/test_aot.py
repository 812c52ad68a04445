"""hcnet.aot: Cloud TPU slice names, and the real train step compiled by the TPU compiler (libtpu) on this CPU.

The compiling tests need libtpu (requirements-tpu.txt) and are skipped without it: the suite's install does
not carry the 684 MB wheel (see the README's "Compiling for a TPU slice ahead of time")."""
import importlib.util
import math

import pytest

from hcnet import aot
from hcnet.errors import ConfigError, UserError
from runs import smoke

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install -r requirements-tpu.txt)")


@pytest.mark.parametrize("name, chips, topology", [
    ("v5e-4", 4, "v5e:2x2"), ("v5e-64", 64, "v5e:8x8"), ("v6e-256", 256, "v6e:16x16"), ("v5e-1", 1, "v5e:1x1"),
    ("v4-8", 4, "v4:2x2x1"), ("v4-32", 16, "v4:2x2x4"), ("v4-128", 64, "v4:4x4x4"), ("v5p-128", 64, "v5p:4x4x4"),
])
def test_slice_names_are_cloud_tpus_own(name, chips, topology):
    """v5e / v6e names count chips, v4 / v5p names TensorCores (two a chip); the shapes are Cloud TPU's tori."""
    assert aot.parse_topology(name) == (name.split("-")[0], chips, topology)


@pytest.mark.parametrize("name, message", [
    ("v5litepod-4", "--topology='v5litepod-4': a Cloud TPU slice name: v4-N or v5p-N (N TensorCores)"),
    ("v5e-6", "--topology='v5e-6': v5e-N counts chips; N must be a power of two (e.g. v5e-4)"),
    ("v4-9", "--topology='v4-9': v4-N counts TensorCores; N must be 2 x a power of two (e.g. v4-8)"),
])
def test_a_bad_slice_name_is_one_line(name, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        aot.parse_topology(name)


@pytest.fixture(scope="module")
def smoke_on_v5e():
    """(config, report) of the smoke config's whole step (augmentation, EMA, donation) compiled for v5e-4."""
    c = smoke()
    return c, aot.compile_train_step(c, "v5e-4")


def tiled_bytes(shape, itemsize: int) -> int:
    """An array's bytes in TPU memory at most: its last two dimensions padded to the (8, 128) tile."""
    *lead, rows, cols = (1, 1, *shape)
    return math.prod(lead) * -(-rows // 8) * 8 * -(-cols // 128) * 128 * itemsize


@needs_libtpu
def test_the_smoke_train_step_compiles_for_a_v5e_slice_within_a_hand_bound(smoke_on_v5e):
    """Per device the step's arguments are the train state (replicated: fp32 parameters, AdamW's two moments,
    the EMA, counters) and a quarter of the batch: at least their bytes, at most those bytes padded to TPU
    tiles; the state is donated (aliased to the output)."""
    import jax
    c, report = smoke_on_v5e
    from hcnet import optim, tasks, trainer, sharding
    task = tasks.create(c)
    tx, schedule = optim.from_config(c.optim, c.batch_size, 8, 2)
    shapes = jax.eval_shape(lambda: trainer.init_state(task, tx, 0, ema=True))
    leaves = jax.tree.leaves(shapes)
    rows = c.batch_size // 4
    batch = [((rows, 32, 32, 3), 1), ((rows,), 4), ((rows,), 1), ((rows,), 4)]  # image, label, mask, index
    low = sum(x.size * x.dtype.itemsize for x in leaves) + sum(math.prod(s) * b for s, b in batch)
    high = (sum(tiled_bytes(x.shape, max(x.dtype.itemsize, 4)) for x in leaves)
            + sum(tiled_bytes(s, 4) for s, _ in batch) + tiled_bytes((), 8))  # + the key
    got = report["memory_bytes"]
    assert report["devices"] == 4 and report["hbm_bytes"] == 16 * 2 ** 30 and report["fits"]
    assert low <= got["arguments"] <= high, (low, got["arguments"], high)
    assert got["aliased"] >= sum(x.size * x.dtype.itemsize for x in leaves) - 64  # the state, donated
    assert report["flops_per_image"] > 0 and report["compile_seconds"] > 0


@needs_libtpu
def test_a_step_that_cannot_fit_is_refused_in_one_line_naming_what_would(smoke_on_v5e):
    """The compiled smoke step against a device of 16 MiB (it needs about 32)."""
    _, report = smoke_on_v5e
    small = aot.judge(report, 16 * 2 ** 20)
    assert not small["fits"] and aot.judge(report, report["needed_bytes"])["fits"]
    line = aot.verdict(small)
    assert line.startswith("v5e-4: needs 0.03 GiB of 0.02 GiB per device (batch 4 per device), does not fit: "
                           "raise config.optim.accum_steps (now 1)")
    assert "config.mesh.fsdp" in line and "config.model.remat=True" in line and "\n" not in line


def test_without_libtpu_the_tool_says_what_to_install(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_libtpu(name, *args, **kwargs):
        if name == "libtpu":
            raise ImportError("no libtpu")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_libtpu)
    with pytest.raises(UserError, match=r"^hcnet.aot needs the TPU compiler: pip install -r requirements-tpu.txt"):
        aot.devices("v5e-4")
