"""hcnet.measure.hlo: a compiled program's figures instruction by instruction, loops counted by
their trip counts, and where its bytes go by layer, on this CPU's compiler (a TPU's: test_aot)."""

import re

import jax
import jax.numpy as jnp
import pytest

from hcnet import model, nets
from hcnet.measure import hlo

DEPTHS = (2, 1, 3, 1)  # two stages that scan, with different trip counts


def gradient_program(block_loop: str) -> str:
    """The optimised CPU program of the mu network's parameter gradient (blocks recomputed in the
    backward pass either way, model.remat=True, so both loops do the same arithmetic)."""
    spec = model.model_spec(
        "mu", depths=DEPTHS, block_loop=block_loop, remat=True, drop_path=0.0, dtype="float32"
    )
    definition, weights = nets.ModelDef.from_spec(spec)

    def total(w, x):
        return definition.eval_model(w)(x).sum()

    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    return jax.jit(jax.grad(total)).lower(weights, x).compile().as_text()


@pytest.fixture(scope="module")
def programs():
    return {loop: gradient_program(loop) for loop in ("scan", "unroll")}


def heavy_flops(text: str) -> float:
    """The flops of a program's matmuls and convolutions (alone or fused), loops counted."""
    module = hlo.Module.parse(text)
    heavy = set()
    for instructions in module.computations.values():
        for i in instructions:
            ops = {i.opcode}
            if i.opcode == "fusion":
                ops = {x.opcode for x in module.computations[i.attr("calls")]}
            if ops & {"dot", "convolution"}:
                heavy.add(i.name)
    return sum(c.flops * c.times for c in hlo.costs(text)[0] if c.name in heavy)


def test_a_scanned_program_counts_as_the_unrolled_one(programs):
    """Each scanned stage's body runs `depth` times forward and backward: counted so, the scanned
    gradient's matmuls and convolutions are the unrolled one's (0.2% apart here: elementwise work
    XLA fuses into them differs; 1% allowed). The whole programs differ more, as XLA fuses
    differently across a loop's boundary and recomputes fused producers (flops 5.5% and bytes 7.7%
    apart here; 15% allowed), while XLA's own analysis of the scanned program, each body once,
    is 38% short: the check fails without the trip counts."""
    scanned, scanned_loops = hlo.costs(programs["scan"])
    unrolled, unrolled_loops = hlo.costs(programs["unroll"])
    assert sorted(x["trip_count"] for x in scanned_loops) == [2, 2, 3, 3]  # forward, backward
    assert unrolled_loops == []
    assert heavy_flops(programs["scan"]) == pytest.approx(heavy_flops(programs["unroll"]), rel=0.01)
    got, want = hlo.totals(scanned), hlo.totals(unrolled)
    for key in ("flops", "bytes accessed"):
        assert got[key] == pytest.approx(want[key], rel=0.15), key
    once = hlo.analysis(programs["scan"])
    assert once["flops"] < 0.8 * want["flops"]  # what the trip counts add


def test_each_instruction_alone_adds_up_to_xlas_analysis_of_the_whole_program(programs):
    """Without loops, the per-instruction figures sum to XLA's HloCostAnalysis of the whole
    module: the flops exactly, the bytes but for (some of) the constants, which cost nothing here
    (they are part of the program, not a step's memory traffic)."""
    items, _ = hlo.costs(programs["unroll"])
    whole = hlo.analysis(programs["unroll"])
    total = hlo.totals(items)
    assert total["flops"] == pytest.approx(whole["flops"], rel=1e-6)
    constants = sum(
        hlo.array_bytes(shape, False)
        for shape in re.findall(r"= (\S+) constant\(", programs["unroll"])
    )
    assert whole["bytes accessed"] - constants <= total["bytes accessed"] <= whole["bytes accessed"]


def test_the_breakdown_names_each_layer_kind_and_its_shares_add_up(programs):
    items, _ = hlo.costs(programs["scan"])
    b = hlo.breakdown_of(items, images=2)
    kinds = {k["kind"]: k for k in b["kinds"]}
    assert {"stem", "downsample", "heat", "groupnorm", "ra_mlp", "ra_filter", "head"} <= set(kinds)
    assert sum(k["bytes_share"] for k in b["kinds"]) == pytest.approx(1.0)
    assert sum(k["flops_share"] for k in b["kinds"]) == pytest.approx(1.0)
    # the MLP's 1x1 convolutions are matmuls: most of the network's flops
    assert max(kinds, key=lambda k: kinds[k]["flops_share"]) == "ra_mlp"
    assert len(b["instructions"]) == 12
    sizes = [i["bytes_per_image"] for i in b["instructions"]]
    assert sizes == sorted(sizes, reverse=True)


def test_loops_without_a_counted_form_are_counted_once_and_said():
    """A fori_loop's trip count is read from its condition (i < N, i from a constant) when XLA
    prints none; a loop that runs until its data says stop has none and is counted once."""

    def f(x):
        x = jax.lax.fori_loop(0, 7, lambda i, y: jnp.sin(y) * 2.0, x)
        return jax.lax.while_loop(lambda y: y.sum() < 100.0, lambda y: y * 2.0, x)

    text = jax.jit(f).lower(jnp.ones((8, 128))).compile().as_text()
    stripped = re.sub(r', backend_config=\{"known_trip_count[^\n]*', "", text)
    for program in (text, stripped):
        _, loops = hlo.costs(program)
        assert sorted(x["trip_count"] or 0 for x in loops) == [0, 7], loops


def test_tpu_tiles_pad_an_arrays_last_two_dimensions():
    assert hlo.array_bytes("f32[3,5]{1,0:T(8,128)}", tiled=False) == 60
    assert hlo.array_bytes("f32[3,5]{1,0:T(8,128)}", tiled=True) == 8 * 128 * 4
    # the layout's minor-to-major order decides which dimensions are the tile's
    assert hlo.array_bytes("bf16[64,4]{0,1:T(8,128)(2,1)}", tiled=True) == 8 * 128 * 2
    assert hlo.array_bytes("(f32[2]{0}, s32[])", tiled=True) == 12


def test_the_dumped_program_read_is_the_compilers_newest_since_the_compile(tmp_path, monkeypatch):
    """Where jax cannot print a compiled program (libtpu 0.0.52's v6e steps), hcnet.tools.aot has
    the compiler dump it: the newest TPU or GPU program written since the compile began is read,
    not XLA:CPU's own dumps nor older ones."""
    import os
    import time

    monkeypatch.setenv(hlo.DUMP_ENV, str(tmp_path))
    assert hlo.dumped_text(since=0.0) is None
    old = tmp_path / "module_0001.jit_train_step.after_optimizations.txt"
    old.write_text("old")
    os.utime(old, (100.0, 100.0))
    since = time.time() - 1
    (tmp_path / "module_0002.jit_stage.cpu_after_optimizations.txt").write_text("cpu")
    assert hlo.dumped_text(since) is None
    (tmp_path / "module_0003.jit_train_step.after_optimizations.txt").write_text("new")
    assert hlo.dumped_text(since) == "new"
    monkeypatch.delenv(hlo.DUMP_ENV)
    assert hlo.dumped_text(since) is None
