"""A compiled program's optimised HLO read instruction by instruction: XLA's own cost analysis
(HloCostAnalysis, run by the CPU client) of each top-level instruction alone, counted as often as
the loops around it run. XLA's analysis of a whole program counts a loop's body once; this gives a
scanned program's figures per step, and traces each instruction's bytes to the layer it comes from
(hcnet.tools.aot --breakdown; the figures in BENCHMARKS.md, "Where the bytes go").

On a TPU an array occupies whole (8, 128) tiles (its layout's T(...)): each instruction's bytes are
scaled by how much its operands and result grow when padded to their tiles. libtpu's own count
models more than that (gathers, operands read again): within 3% of this one on the smoke step,
twice it on HcNet-T's, each counted once; this one is the same rule for every program and chip.
"""

import collections
import dataclasses
import functools
import os
import pathlib
import re

from hcnet.measure.hlo_text import Instruction, Module, array_bytes

# instructions that move no data of their own (views, tuples) or whose work is their computations'
NO_COST = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "call"}
NO_COST |= {"conditional", "after-all", "add-dependency", "opt-barrier"}
# what model code runs under which jax.named_scope (hcnet/layers.py, hcnet/program.py): an
# instruction belongs to the innermost of these its op_name names
SCOPES = (
    "stem", "downsample", "heat", "groupnorm", "ra_mlp", "ra_filter", "head", "loss",
    "augmentation", "optimizer",
)  # fmt: skip
MOVES = {"copy", "copy-start", "copy-done", "transpose", "bitcast", "reshape", "parameter"}
MOVES |= {"slice-start", "slice-done", "tuple", "get-tuple-element"}
# how lax.scan writes each iteration's saved arrays into stacked buffers and reads them back
STACKING = {"dynamic_update_index_in_dim", "dynamic_index_in_dim"}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


@dataclasses.dataclass
class Cost:
    """One top-level instruction: XLA's flops and bytes for one run of it, how many times a step
    runs it, and the bytes again with its arrays padded to TPU tiles."""

    name: str
    opcode: str
    op_name: str
    kind: str
    flops: float
    transcendentals: float
    bytes: float
    tiled_bytes: float
    times: int
    approximated: bool = False  # XLA's analysis could not read it: its arrays' bytes instead


def kind(i: Instruction, module: Module) -> str:
    """Which part of the network an instruction belongs to (SCOPES), or a data movement of its
    own: layout copies and moves between memory spaces, collectives, a scanned loop's stacking of
    the arrays its backward pass reads, or 'other'."""
    if i.opcode.startswith(COLLECTIVES):
        return "collectives"
    ops = {i.opcode}
    if i.opcode == "fusion":
        ops = {x.opcode for x in module.computations[i.attr("calls")]}
    if ops <= MOVES:
        return "layout copies"
    # a scope inside a transformation reads "jvp(heat)", "transpose(jvp(ra_mlp))": the names alone
    names = re.findall(r"[A-Za-z_]\w*", i.op_name)
    for name in reversed(names):
        if name in SCOPES:
            return name
    if STACKING & set(names):
        return "loop stacking"
    return "other"


