"""hcnet.measure.aot: Cloud TPU slice and GPU node names, and the real train step compiled by the
TPU compiler (libtpu) and by XLA's GPU compiler (JAX's CUDA plugin, NVIDIA's ptxas) on this CPU.

The compiling tests need libtpu (requirements-tpu.txt) or the CUDA plugin (requirements-gpu.txt) and
are skipped with one line without them; `.ci/run` installs both."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest
from runs import ROOT, smoke

from hcnet.errors import ConfigError, UserError
from hcnet.measure import aot, targets
from hcnet.program import Program, init_state

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu not installed (pip install -r requirements-tpu.txt)",
)
needs_cuda_plugin = pytest.mark.skipif(
    importlib.util.find_spec("jax_plugins.xla_cuda12") is None,
    reason="JAX's CUDA plugin not installed (pip install -r requirements-gpu.txt)",
)


@pytest.mark.parametrize(
    "name, chips, topology",
    [
        ("v5e-4", 4, "v5e:2x2"),
        ("v5e-64", 64, "v5e:8x8"),
        ("v6e-256", 256, "v6e:16x16"),
        ("v5e-1", 1, "v5e:1x1"),
        ("v4-8", 4, "v4:2x2x1"),
        ("v4-32", 16, "v4:2x2x4"),
        ("v4-128", 64, "v4:4x4x4"),
        ("v5p-128", 64, "v5p:4x4x4"),
        ("tpu7x-8", 4, "tpu7x:2x2x1"),
    ],
)
def test_slice_names_are_cloud_tpus_own(name, chips, topology):
    """v5e / v6e names count chips, v4 / v5p names TensorCores (two a chip); the shapes are Cloud
    TPU's tori."""
    assert targets.parse_topology(name) == (name.split("-")[0], chips, topology)


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "v5litepod-4",
            "--topology='v5litepod-4': a Cloud TPU slice name: v4-N, v5p-N or tpu7x-N (N "
            "TensorCores)",
        ),
        ("v5e-6", "--topology='v5e-6': v5e-N counts chips; N must be a power of two (e.g. v5e-4)"),
        (
            "v4-9",
            "--topology='v4-9': v4-N counts TensorCores; N must be 2 x a power of two (e.g. v4-8)",
        ),
    ],
)
def test_a_bad_slice_name_is_one_line(name, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        targets.parse_topology(name)


@needs_libtpu
@pytest.mark.parametrize(
    "name, devices",
    [
        ("v5e-1", 1),
        ("v5e-2", 2),
        ("v6e-1", 1),
        ("v4-2", 1),
        ("v4-8", 4),
        ("v5p-16", 8),
        ("tpu7x-8", 8),
    ],
)
def test_a_slice_has_one_device_per_chip(name, devices):
    """libtpu's default host is 2x2 chips (one or two chips are a host of their own); v4 and v5p
    names count TensorCores, two a chip, which JAX drives as one device; a TPU7x chip's two
    TensorCores are a device each."""
    assert len(targets.devices(name)[2]) == devices


@needs_libtpu
def test_a_tpu_program_gets_grouped_convolutions():
    """depthwise_impl='auto' lowered for TPU devices: XLA's grouped convolutions in the backward
    pass."""
    import jax
    import jax.numpy as jnp

    from hcnet import stencils

    device = targets.devices("v5e-1")[2][0]
    on_tpu = jax.sharding.SingleDeviceSharding(device)
    h = jax.ShapeDtypeStruct((2, 40, 36, 3), jnp.float32, sharding=on_tpu)
    k = jax.ShapeDtypeStruct((3, 3, 1, 3), jnp.float32, sharding=on_tpu)
    text = (
        jax.jit(jax.grad(lambda h, k: stencils.gelu_filter(h, k).sum(), (0, 1)))
        .lower(h, k)
        .as_text()
    )
    assert (
        text.count("stablehlo.convolution") == 2
    )  # the input's and the kernel's gradients (a sum's needs no forward)


@needs_libtpu
def test_the_program_for_a_tpu_scans_its_blocks_and_elsewhere_unrolls():
    """model.block_loop="auto" (the default): hcnet.Program's network scans each stage's
    blocks when its mesh is a TPU slice (one block body per stage for the TPU compiler) and unrolls
    them on this CPU's devices; a loop chosen in the config holds on either."""
    import jax

    from hcnet import optim, sharding, tasks

    scanned = {}
    for loop in ("auto", "unroll"):
        c = smoke()
        c.model.block_loop = loop
        task = tasks.create(c)
        tx, schedule = optim.from_config(c.optim, c.batch_size, 8, 2)
        for platform, devices in (("tpu", targets.devices("v5e-4")[2]), ("cpu", jax.devices()[:4])):
            program = Program.build(
                task, tx, schedule, sharding.make_mesh(4, 1, devices=devices), seed=0
            )
            zeros = jax.tree.map(
                lambda a: jax.numpy.zeros(a.shape, a.dtype), program.abstract_state["params"]
            )
            scanned[loop, platform] = [
                s.scan for s in program.model_def.bind(jax.device_get(zeros)).stages
            ]
    assert scanned == {
        ("auto", "tpu"): [True] * 4,
        ("auto", "cpu"): [False] * 4,
        ("unroll", "tpu"): [False] * 4,
        ("unroll", "cpu"): [False] * 4,
    }, scanned


@pytest.fixture(scope="module")
def smoke_on_v5e():
    """(config, report) of the smoke config's whole step (augmentation, EMA, donation) compiled for
    v5e-4, with its eval step."""
    c = smoke()
    return c, aot.compile_train_step(
        c, "v5e-4", augmentation=False, breakdown=True
    )  # the augmentation: its own test below


def tiled_bytes(shape, itemsize: int) -> int:
    """An array's bytes in TPU memory at most: its last two dimensions padded to the (8, 128)
    tile."""
    *lead, rows, cols = (1, 1, *shape)
    return math.prod(lead) * -(-rows // 8) * 8 * -(-cols // 128) * 128 * itemsize


@needs_libtpu
def test_the_smoke_train_step_compiles_for_a_v5e_slice_within_a_hand_bound(smoke_on_v5e):
    """Per device the step's arguments are the train state (replicated: fp32 parameters, AdamW's two
    moments, the EMA, counters) and a quarter of the batch: at least their bytes, at most those
    bytes padded to TPU tiles; the state is donated (aliased to the output)."""
    import jax

    c, report = smoke_on_v5e
    from hcnet import optim, tasks

    task = tasks.create(c)
    tx, schedule = optim.from_config(c.optim, c.batch_size, 8, 2)
    shapes = jax.eval_shape(lambda: init_state(task.spec, tx, 0, ema=True))
    leaves = jax.tree.leaves(shapes)
    rows = c.batch_size // 4
    batch = [
        ((rows, 32, 32, 3), 1),
        ((rows,), 4),
        ((rows,), 1),
        ((rows,), 4),
    ]  # image, label, mask, index
    low = sum(x.size * x.dtype.itemsize for x in leaves) + sum(math.prod(s) * b for s, b in batch)
    high = (
        sum(tiled_bytes(x.shape, max(x.dtype.itemsize, 4)) for x in leaves)
        + sum(tiled_bytes(s, 4) for s, _ in batch)
        + tiled_bytes((), 8)
    )  # + the key
    got = report["memory_bytes"]
    assert report["devices"] == 4 and report["hbm_bytes"] == 16 * 2**30 and report["fits"]
    assert low <= got["arguments"] <= high, (low, got["arguments"], high)
    assert (
        got["aliased"] >= sum(x.size * x.dtype.itemsize for x in leaves) - 64
    )  # the state, donated
    assert report["flops_per_image"] > 0 and report["compile_seconds"] > 0
    # the blocks scanned, each body counted as often as it runs: more than XLA's own count
    assert report["model"]["block_loop"] == "scan" and not report["cost_counts_loops_once"]
    from hcnet import model

    depths = [d for d in model.model_spec(c.model.variant)["depths"] if d > 1]
    network = [x for x in report["loops"] if x["op_name"].endswith(("jvp()/while", "jvp())/while"))]
    counted = [x["trip_count"] for x in network]
    assert sorted(counted) == sorted(depths * 2), report["loops"]  # forward, backward
    own = report["compiler_counts_loops_once"]
    assert report["flops_per_image"] > own["flops_per_image"]
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes["params"]))
    evaluation = report["eval"][
        "memory_bytes"
    ]  # the parameters alone and a quarter of the eval batch
    assert params <= evaluation["arguments"] < got["arguments"] and report["eval_fits"]
    assert report["eval"]["batch_per_device"] == (c.eval_batch_size or c.batch_size) // 4


