"""Runs one command's rows of tests/test_bad_inputs.py's matrix in one process, each exactly as
its command line runs it (the module's own `__main__` block, with sys.argv set), and writes what
each printed (its file descriptors 1 and 2, so a C++ library's output counts too) and its exit
status. A process per command rather than per row keeps the matrix fast.

    python tests/bad_input_driver.py COMMAND ROWS.json OUT.json

COMMAND is train.py, eval.py or hcnet.tools.NAME; ROWS.json a list of argument lists.
"""

import json
import os
import pathlib
import runpy
import sys
import tempfile
import traceback

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_row(command: str, args: list[str]) -> dict:
    from absl import flags

    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)  # a --config file's override flags: the next row makes its own
    flags.FLAGS.unparse_flags()  # the previous row's values go back to their defaults
    sys.argv = [command, *args]
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile("w+") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            if command.endswith(".py"):
                runpy.run_path(str(ROOT / command), run_name="__main__")
            else:
                runpy.run_module(command, run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as e:  # what the interpreter would make of it
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            status = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:  # noqa: BLE001  the interpreter's traceback, as a user sees it
            traceback.print_exc()
            status = 1
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        out.seek(0)
        return {"args": args, "status": status, "output": out.read()}


def main() -> None:
    command, rows, report = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.insert(0, str(ROOT))
    results = [run_row(command, args) for args in json.loads(pathlib.Path(rows).read_text())]
    pathlib.Path(report).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