def costs(text: str, backend=None) -> tuple[list[Cost], list[dict]]:
    """Each top-level instruction's cost and how many times it runs; and the program's loops (where
    they come from, their trip counts: None where it is not a counted loop, then counted once)."""
    module = Module.parse(text)
    out, loops = [], []

    def walk(name: str, times: int) -> None:
        shapes = {x.name: x for x in module.computations[name]}
        texts = {k: v.shape for k, v in shapes.items()}
        for i in module.computations[name]:
            if i.opcode == "while":
                n = module.trip_count(i, shapes)
                loops.append({"op_name": i.op_name, "trip_count": n, "runs": times})
                walk(i.attr("body"), times * (n or 1))
                walk(i.attr("condition"), times * ((n or 0) + 1))
                continue
            if i.opcode == "call":
                walk(i.attr("to_apply"), times)
                continue
            if i.opcode == "conditional":  # its costliest branch, as XLA's analysis counts it
                branches = []
                for c in i.called():
                    mark = len(out)
                    walk(c, times)
                    branches.append(out[mark:])
                    del out[mark:]
                out.extend(max(branches, key=lambda b: sum(x.tiled_bytes for x in b)))
                continue
            if i.opcode in NO_COST:
                continue
            arrays = [shapes[o].shape for o in i.operands] + [i.shape]
            plain = sum(array_bytes(s, False) for s in arrays)
            padded = sum(array_bytes(s, True) for s in arrays)
            try:
                if i.opcode.endswith(("-done", "-update")):  # with its start: what the pair adds
                    start = shapes[i.operands[0]]
                    pair = analysis(module.alone([start, i], texts), backend)
                    alone = analysis(module.alone([start], texts), backend)
                    c = {k: pair.get(k, 0.0) - alone.get(k, 0.0) for k in pair}
                else:
                    c = analysis(module.alone([i], texts), backend)
                approximated = False
            except RuntimeError:  # a form this jaxlib's XLA cannot read (a TPU's SparseCore
                # offloads): its operands and result once, no flops
                c, approximated = {"bytes accessed": plain}, True
            bytes_ = c.get("bytes accessed", 0.0)
            out.append(
                Cost(
                    i.name,
                    i.opcode,
                    i.op_name,
                    kind(i, module),
                    c.get("flops", 0.0),
                    c.get("transcendentals", 0.0),
                    bytes_,
                    bytes_ * (padded / plain if plain else 1.0),
                    times,
                    approximated,
                )
            )

    walk(module.entry, 1)
    return out, loops


def totals(items: list[Cost]) -> dict:
    """The step's flops and bytes: each instruction's times the number of times it runs."""
    return {
        "flops": sum(c.flops * c.times for c in items),
        "bytes accessed": sum(c.bytes * c.times for c in items),
        "tiled bytes accessed": sum(c.tiled_bytes * c.times for c in items),
    }


def breakdown_of(items: list[Cost], images: float, top: int = 12) -> dict:
    """Where a step's bytes and flops go, per image: by kind (SCOPES, layout copies, collectives,
    loop stacking, other), the largest first with their shares, and the `top` instructions by
    bytes (on a TPU, each array padded to its tiles)."""
    total_bytes = sum(c.tiled_bytes * c.times for c in items) or 1.0
    total_flops = sum(c.flops * c.times for c in items) or 1.0
    groups = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for c in items:
        g = groups[c.kind]
        g[0] += c.tiled_bytes * c.times
        g[1] += c.flops * c.times
        g[2] += 1
    kinds = [
        {
            "kind": k,
            "bytes_per_image": b / images,
            "bytes_share": b / total_bytes,
            "gflop_per_image": f / images / 1e9,
            "flops_share": f / total_flops,
            "instructions": n,
        }
        for k, (b, f, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])
    ]
    largest = sorted(items, key=lambda c: -c.tiled_bytes * c.times)[:top]
    instructions = [
        {
            "name": c.name,
            "opcode": c.opcode,
            "kind": c.kind,
            "op_name": c.op_name,
            "times": c.times,
            "bytes_per_image": c.tiled_bytes * c.times / images,
            "bytes_share": c.tiled_bytes * c.times / total_bytes,
        }
        for c in largest
    ]
    return {"kinds": kinds, "instructions": instructions}


def describe(b: dict) -> str:
    """A breakdown as text for a terminal."""
    rows = ["  where the bytes go (per image, by kind):"]
    for k in b["kinds"]:
        rows.append(
            f"    {k['kind']:<14} {k['bytes_per_image'] / 1e6:9.1f} MB {k['bytes_share']:6.1%}"
            f"  {k['gflop_per_image']:7.2f} GFLOP {k['flops_share']:6.1%}"
            f"  ({k['instructions']} instructions)"
        )
    rows.append("  the largest instructions:")
    for i in b["instructions"]:
        where = i["op_name"].removeprefix("jit(train_step)/")
        rows.append(
            f"    {i['bytes_per_image'] / 1e6:8.1f} MB {i['bytes_share']:6.1%}  {i['kind']:<13} "
            f"{i['opcode']} x{i['times']}  {where[-90:]}"
        )
    return "\n".join(rows)