@needs_libtpu
def test_the_breakdown_of_a_tpu_step_names_its_layers_and_pads_to_tiles(smoke_on_v5e, capsys):
    """The TPU program's bytes by layer kind (every part of the step named), each array padded to
    the chip's tiles: at 32 pixels and 16 to 64 channels most of a tile is padding, so far more
    bytes than the plain count, as libtpu's own count has too."""
    _, report = smoke_on_v5e
    kinds = {k["kind"] for k in report["breakdown"]["kinds"]}
    want = {"stem", "downsample", "heat", "ra_mlp", "ra_filter", "groupnorm", "head", "loss"}
    assert want | {"augmentation", "optimizer", "layout copies"} <= kinds, kinds
    assert report["bytes_accessed_per_image"] > 1.5 * report["plain_bytes_accessed_per_image"]
    print(aot.describe(report, aot.verdict(report)))
    out = capsys.readouterr().out
    assert "where the bytes go (per image, by kind):" in out and "  heat " in out


@needs_libtpu
def test_the_aot_command_passes_breakdown_on_and_writes_it(smoke_on_v5e, tmp_path):
    """python -m hcnet.tools.aot ... --breakdown: the flag reaches the compile, and the report's
    breakdown is printed and written with --out (the compile itself: the fixture's). In a process
    of its own: the command's required flags would stay registered in this one."""
    _, report = smoke_on_v5e
    (tmp_path / "report.json").write_text(json.dumps(report))
    out = tmp_path / "r.json"
    code = f"""
import json
from hcnet.measure import aot as measure
from hcnet.tools import aot as tool, invoke
report = json.loads(open({str(tmp_path / "report.json")!r}).read())
def compile_train_step(c, topology, **kwargs):
    print("asked", json.dumps(dict(kwargs, topology=topology), sort_keys=True))
    return report
measure.compile_train_step = compile_train_step
invoke(tool.main, ["--config=configs/smoke.py", "--topology=v5e-4", "--parts=", "--breakdown",
                   "--out={out}"])
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    asked = {"augmentation": False, "breakdown": True, "eval_step": False, "topology": "v5e-4"}
    assert f"asked {json.dumps(asked, sort_keys=True)}" in proc.stdout
    assert "where the bytes go (per image, by kind):" in proc.stdout
    assert json.loads(out.read_text())["breakdown"] == report["breakdown"]


@needs_libtpu
def test_the_augmentation_compiled_for_tpu_looks_up_tables_without_gathers():
    """XLA's TPU cost analysis charges RandAugment's per-pixel table gathers about 27 GB per 224x224
    image each (two per image), so about 1.1 GB per 32x32 image; with lut_impl='auto' the TPU
    program contracts one-hot pixels instead. The smoke config's augmentation with RandAugment on,
    compiled both ways."""
    import jax

    from hcnet import sharding, tasks

    devices = targets.devices("v5e-4")[2]
    batch_sh = sharding.batch_sharding(sharding.make_mesh(4, 1, devices=devices))
    key = jax.ShapeDtypeStruct(
        (), jax.random.key(0).dtype, sharding=sharding.replicated(batch_sh.mesh)
    )
    per_image = {}
    for impl in ("auto", "gather"):
        c = smoke()
        c.augment.randaugment, c.augment.lut_impl = "rand-m9-mstd0.5-inc1", impl
        task = tasks.create(c)
        batch = sharding.placed(task.batch_shapes(c.batch_size), batch_sh)
        lowered = jax.jit(task.train_inputs).lower(key, batch)
        # libtpu's own count: it charges a gather for every element it may touch
        own = aot.figures(lowered, c.batch_size / 4)["compiler_counts_loops_once"]
        per_image[impl] = own["bytes_accessed_per_image"]
    assert per_image["gather"] > 500e6 and per_image["auto"] < 50e6, per_image


@needs_libtpu
def test_a_step_that_cannot_fit_is_refused_in_one_line_naming_what_would(smoke_on_v5e):
    """The compiled smoke step against a device with half the memory it needs."""
    _, report = smoke_on_v5e
    half = report["needed_bytes"] // 2
    small = aot.judge(report, half)
    assert not small["fits"] and aot.judge(report, report["needed_bytes"])["fits"]
    line = aot.verdict(small)
    gib = f"{report['needed_bytes'] / aot.GIB:.2f} GiB of {half / aot.GIB:.2f} GiB"
    assert line.startswith(
        f"v5e-4: needs {gib} per device (batch 4 per device; evaluation 0.00 GiB "
        "at 4), does not fit: raise config.optim.accum_steps (now 1)"
    )
    # its blocks are scanned, and a scanned block is recomputed in the backward pass already
    assert "config.mesh.fsdp" in line and "model.remat" not in line and "\n" not in line
    big_eval = {**report, "eval": {**report["eval"], "needed_bytes": report["needed_bytes"] + 1}}
    line = aot.verdict(aot.judge(big_eval, report["needed_bytes"]))
    assert (
        line.endswith("), evaluation does not fit: lower config.eval_batch_size")
        and "\n" not in line
    )


def test_the_largest_batch_grows_the_temporaries_alone():
    """16 GiB of HBM, 6 GiB of state and code, 8 GiB of temporaries for 64 images: 80 images would
    fit."""
    memory = {
        "arguments": 5 * aot.GIB,
        "outputs": 5 * aot.GIB,
        "aliased": 5 * aot.GIB,
        "temporaries": 8 * aot.GIB,
        "code": aot.GIB,
        "peak": 12 * aot.GIB,
    }
    report = aot.judge(
        {"memory_bytes": memory, "needed_bytes": 14 * aot.GIB, "batch_per_device": 64}, 16 * aot.GIB
    )
    assert report["fits"] and report["largest_batch_per_device_estimate"] == 80
    # older libtpu releases report no temporaries for some chips: no estimate, not a crash
    none = {**memory, "temporaries": 0}
    report = aot.judge(
        {"memory_bytes": none, "needed_bytes": 6 * aot.GIB, "batch_per_device": 64}, 16 * aot.GIB
    )
    assert report["largest_batch_per_device_estimate"] is None


def test_reports_become_one_markdown_table(tmp_path, capsys):
    from hcnet.tools import aot_table, invoke

    memory = {
        "arguments": aot.GIB,
        "outputs": aot.GIB,
        "aliased": aot.GIB,
        "temporaries": 2 * aot.GIB,
        "code": 0,
        "peak": 2 * aot.GIB,
    }
    report = aot.judge(
        {
            "config": "configs/hcnet_t.py",
            "topology": "v5e-64",
            "devices": 64,
            "memory_bytes": memory,
            "needed_bytes": 3 * aot.GIB,
            "batch_per_device": 16,
            "flops_per_image": 25.9e9,
            "bytes_accessed_per_image": 2.9e9,
            "roofline_bytes_per_image": 386e6,
            "compile_seconds": 403.4,
        },
        16 * aot.GIB,
    )
    (tmp_path / "t.json").write_text(json.dumps(report))
    invoke(aot_table.main, [str(tmp_path / "t.json")])
    header, rule, row = capsys.readouterr().out.strip().splitlines()
    assert header.count("|") == rule.count("|") == row.count("|")
    assert row == (
        "| `configs/hcnet_t.py` | v5e-64 (64 devices) | 16 | yes | 3.00 / 16 GiB (2.00) | 120 | "
        "25.90 "
        "| 2,900 (386) | - | - | 403 s |"
    )  # 120 = (16 - 1) GiB / (2 GiB / 16)
    padded = {**report, "plain_bytes_accessed_per_image": 2.1e9}  # a TPU's, padded to tiles
    (tmp_path / "t.json").write_text(json.dumps(padded))
    invoke(aot_table.main, [str(tmp_path / "t.json")])
    assert "| 25.90 | 2,900 / 2,100 (386) |" in capsys.readouterr().out
    (tmp_path / "t.json").write_text(json.dumps({**report, "cost_counts_loops_once": True}))
    invoke(aot_table.main, [str(tmp_path / "t.json")])
    assert "| 120 | - (loop) | - (loop) (386) | - | - | 403 s |" in capsys.readouterr().out
    error = RuntimeError("RESOURCE_EXHAUSTED: ... HLO temporaries (502.20G) exceeds available HBM")
    refused = {**aot._refused(error, 4096, 9.0), "topology": "v5e-4", "devices": 4}
    (tmp_path / "r.json").write_text(json.dumps(aot.judge(refused, 16 * aot.GIB)))
    invoke(aot_table.main, [str(tmp_path / "r.json")])
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "| `?` | v5e-4 (4 devices) | 4096 | **no** | refused by the compiler: 502.20 / 16 GiB "
        "| - | - | - | - | - | 9 s |"
    )
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="bad.json: not a report written by hcnet.tools.aot --out"):
        aot_table.main(["aot_table", str(tmp_path / "bad.json")])


def test_without_libtpu_the_tool_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_libtpu(name, *args, **kwargs):
        if name == "libtpu":
            raise ImportError("no libtpu")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_libtpu)
    with pytest.raises(
        UserError,
        match=r"^hcnet.tools.aot needs the TPU compiler: pip install -r requirements-tpu.txt",
    ):
        targets.devices("v5e-4")


# ---------------------------------------------------------------- GPUs
@pytest.mark.parametrize(
    "name, parsed",
    [
        ("h100-8", ("h100", 1, 8)),
        ("2xh100-8", ("h100", 2, 8)),
        ("h200-1", ("h200", 1, 1)),
        ("a100-4", ("a100", 1, 4)),
        ("4xb200-8", ("b200", 4, 8)),
    ],
)
def test_gpu_node_names(name, parsed):
    """<gpu>-N is a node of N GPUs; <M>x<gpu>-N is M such nodes, one mesh over all."""
    assert targets.parse_gpu_topology(name) == parsed


@pytest.mark.parametrize("name", ["h100", "rtx4090-8", "0xh100-8", "h100-0", "H100-8"])
def test_a_bad_gpu_name_is_one_line(name):
    with pytest.raises(
        ConfigError, match=rf"^--topology='{name}': a node of N GPUs, <gpu>-N, or M "
    ):
        targets.devices(name)


def test_every_gpu_has_its_description_and_memory():
    """Each named GPU's target description is in the package, with its source and its memory."""
    memory = {g: targets.gpu_memory(targets.gpu_target(g)) for g in targets.GPUS}
    assert memory == {
        "h100": 84_929_347_584,
        "h200": 150_754_820_096,
        "a100": 85_100_068_864,
        "b200": 191_514_673_152,
    }
    for g in targets.GPUS:
        assert targets.gpu_target(g).startswith("# NVIDIA ") and 'platform_name: "CUDA"' in (
            targets.gpu_target(g)
        )


