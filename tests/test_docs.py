"""README.md and docs/ as tests, so that they cannot silently go stale: every Python block runs (a
block marked `<!-- test: skip REASON -->` on the line before it only parses, imports and binds its
calls), every command line they show parses against its command's own flags, every link and
named file exists, and the pages carry no dates, machine names or work history."""

import ast
import importlib
import inspect
import json
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The record of how the figures came about: the one page allowed dates and machines.
HISTORY = ROOT / "docs" / "history.md"
SKIP = re.compile(r"<!--\s*test:\s*skip\b(.*?)-->")
FENCE = re.compile(r"^(\s*)```(\w*)")


def rel(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: pathlib.Path) -> list[dict]:
    """Fenced blocks: {lang, code, line, skip} (skip: the reason, or None)."""
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i][indent:])
            i += 1
        before = next((x for x in reversed(lines[:start]) if x.strip()), "")
        skip = SKIP.search(before)
        out.append(
            {
                "lang": lang,
                "code": "\n".join(body) + "\n",
                "line": start + 1,
                "skip": skip.group(1).strip() if skip else None,
            }
        )
        i += 1
    return out


# --- command lines ---------------------------------------------------------------------------

STOP = {"&&", "||", ";", "|", ">", ">>", "2>&1", "&", ")", "("}


def _tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|&;()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def logical_lines(text: str):
    """Shell lines with continuations joined and quoted newlines kept inside their line."""
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1] + " " + "\0"  # joined to the next line with a space
            continue
        pending = pending.replace(" \0\n", " ")
        try:
            yield _tokens(pending)
        except ValueError:  # an open quote: the command goes on
            continue
        pending = ""


def command_lines(text: str) -> list[tuple[str, list[str]]]:
    """(module or script, args) of every `python[3] -m MODULE` / `python[3] X.py` in shell text,
    quoted commands (`--command="cd hcnet && python train.py ..."`) included."""
    found = []
    for tokens in logical_lines(text):
        for j, tok in enumerate(tokens):
            if any(c.isspace() for c in tok) and "python" in tok:
                inner = tok.partition("=")[2] if tok.startswith("--") else tok
                found += command_lines(inner)
            if tok.rpartition("/")[2] not in ("python", "python3") or j + 1 >= len(tokens):
                continue
            rest = tokens[j + 1 :]
            if rest[0] == "-m" and len(rest) > 1:
                target, args = rest[1], rest[2:]
            elif rest[0].endswith(".py"):
                target, args = rest[0], rest[1:]
            else:
                continue
            cut = next((k for k, a in enumerate(args) if a in STOP), len(args))
            found.append((target, [a.strip("[]") for a in args[:cut]]))
    return found


# docs/history.md keeps commands as they were run; CHANGELOG.md names the old ones on purpose.
COMMAND_PAGES = [p for p in PAGES if p != HISTORY] + [ROOT / "BENCHMARKS.md"]


def documented_commands() -> dict:
    """{module or script: [{"where", "args"}]} over every page's shell blocks and inline code."""
    by_target = {}
    for page in COMMAND_PAGES:
        texts = [
            (b["line"], b["code"])
            for b in blocks(page)
            if b["lang"] in ("bash", "sh", "shell", "console", "")
        ]
        for n, line in enumerate(page.read_text().splitlines(), 1):
            texts += [(n, m) for m in re.findall(r"`([^`]*\bpython3? [^`]+)`", line)]
        for line, text in texts:
            for target, args in command_lines(text):
                if target in ("pip", "pytest", "venv"):
                    continue
                where = {"where": f"{rel(page)}:{line}", "args": args}
                by_target.setdefault(target, []).append(where)
    return by_target


# each command's --help starts with its module's docstring: its examples are held to its flags too
HELP_TEXTS = [
    ROOT / "train.py",
    ROOT / "eval.py",
    *sorted((ROOT / "hcnet/tools").glob("[a-z]*.py")),
]


def help_commands() -> dict:
    """{module or script: [{"where", "args"}]} over the command lines of each command's --help."""
    by_target = {}
    for file in HELP_TEXTS:
        lines, shell = (ast.get_docstring(ast.parse(file.read_text())) or "").splitlines(), []
        for n, line in enumerate(lines):  # command lines and their continuations, not the prose
            if "python" in line and not (n and lines[n - 1].endswith("\\")):
                shell.append(line[line.index("python") :])
            elif n and lines[n - 1].endswith("\\") and shell:
                shell.append(line)
        for target, args in command_lines("\n".join(shell)):
            by_target.setdefault(target, []).append(
                {"where": f"{rel(file)} (--help)", "args": args}
            )
    return by_target


