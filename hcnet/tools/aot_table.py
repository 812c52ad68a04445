"""hcnet.tools.aot's JSON reports as one Markdown table (BENCHMARKS.md, "Compiled ahead of time").

    # one per row
    python -m hcnet.tools.aot --config=configs/hcnet_t.py --topology=v5e-64 --out=t_v5e-64.json
    python -m hcnet.tools.aot_table t_v5e-64.json s_v4-32.json ...

Every figure is the compiler's (compile-only TPU or GPU devices), not a hardware measurement.
Flops and bytes are XLA's per instruction, each loop body times its trip count (hcnet.measure.hlo);
a TPU's bytes with each array padded to its tiles, then without.
"""

import json

from hcnet import paths, tools
from hcnet.errors import UserError
from hcnet.measure import aot

GIB = 2**30
HEADER = (
    "| config | slice / node | batch / device | fits | needed / memory per device (compiler peak) "
    "| largest batch (estimate) | GFLOP / image "
    "| MB / image: on TPU tiles / plain (roofline floor) | eval step needs "
    "| augmentation MB / image | compile |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def _needed(r: dict) -> str:
    """needed / memory (peak), or the compiler's refusal with what it said the temporaries need."""
    memory = f"{r['hbm_bytes'] / GIB:.0f} GiB"
    if "refused" in r:
        need = "-" if r["needed_bytes"] is None else f"{r['needed_bytes'] / GIB:.2f}"
        return f"refused by the compiler: {need} / {memory}"
    return f"{r['needed_bytes'] / GIB:.2f} / {memory} ({r['memory_bytes']['peak'] / GIB:.2f})"


def _cost(r: dict) -> tuple[str, str]:
    if "refused" in r:
        return "-", "-"
    if r.get("cost_counts_loops_once"):  # XLA counted each loop body once: not the step's figures
        return "- (loop)", "- (loop)"
    bytes_ = f"{r['bytes_accessed_per_image'] / 1e6:,.0f}"
    plain = r.get("plain_bytes_accessed_per_image", r["bytes_accessed_per_image"])
    if plain < 0.995 * r["bytes_accessed_per_image"]:  # a TPU's arrays padded to tiles, then not
        bytes_ += f" / {plain / 1e6:,.0f}"
    return f"{r['flops_per_image'] / 1e9:.2f}", bytes_


def row(r: dict) -> str:
    e = r.get("eval")
    evaluation = "-"
    if e is not None:
        need = "refused" if "refused" in e else f"{e['needed_bytes'] / GIB:.2f} GiB"
        evaluation = f"{need} at {e['batch_per_device']:g}"
    augmentation = "-"
    if "augmentation" in r:
        augmentation = f"{r['augmentation']['bytes_accessed_per_image'] / 1e6:.0f}"
    floor = ""
    if "roofline_bytes_per_image" in r:
        floor = f" ({r['roofline_bytes_per_image'] / 1e6:.0f})"
    flops, bytes_ = _cost(r)
    largest = aot.largest_batch(r)
    return (
        f"| `{r.get('config', '?')}` | {r['topology']} ({r['devices']} devices) "
        f"| {r['batch_per_device']:g} | {'yes' if r['fits'] else '**no**'} | {_needed(r)} "
        f"| {'-' if largest is None else largest} | {flops} | {bytes_}{floor} | {evaluation} "
        f"| {augmentation} | {r['compile_seconds']:.0f} s |"
    )


def main(argv):
    files = argv[1:]
    if not files:
        raise UserError("give hcnet.tools.aot's JSON reports (--out=F.json), one per row")
    rows = []
    for f in files:
        try:
            rows.append(row(json.loads(paths.path(f).read_text())))
        except (KeyError, ValueError) as e:
            raise UserError(f"{f}: not a report written by hcnet.tools.aot --out ({e})") from None
    print("\n".join([HEADER, *rows]))


if __name__ == "__main__":
    tools.run(main, files=True)