def test_a_program_the_compiler_refuses_for_memory_is_the_same_one_line_verdict():
    """The TPU compiler refuses a step far over HBM (RESOURCE_EXHAUSTED) before memory_analysis():
    the verdict says so, with what it needed, and names what would fit."""
    error = RuntimeError(  # as libtpu 0.0.42.1 refused HcNet-B at 16384 images on v5e-4
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (502.20G) exceeds available HBM (15.75G)"
    )
    record = aot._refused(error, 4096, 12.0)
    assert (
        record["needed_bytes"] == round(502.20 * 2**30)
        and "RESOURCE_EXHAUSTED" in record["refused"]
    )
    report = aot.judge({**record, "topology": "v5e-4", "accum_steps": 1}, 16 * 2**30)
    assert not report["fits"] and report["largest_batch_per_device_estimate"] is None
    line = aot.verdict(report)
    assert line.startswith(
        "v5e-4: refused by the compiler: its temporaries alone need 502.20 GiB of 16.00 GiB per "
        "device (batch 4096 per device), does not fit: raise config.optim.accum_steps (now 1)"
    )
    assert "\n" not in line and "config.model.remat=True" in line


@needs_cuda_plugin
def test_a_gpu_program_gets_grouped_convolutions():
    """depthwise_impl='auto' lowered for an NVIDIA GPU: XLA's grouped convolutions (the shifted
    form's kernel-gradient reduction is rejected by ptxas there: BENCHMARKS.md)."""
    import jax
    import jax.numpy as jnp

    from hcnet import stencils

    on_gpu = jax.sharding.SingleDeviceSharding(targets.devices("h100-1")[2][0])
    h = jax.ShapeDtypeStruct((2, 40, 36, 3), jnp.float32, sharding=on_gpu)
    k = jax.ShapeDtypeStruct((3, 3, 1, 3), jnp.float32, sharding=on_gpu)
    grads = jax.jit(jax.grad(lambda h, k: stencils.gelu_filter(h, k).sum(), (0, 1)))
    assert grads.lower(h, k).as_text().count("stablehlo.convolution") == 2


