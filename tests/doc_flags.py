"""Checks command lines against one command's own flags, in a process of its own (two commands
may define the same flag name): `python tests/doc_flags.py < {"module": ..., "commands": [...]}`
prints a JSON list of problems, one line each.

A command is `{"where": "README.md:12", "args": ["--config=configs/hcnet_t.py", ...]}`. Each
`--name[=value]` must be one of the command's key flags (those it defines or declares), or
`--noname` of a boolean one; a value must parse as that flag's type unless it is a placeholder in
capitals (`N`, `DIR`); `--config=FILE[:ARG]` must load and each `--config.a.b` must name a field of
it.
"""

import json
import os
import re
import runpy
import sys

from absl import flags

FLAGS = flags.FLAGS
ABSL = {"verbosity", "v", "logtostderr", "alsologtostderr", "log_dir", "help", "helpfull"}
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")


def load(module: str) -> str:
    """Imports the command without running it; returns the name its flags are registered under."""
    if module.endswith(".py"):
        runpy.run_path(module, run_name="doc_command")
        return "doc_command"
    __import__(module)
    return module


def config_fields(spec: str):
    from hcnet import config as config_lib

    return config_lib.from_file(spec)


def check(args: list, key: dict) -> list:
    problems = []
    config = None
    for arg in args:
        if not arg.startswith("--") or arg == "--":
            continue
        name, has_value, value = arg[2:].partition("=")
        if name.startswith("config."):
            if config is None:
                spec = next((a.partition("=")[2] for a in args if a.startswith("--config=")), None)
                if spec is None:
                    problems.append(f"{arg}: no --config=FILE to set it in")
                    continue
                try:
                    config = config_fields(spec)
                except Exception as e:  # noqa: BLE001  (reported, one line)
                    problems.append(f"--config={spec}: {type(e).__name__}: {e}")
                    continue
            node = config
            for part in name.split(".")[1:]:
                if not hasattr(node, "keys") or part not in node:
                    problems.append(f"--{name}: the config has no field {part!r} there")
                    break
                node = node[part]
            continue
        flag = key.get(name)
        if flag is None and name.startswith("no") and not has_value:
            flag = key.get(name[2:])
            if flag is not None and flag.boolean:
                continue
            flag = None
        if flag is None:
            if name not in ABSL:
                problems.append(f"--{name}: not a flag of this command")
            continue
        if name == "config":
            try:
                config_fields(value)
            except Exception as e:  # noqa: BLE001
                problems.append(f"--config={value}: {type(e).__name__}: {e}")
            continue
        if has_value and not PLACEHOLDER.fullmatch(value):
            try:
                flag.parser.parse(value)
            except Exception as e:  # noqa: BLE001
                problems.append(f"--{name}={value}: {e}")
    return problems


def main():
    sys.path.insert(0, os.getcwd())  # the repository root: hcnet, reference, train.py
    request = json.load(sys.stdin)
    try:
        registered = load(request["module"])
    except Exception as e:  # noqa: BLE001
        print(json.dumps([f"{request['module']}: does not import: {type(e).__name__}: {e}"]))
        return
    key = {f.name: f for f in FLAGS.get_key_flags_for_module(registered)}
    problems = [f"{c['where']}: {p}" for c in request["commands"] for p in check(c["args"], key)]
    print(json.dumps(problems))


if __name__ == "__main__":
    main()
