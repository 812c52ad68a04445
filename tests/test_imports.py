"""The package's imports go one way: each module imports only modules below it in LAYERS
(function-level imports included), so there is no cycle; heavy optional libraries are imported only
where they are used, and importing the library changes no global state."""

import ast
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Low to high: a module may import its own layer's earlier entries and every lower layer, never a
# higher one. Within hcnet/data the order is the listed one too. hcnet/tools and the commands sit
# above everything.
LAYERS = [
    ["hcnet.errors", "hcnet.hostenv", "hcnet.cluster", "hcnet.supervise"],
    ["hcnet.paths", "hcnet.faults"],
    [
        "hcnet.data.transforms",
        "hcnet.data.randaugment",
        "hcnet.data.augment",
        "hcnet.data.seg_transforms",
        "hcnet.data.builders",
        "hcnet.data.segmentation",
        "hcnet.data.instances",
        "hcnet.data.det_transforms",
        "hcnet.data.prepare",
        "hcnet.data.sources",
        "hcnet.data.pipeline",
        "hcnet.data",
    ],
    [
        "hcnet.stencils",
        "hcnet.layers",
        "hcnet.model",
        "hcnet.upernet",
        "hcnet.detection",
        "hcnet.detection.boxes",
        "hcnet.detection.anchors",
        "hcnet.detection.nms",
        "hcnet.detection.roi_align",
        "hcnet.detection.assign",
        "hcnet.detection.losses",
        "hcnet.detection.coco_eval",
        "hcnet.detection.postprocess",
        "hcnet.detection.heads",
        "hcnet.detection.maskrcnn",
        "hcnet.nets",
    ],
    [
        "hcnet.sharding",
        "hcnet.optim",
        "hcnet.config",
        "hcnet.checks",
        "hcnet.convert",
        "hcnet.checkpoint",
        "hcnet.trained",
        "hcnet.finetune",
        "hcnet.monitor",
        "hcnet.seg_inference",
    ],
    [
        "hcnet.evaluators",
        "hcnet.evaluators.classification",
        "hcnet.evaluators.multilabel",
        "hcnet.evaluators.segmentation",
        "hcnet.evaluators.detection",
    ],
    [
        "hcnet.tasks",
        "hcnet.tasks.classification",
        "hcnet.tasks.segmentation",
        "hcnet.tasks.detection",
    ],
    ["hcnet.program", "hcnet.trainer", "hcnet.eval_report"],
    [
        "hcnet.serve",
        "hcnet.serve.predict",
        "hcnet.serve.analysis",
        "hcnet.serve.visualize",
        "hcnet.serve.savedmodel",
        "hcnet.serve.export",
        "hcnet.measure",
        "hcnet.measure.hlo_text",
        "hcnet.measure.hlo",
        "hcnet.measure.count",
        "hcnet.measure.roofline",
        "hcnet.measure.bench",
        "hcnet.measure.data_bench",
        "hcnet.measure.targets",
        "hcnet.measure.aot",
    ],
    ["hcnet.tools"],
    ["hcnet"],  # the package's lazy exports (importlib), and the commands' home
]
# optional heavy dependencies: imported inside the functions that need them, never at a module's
# top, but in the modules whose job they are (TFDS's dataset builders)
LAZY_ONLY = {"tensorflow", "tensorflow_datasets", "torch", "matplotlib", "libtpu"}
OWNERS = {
    "hcnet.data.builders": {"tensorflow_datasets"},
    "hcnet.data.segmentation": {"tensorflow_datasets"},
}


def rank(module: str) -> tuple[int, int]:
    """(layer, position) of a module; a tool (hcnet.tools.*) ranks with hcnet.tools."""
    if module.startswith("hcnet.tools."):
        module = "hcnet.tools"
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i, layer.index(module)
    raise AssertionError(f"{module} is in no layer of tests/test_imports.py: place it")


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for f in sorted((ROOT / "hcnet").rglob("*.py")):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imported(f: pathlib.Path, known) -> list[tuple[str, int, bool]]:
    """(hcnet module or top-level library, line, at module level) of every import in a file."""
    tree = ast.parse(f.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        else:
            continue
        out += [(n, node.lineno, id(node) in top) for n in names]
    return out


def test_every_import_points_down_the_layers():
    known = modules()
    wrong = []
    for name, f in known.items():
        for target, line, _ in imported(f, known):
            if not target.startswith("hcnet") or target == name:
                continue
            target = target if target in known else target.rsplit(".", 1)[0]
            if (
                name != "hcnet"
                and rank(target) >= rank(name)
                and not name.startswith("hcnet.tools")
            ):
                wrong.append(f"{f.relative_to(ROOT)}:{line} imports {target}")
            if name.startswith("hcnet.tools.") and target.startswith("hcnet.tools."):
                wrong.append(f"{f.relative_to(ROOT)}:{line} imports another tool, {target}")
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


def test_the_installed_package_imports_nothing_outside_it_and_heavy_libraries_lazily():
    known = modules()
    wrong = []
    for name, f in known.items():
        for target, line, at_top in imported(f, known):
            root = target.split(".")[0]
            lazy = root in LAZY_ONLY and root not in OWNERS.get(name, ())
            if root == "reference" or (lazy and at_top):
                wrong.append(f"{f.relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_layers_reject_an_upward_import():
    """The check itself: a model module that imported the trainer would be caught."""
    assert rank("hcnet.trainer") > rank("hcnet.model")
    assert rank("hcnet.data.sources") > rank("hcnet.data.prepare")
    assert rank("hcnet.tools.aot") > rank("hcnet.measure.aot") > rank("hcnet.trainer")


def test_importing_the_library_changes_no_global_state():
    """Every library module imported in a fresh process: the environment, fsspec's settings and
    JAX's config are as they were (toggles belong in a command's main)."""
    names = [n for n in modules() if not n.startswith("hcnet.tools") and n != "hcnet"]
    code = f"""
import json, os, sys
import fsspec.config, jax
jax.devices()  # JAX's own start-up (its platform plugins set variables of theirs)
before_env = dict(os.environ)
before_fs = json.dumps(fsspec.config.conf, sort_keys=True, default=str)
before_jax = {{k: str(v) for k, v in jax.config.values.items()}}
import importlib
for name in {names!r}:
    importlib.import_module(name)
env = {{k: v for k, v in os.environ.items() if before_env.get(k) != v}}
fs = json.dumps(fsspec.config.conf, sort_keys=True, default=str) != before_fs
jx = {{k: str(v) for k, v in jax.config.values.items() if before_jax.get(k) != str(v)}}
print(json.dumps({{"env": env, "fsspec": fs, "jax": jx}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "env": {},
        "fsspec": False,
        "jax": {},
    }