COMMANDS = documented_commands()
for _target, _commands in help_commands().items():
    COMMANDS.setdefault(_target, []).extend(_commands)


def test_the_docs_show_the_commands_a_newcomer_needs():
    """The extraction itself: the README's commands are found, flags and all (a parser that finds
    nothing would pass every check below)."""
    assert {"train.py", "eval.py", "hcnet.tools.aot", "hcnet.tools.prepare"} <= set(COMMANDS)
    quickstart = [c["args"] for c in COMMANDS["train.py"] if c["where"].startswith("README")]
    assert ["--config=configs/quickstart.py", "--workdir=/tmp/hcnet-quickstart"] in quickstart
    quoted = command_lines('ssh --command="cd hcnet && python train.py --workdir=W --x=1" && ls')
    assert quoted == [("train.py", ["--workdir=W", "--x=1"])]
    spanning = command_lines(
        "ssh --command='\n  cd hcnet &&\n  ~/venv/bin/python -m m \\\n  --a=1'"
    )
    assert spanning == [("m", ["--a=1"])]


def test_every_commands_help_shows_a_command_line():
    """The --help texts are read (an extraction that found nothing would check nothing)."""
    shown = {c["where"].split(" ")[0] for cs in help_commands().values() for c in cs}
    assert shown == {rel(f) for f in HELP_TEXTS}, sorted({rel(f) for f in HELP_TEXTS} - shown)


def test_the_aot_help_names_every_topology_it_takes_and_only_those():
    """--topology's help is made from the tables the parsers read: every generation and GPU is
    named, and each example it gives is one the tool takes."""
    from hcnet.measure import targets

    said = targets.topology_names()
    assert all(f"{name}-N" in said for name in targets.CHIPS)
    assert all(gpu in said for gpu in targets.GPUS)
    examples = said.rpartition("e.g. ")[2].split(", ")
    assert len(examples) >= 3
    for example in examples:
        if example[0].isdigit() or example.split("-")[0] in targets.GPUS:
            targets.parse_gpu_topology(example)
        else:
            targets.parse_topology(example)


@pytest.mark.parametrize("target", sorted(COMMANDS))
def test_documented_command_lines_parse(target):
    """Each module or script exists, and every flag shown with it is one of its own (values of the
    flag's type, config fields that exist)."""
    if target.endswith(".py"):
        assert (ROOT / target).is_file(), f"{target}: no such script"
    request = json.dumps({"module": target, "commands": COMMANDS[target]})
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "doc_flags.py")],
        input=request,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    problems = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not problems, "\n".join(problems)


# --- Python blocks ---------------------------------------------------------------------------