@needs_cuda_plugin
def test_upernets_pyramid_pooling_compiles_for_a_gpu():
    """The pooling's gradient at UperNet's stage-4 shape for a 512 crop (16 x 16 x 512, 6 bins,
    bf16): XLA's GPU compiler finds no tiling for it written as one three-operand einsum, and
    compiles it as two contractions (hcnet.upernet.adaptive_avg_pool)."""
    import jax
    import jax.numpy as jnp

    from hcnet import upernet

    on_gpu = jax.sharding.SingleDeviceSharding(targets.devices("h100-1")[2][0])
    x = jax.ShapeDtypeStruct((2, 16, 16, 512), jnp.bfloat16, sharding=on_gpu)

    def loss(x):
        return (upernet.adaptive_avg_pool(x, 6).astype(jnp.float32) ** 2).sum()

    jax.jit(jax.grad(loss)).lower(x).compile()


@needs_cuda_plugin
def test_the_segmentation_loss_resize_compiles_for_a_gpu():
    """The gradient of the loss's bilinear resize (UperNet's stride-4 logits, 150 classes, to a 512
    crop): XLA's GPU compiler finds no tiling for jax.image.resize's products there, and
    upernet.resize gives a GPU the two-tap form."""
    import jax
    import jax.numpy as jnp

    from hcnet import upernet

    on_gpu = jax.sharding.SingleDeviceSharding(targets.devices("h100-1")[2][0])
    x = jax.ShapeDtypeStruct((2, 128, 128, 150), jnp.float32, sharding=on_gpu)

    def loss(x):
        return (upernet.resize(x, 512, 512) ** 2).sum()

    jax.jit(jax.grad(loss)).lower(x).compile()


