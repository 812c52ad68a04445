"""hcnet.tools.aot's JSON reports as one Markdown table (BENCHMARKS.md, "Compiled for TPU slices").

    # one per row
    python -m hcnet.tools.aot --config=configs/hcnet_t.py --topology=v5e-64 --out=t_v5e-64.json
    python -m hcnet.tools.aot_table t_v5e-64.json s_v4-32.json ...

Every figure is the TPU compiler's (libtpu's compile-only devices), not a hardware measurement.
"""

import json

from hcnet import paths, tools
from hcnet.errors import UserError
from hcnet.measure import aot

GIB = 2**30
HEADER = (
    "| config | slice | batch / device | fits | needed / HBM per device (compiler peak) | largest "
    "batch "
    "(estimate) | GFLOP / image | MB / image (roofline floor) | eval step needs | augmentation MB "
    "/ image "
    "| compile |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(r: dict) -> str:
    m = r["memory_bytes"]
    evaluation = (
        f"{r['eval']['needed_bytes'] / GIB:.2f} GiB at {r['eval']['batch_per_device']:g}"
        if "eval" in r
        else "-"
    )
    augmentation = (
        f"{r['augmentation']['bytes_accessed_per_image'] / 1e6:.0f}" if "augmentation" in r else "-"
    )
    floor = (
        f" ({r['roofline_bytes_per_image'] / 1e6:.0f})" if "roofline_bytes_per_image" in r else ""
    )
    flops, bytes_ = (
        f"{r['flops_per_image'] / 1e9:.2f}",
        f"{r['bytes_accessed_per_image'] / 1e6:,.0f}",
    )
    if r.get("cost_counts_loops_once"):  # XLA counted each loop body once: not the step's figures
        flops = bytes_ = "- (loop)"
    return (
        f"| `{r.get('config', '?')}` | {r['topology']} ({r['devices']} devices) "
        f"| {r['batch_per_device']:g} | {'yes' if r['fits'] else '**no**'} "
        f"| {r['needed_bytes'] / GIB:.2f} / {r['hbm_bytes'] / GIB:.0f} GiB ({m['peak'] / GIB:.2f}) "
        f"| {aot.largest_batch(r)} | {flops} | {bytes_}{floor} | {evaluation} | {augmentation} "
        f"| {r['compile_seconds']:.0f} s |"
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
    tools.run(main)