def compiled_costs(
    compiled, images: float, loops: bool = False, breakdown: bool = False, program=None
) -> dict:
    """Flops and bytes per image: each instruction of the optimised program as XLA's cost analysis
    counts it, times the trip counts of the loops around it (`costs`), beside the
    compiled program's own analysis, which counts each loop body once. Where the program cannot be
    printed (`program`: its text where the caller has it, e.g. from `dumped_text`), the compiled
    program's own figures alone (and whether they count loops once)."""
    own = compiled.cost_analysis()
    own = (own[0] if isinstance(own, list) else own) or {}
    fallback = {
        "flops_per_image": own.get("flops", float("nan")) / images,
        "bytes_accessed_per_image": own.get("bytes accessed", float("nan")) / images,
        "cost_source": "compiled",
        "cost_counts_loops_once": loops,
    }
    program = program or program_text(compiled)
    if program is None:
        return fallback
    try:
        items, found = costs(program)
    except (ValueError, KeyError, IndexError, RuntimeError) as e:
        # a compiler's text this reader does not know: the compiled program's own figures
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return {**fallback, "cost_source": f"compiled (its text unread per instruction: {reason})"}
    total = totals(items)
    out = {
        "flops_per_image": total["flops"] / images,
        # on a TPU each array padded to its tiles (elsewhere the same as the plain count)
        "bytes_accessed_per_image": total["tiled bytes accessed"] / images,
        "plain_bytes_accessed_per_image": total["bytes accessed"] / images,
        "cost_source": "per instruction, loops by their trip counts (hcnet.measure.hlo)",
        "cost_counts_loops_once": False,
        "loops": found,
        "approximated_instructions": sum(c.approximated for c in items),
    }
    if own:
        out["compiler_counts_loops_once"] = {
            "flops_per_image": own.get("flops", float("nan")) / images,
            "bytes_accessed_per_image": own.get("bytes accessed", float("nan")) / images,
        }
    if breakdown:
        out["breakdown"] = breakdown_of(items, images)
    return out


def program_text(compiled) -> str | None:
    """The optimised program's text; None where it cannot be printed (libtpu 0.0.52's v6e and
    TPU7x programs fail a check on the way to text)."""
    try:
        return compiled.as_text() or None
    except RuntimeError:  # jax's JaxRuntimeError
        return None


# where hcnet.tools.aot has the compilers dump each optimised program (XLA's --xla_dump_to)
DUMP_ENV = "HCNET_XLA_DUMP"


def dump_flags(directory: str) -> str:
    """XLA flags that make a compiler (libtpu's included) write each optimised program's text to
    `directory`: its own printer, where jax's reader of the compiled program fails."""
    return f"--xla_dump_to={directory} --xla_dump_hlo_as_text"


def dumped_text(since: float) -> str | None:
    """The newest optimised program a compiler wrote to $HCNET_XLA_DUMP at or after `since`
    (time.time()); None where nothing was dumped."""
    directory = os.environ.get(DUMP_ENV)
    if not directory:
        return None
    # <module>.after_optimizations.txt: the TPU and GPU compilers' (the CPU's: cpu_after_...)
    files = [f for f in pathlib.Path(directory).glob("*.after_optimizations.txt")]
    files = [f for f in files if f.stat().st_mtime >= since]
    return max(files, key=lambda f: f.stat().st_mtime).read_text() if files else None


def analysis(text: str, backend=None) -> dict:
    """XLA's HloCostAnalysis of a module's text (as the CPU client runs it: flops, transcendentals,
    bytes accessed, each array at its plain size)."""
    from jax._src.lib import hlo, xla_client

    # stack frame ids point into a table the printed text does not carry
    module = hlo.hlo_module_from_text(re.sub(r" stack_frame_id=\d+", "", text))
    return xla_client._xla.hlo_module_cost_analysis(backend or cpu_backend(), module)


@functools.cache
def cpu_backend():
    from jax._src import xla_bridge

    return xla_bridge.get_backend("cpu")