@needs_cuda_plugin
@pytest.mark.heavy
# one node of four and two nodes of two (a single GPU compiles in the tests above)
@pytest.mark.parametrize("name, gpus", [("h100-4", 4), ("2xh100-2", 4)])
def test_the_smoke_train_step_compiles_for_one_gpu_a_node_and_two_nodes(name, gpus):
    """The step train_and_evaluate builds, compiled by XLA's GPU compiler for described H100s (no
    GPU here): it fits the card's memory, and XLA's cost analysis of each instruction of the
    optimised program counts it."""
    c = smoke()
    report = aot.compile_train_step(c, name, augmentation=False)
    assert report["devices"] == gpus and report["device_kind"] == "NVIDIA H100 80GB HBM3"
    assert report["hbm_bytes"] == 84_929_347_584 and report["fits"] and report["eval_fits"]
    assert report["batch_per_device"] == c.batch_size / gpus and report["fusions"] > 0
    # the optimised GPU program read per instruction (its executable reports no cost of its own)
    assert report["flops_per_image"] > 0 and report["cost_source"].startswith("per instruction")
    assert not report["cost_counts_loops_once"] and "compiler_counts_loops_once" not in report
    assert report["model"]["block_loop"] == "unroll" and report["note"].startswith(
        "compiler figures"
    )
    assert (
        "for a GPU" in report["note"]
        and aot.verdict(report).startswith(f"{name}: needs ")
        and "fits)" in aot.verdict(report)
    )
    small = aot.judge(report, 2**20)
    assert not small["fits"] and "does not fit: raise config.optim.accum_steps" in aot.verdict(
        small
    )
