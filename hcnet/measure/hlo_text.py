"""An optimised HLO module's text as computations and instructions, and the bytes of the arrays
its shapes name (padded to a TPU's tiles or not): what hcnet.measure.hlo counts."""

import dataclasses
import functools
import math
import re

# bytes per element of XLA's types (token and opaque types hold no data)
ITEMSIZE = {
    "pred": 1, "s8": 1, "u8": 1, "s4": 0.5, "u4": 0.5, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
    "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1,
}  # fmt: skip
ARRAY = re.compile(r"\b(\w+)\[([\d,]*)\](?:\{([^}]*)\})?")
HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{$")
INSTRUCTION = re.compile(r"^\s+(ROOT )?%([\w.\-]+) = ")
CALLED = re.compile(
    r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)"
    r"|(?:branch_computations|called_computations)=\{([^}]*)\}"
)


@functools.lru_cache(maxsize=65536)
def array_bytes(shape: str, tiled: bool) -> float:
    """Bytes of the arrays in an HLO shape (a tuple's summed); `tiled`: each padded to its layout's
    first tile, as a TPU stores it."""
    total = 0.0
    for dtype, dims, layout in ARRAY.findall(shape):
        if dtype not in ITEMSIZE:
            continue
        size = [int(d) for d in dims.split(",") if d]
        tile = re.search(r":.*?T\(([\d,]+)\)", layout or "")
        if tiled and tile:
            order = [int(d) for d in layout.split(":")[0].split(",") if d]
            major = [size[d] for d in reversed(order)] or [1]
            t = [int(d) for d in tile[1].split(",")]
            major = [1] * max(0, len(t) - len(major)) + major
            for j in range(1, len(t) + 1):
                major[-j] = -(-major[-j] // t[-j]) * t[-j]
            size = major
        total += math.prod(size) * ITEMSIZE[dtype]
    return total


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    args: str  # the text between the parentheses: the operands, or a constant's value
    attrs: str

    def called(self) -> list[str]:
        names = []
        for one, many in CALLED.findall(self.attrs):
            names += [one] if one else re.findall(r"%([\w.\-]+)", many)
        return names

    def attr(self, key: str) -> str | None:
        m = re.search(rf"\b{key}=%?([\w.\-]+)", self.attrs)
        return m[1] if m else None

    @property
    def op_name(self) -> str:
        m = re.search(r'op_name="([^"]*)"', self.attrs)
        return m[1] if m else ""


PARENTHESIS = re.compile(r"[()]")


def _closing(text: str, start: int) -> int:
    """The index of the parenthesis closing the one at `start`."""
    depth = 0
    for m in PARENTHESIS.finditer(text, start):
        depth += 1 if m[0] == "(" else -1
        if depth == 0:
            return m.start()
    raise ValueError(f"unbalanced parentheses: {text[start : start + 80]}")


def _instruction(name: str, rest: str) -> Instruction:
    if rest.startswith("("):  # a tuple-shaped result
        end = _closing(rest, 0)
        shape, rest = rest[: end + 1], rest[end + 2 :]
    else:
        shape, rest = rest.split(" ", 1)
    opcode = rest[: rest.index("(")]
    end = _closing(rest, len(opcode))
    args = rest[len(opcode) + 1 : end]
    return Instruction(name, shape, opcode, re.findall(r"%([\w.\-]+)", args), args, rest[end + 1 :])


@dataclasses.dataclass
class Module:
    """An HLO module's computations as text and as instructions, and its entry's name."""

    computations: dict[str, list[Instruction]]
    text: dict[str, str]
    roots: dict[str, Instruction]
    entry: str

    @classmethod
    def parse(cls, text: str) -> "Module":
        computations, sources, roots, entry, name, lines = {}, {}, {}, None, None, []
        for line in text.splitlines():
            m = HEADER.match(line)
            if m:
                name, lines = m[2], [line]
                computations[name] = []
                entry = name if m[1] else entry
                continue
            if name is None:
                continue
            lines.append(line)
            if line.startswith("}"):  # "}" or "}, execution_thread=..."
                sources[name] = "\n".join(lines).removeprefix("ENTRY ")
                name = None
                continue
            m = INSTRUCTION.match(line)
            if m:
                i = _instruction(m[2], line[m.end() :])
                computations[name].append(i)
                if m[1]:
                    roots[name] = i
        if entry is None:
            raise ValueError("no ENTRY computation: not an HLO module's text")
        return cls(computations, sources, roots, entry)

    def closure(self, names, seen=None) -> list[str]:
        """The computations `names` call, transitively, each after those it calls."""
        seen = [] if seen is None else seen
        for n in names:
            if n not in seen:
                for i in self.computations[n]:
                    self.closure(i.called(), seen)
                seen.append(n)
        return seen

    def alone(self, chain: list[Instruction], shapes: dict[str, str]) -> str:
        """A module of these instructions alone (an instruction, or an async start and its done):
        their operands as parameters, their computations."""
        params, lines, inside = {}, [], {i.name for i in chain}
        for o in (o for i in chain for o in i.operands):
            if o not in params and o not in inside:
                params[o] = f"p{len(params)}"
                lines.append(f"  %{params[o]} = {shapes[o]} parameter({len(params) - 1})")
        for n, i in enumerate(chain):
            operands = ", ".join("%" + params.get(o, o) for o in i.operands)
            # scheduling edges name instructions left behind
            attrs = re.sub(r", control-predecessors=\{[^}]*\}", "", i.attrs)
            root = "ROOT " if n == len(chain) - 1 else ""
            lines.append(f"  {root}%{i.name} = {i.shape} {i.opcode}({operands}){attrs}")
        called = self.closure([c for i in chain for c in i.called()])
        computations = "".join(self.text[c] + "\n\n" for c in called)
        return f"HloModule alone\n\n{computations}ENTRY %e {{\n" + "\n".join(lines) + "\n}\n"

    def trip_count(self, i: Instruction, shapes: dict[str, Instruction]) -> int | None:
        """A while loop's trip count: XLA's own where it printed one, else from a counted loop's
        form (JAX's scan and fori_loop: `i < N`, i from a constant); None for any other loop."""
        m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', i.attrs)
        if m:
            return int(m[1])
        condition = {x.name: x for x in self.computations[i.attr("condition")]}
        root = self.roots[i.attr("condition")]
        if root.opcode != "compare" or "direction=LT" not in root.attrs:
            return None
        counter, bound = (condition.get(o) for o in root.operands)
        if not (counter and bound) or counter.opcode != "get-tuple-element":
            return None
        if bound.opcode != "constant" or condition.get(counter.operands[0]).opcode != "parameter":
            return None
        init = shapes.get(i.operands[0])
        if init is None or init.opcode != "tuple":
            return None
        start = shapes.get(init.operands[int(counter.attr("index"))])
        while start is not None and start.opcode in ("copy", "bitcast"):
            start = shapes.get(start.operands[0])
        if start is None or start.opcode != "constant":
            return None
        if not (_integer(start) is not None and _integer(bound) is not None):
            return None
        return max(_integer(bound) - _integer(start), 0)


def _integer(i: Instruction) -> int | None:
    return int(i.args) if re.fullmatch(r"-?\d+", i.args) else None