def _resolve(node, names):
    """The object an expression of imported names and attributes denotes, or None."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, names)
        if base is None:
            return None
        if not getattr(base, "__name__", "").startswith("hcnet") and not _ours(base):
            return None
        if not hasattr(base, node.attr):
            try:
                return importlib.import_module(f"{base.__name__}.{node.attr}")
            except (ImportError, AttributeError):
                raise AssertionError(f"{base.__name__} has no attribute {node.attr!r}") from None
        return getattr(base, node.attr)
    return None


def _ours(obj) -> bool:
    return getattr(obj, "__module__", "") and obj.__module__.startswith("hcnet")


def static_check(code: str, where: str) -> None:
    """Parses `code`, runs its imports, checks each attribute of an imported hcnet name exists and
    each call of an hcnet function binds to its signature."""
    tree = ast.parse(code, where)
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                module = importlib.import_module(a.name)
                names[a.asname or a.name.split(".")[0]] = (
                    module if a.asname else importlib.import_module(a.name.split(".")[0])
                )
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for a in node.names:
                if hasattr(module, a.name):
                    names[a.asname or a.name] = getattr(module, a.name)
                else:
                    names[a.asname or a.name] = importlib.import_module(f"{node.module}.{a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            try:
                _resolve(node, names)
            except AssertionError as e:
                raise AssertionError(f"{where}: {e}") from None
        if isinstance(node, ast.Call):
            fn = _resolve(node.func, names)
            starred = any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords
            )
            if fn is None or starred or not callable(fn) or not _ours(fn):
                continue
            try:
                inspect.signature(fn).bind(*node.args, **{k.arg: k for k in node.keywords})
            except TypeError as e:
                raise AssertionError(f"{where}: {ast.unparse(node)[:80]}: {e}") from None


PYTHON_PAGES = [p for p in PAGES if any(b["lang"] == "python" for b in blocks(p))]


@pytest.fixture
def documented_paths(smoke_run, tmp_path):
    """What the examples' paths stand for here: the quickstart's workdir is the smoke run (the same
    kind of run, 8 updates), and `digit.png` a real digit from the test split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digit = load_digits().images[-1]
    png = tmp_path / "digit.png"
    Image.fromarray((digit * 255 / 16).astype("uint8")).resize((32, 32)).convert("RGB").save(png)
    return {"/tmp/hcnet-quickstart": str(smoke_run[0]), '"digit.png"': f'"{png}"'}


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=rel)
def test_python_blocks_run(page, documented_paths, monkeypatch, tmp_path):
    """A page's Python blocks run in order in one namespace, from the repository root; a block
    marked skip (it needs ImageNet, an accelerator or torch) parses, imports and binds its calls."""
    monkeypatch.chdir(ROOT)
    from tensorflow_datasets.core import constants

    monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path / "tfds"))  # what ~ means to TFDS
    namespace = {"__name__": "doc_example"}
    for b in blocks(page):
        if b["lang"] != "python":
            continue
        where = f"{rel(page)}:{b['line']}"
        code = b["code"]
        for documented, here in documented_paths.items():
            code = code.replace(documented, here)
        static_check(code, where)
        if b["skip"] is None:
            exec(compile(code, where, "exec"), namespace)  # noqa: S102  (the documentation's own code)


# --- links, files, history -------------------------------------------------------------------


def anchors(page: pathlib.Path) -> set[str]:
    """GitHub's heading anchors of a page."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


NAMED = (
    r"\b((?:configs|notebooks|tests|hcnet|reference)/[\w/.-]+\.(?:py|ipynb|txtpb)"
    r"|requirements[\w-]*\.txt)"
)


def test_links_and_named_files_exist():
    """Every relative link reaches a file (and its #anchor a heading there); every configs/,
    requirements, notebooks/ and tests/ file a page names exists."""
    problems = []
    for page in PAGES + [ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md"]:
        text = re.sub(r"```.*?```|`[^`\n]*`", "", page.read_text(), flags=re.S)  # not in code
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                problems.append(f"{rel(page)}: link {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{rel(page)}: link {target}: no such heading")
        if page.name == "CHANGELOG.md":  # names what was moved or removed
            continue
        for name in set(re.findall(NAMED, page.read_text())):
            if not (ROOT / name).exists():
                problems.append(f"{rel(page)}: names {name}, which does not exist")
    assert not problems, "\n".join(problems)


HISTORY_MARKS = [
    (re.compile(r"\b20\d\d-\d\d-\d\d\b"), "a date"),
    (re.compile(r"\b(EPYC|Xeon|this VM|this session)\b"), "a machine or a session"),
    (re.compile(r"\bcommit [0-9a-f]{7,}\b"), "a commit"),
    (re.compile(r"\b[Ii]ssue \d+\b"), "an issue number"),
    (re.compile(r"\b(before this change|no longer|used to|fixed:)"), "history"),
]


def test_the_docs_speak_of_the_project_alone():
    """No dates, machines, commits, issue numbers or history in README.md and docs/ (the figures'
    provenance lives in BENCHMARKS.md, the record of how they came about in docs/history.md)."""
    problems = [
        f"{rel(page)}:{n}: {what}: {line.strip()[:90]}"
        for page in PAGES
        if page != HISTORY
        for n, line in enumerate(page.read_text().splitlines(), 1)
        for pattern, what in HISTORY_MARKS
        if pattern.search(line)
    ]
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_in_the_readme_index():
    readme = (ROOT / "README.md").read_text()
    missing = [rel(p) for p in PAGES[1:] if f"({rel(p)})" not in readme]
    assert not missing, f"README.md does not link {missing}"


def test_the_readme_stays_short():
    """A newcomer reads it in five minutes; the rest is in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 180
