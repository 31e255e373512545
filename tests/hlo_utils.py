"""Reading compiled XLA HLO text in tests: which ops run in the steady branch."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \((.*)\) -> .*\{$")
_PARAM = re.compile(r"([\w.\-]+): ([a-z0-9]+)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")
_ARRAY_TYPE = re.compile(r"^([a-z0-9]+)\[([\d,]*)\]")
_CALLED = re.compile(
    r"(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


@dataclass
class Instruction:
  name: str
  dtype: str
  shape: tuple[int, ...]
  op: str
  operands: list[str]
  text: str


@dataclass
class Computation:
  name: str
  shapes: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
  instructions: list[Instruction] = field(default_factory=list)


def _dims(s: str) -> tuple[int, ...]:
  return tuple(int(d) for d in s.split(",") if d)


def parse(hlo: str) -> tuple[dict[str, Computation], str]:
  """Splits HLO text into computations; returns them and the entry's name."""
  comps: dict[str, Computation] = {}
  entry, cur = "", None
  for line in hlo.splitlines():
    m = _HEADER.match(line)
    if m:
      cur = Computation(m.group(2))
      comps[cur.name] = cur
      if m.group(1):
        entry = cur.name
      for pname, dt, dims in _PARAM.findall(m.group(3)):
        cur.shapes[pname] = (dt, _dims(dims))
      continue
    if cur is None:
      continue
    m = _INSTR.match(line)
    if m:
      name, typ, op, rest = m.groups()
      t = _ARRAY_TYPE.match(typ)
      dt, dims = (t.group(1), t.group(2)) if t else ("tuple", "")
      operands = re.findall(r"%([\w.\-]+)", rest.split("),")[0])
      ins = Instruction(name, dt, _dims(dims), op, operands, line)
      cur.shapes[name] = (dt, ins.shape)
      cur.instructions.append(ins)
  return comps, entry


def reachable(comps: dict[str, Computation], entry: str, skip_branch: int | None) -> set[str]:
  """Computations reachable from the entry; with ``skip_branch``, leave out that
  branch of every conditional (for ``lax.cond``, branch 0 is the false branch)."""
  seen, todo = set(), [entry]
  while todo:
    name = todo.pop()
    if name in seen or name not in comps:
      continue
    seen.add(name)
    for ins in comps[name].instructions:
      todo.extend(_CALLED.findall(ins.text))
      b = _BRANCHES.search(ins.text)
      if b:
        branches = [x.strip().lstrip("%") for x in b.group(1).split(",")]
        todo.extend(x for i, x in enumerate(branches) if i != skip_branch)
  return seen


def ops(comps: dict[str, Computation], names: set[str], opnames: set[str]):
  """Yields (computation, instruction, operand element counts) for matching ops."""
  for cname in names:
    comp = comps[cname]
    for ins in comp.instructions:
      if ins.op in opnames:
        sizes = [math.prod(comp.shapes[o][1]) for o in ins.operands if o in comp.shapes]
        yield comp, ins, sizes


def conditional_branches(comps: dict[str, Computation]) -> list[list[str]]:
  """The branch computations of every conditional in the module."""
  out = []
  for comp in comps.values():
    for ins in comp.instructions:
      b = _BRANCHES.search(ins.text)
      if ins.op == "conditional" and b:
        out.append([x.strip().lstrip("%") for x in b.group(1).split(",")])
  return out
