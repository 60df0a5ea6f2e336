"""Bound a pickle's shape before anything in it is built: nesting depth and object count.

The C unpickler builds nesting of any depth without recursing, but what is done with the result may
recurse in C without a depth check: hashing a tuple nested a million deep (as a dict key or a set
member, *during* unpickling) overflows the C stack and kills the interpreter, and ``str``/``repr`` of a
shallower one raises ``RecursionError``. :func:`scan` walks the opcodes with :mod:`pickletools` (pure
Python, iterative: nothing is built and nothing recursed), keeps one depth per stack item, and refuses
the pickle before :class:`~.safe_pickle.SafeUnpickler` sees it. Memo indices are bounded too: the C
unpickler allocates its memo table up to the largest index a pickle names.

Depth is counted in containers: a scalar is 0, a container 1 + its deepest member. An official
``yolov7.pt`` nests 22 deep (in these units) and holds ~28,000 objects; the limits leave wide margins above both.
"""

from __future__ import annotations

import pickletools

__all__ = ["MAX_DEPTH", "MAX_OBJECTS", "PickleShapeError", "scan"]

MAX_DEPTH = 100
MAX_OBJECTS = 1_000_000


class PickleShapeError(ValueError):
    """The pickle nests too deeply, holds too many objects, or its opcodes do not form a pickle."""


class _Cell:
    """The depth of one object on the unpickler's stack (shared through the memo, like the object)."""

    __slots__ = ("depth",)

    def __init__(self, depth: int) -> None:
        self.depth = depth


_MARK = object()
_LEAF = _Cell(0)  # every scalar shares one cell: the scan's memory grows with containers only
_NEW_FROM_MARK = {"TUPLE", "LIST", "DICT", "FROZENSET", "INST", "OBJ"}  # pop to mark, push a new object
_ADD_FROM_MARK = {"APPENDS", "SETITEMS", "ADDITEMS"}  # pop to mark, add to the object below
_ADD = {"APPEND": 1, "SETITEM": 2, "BUILD": 1}  # pop n, add to the object below
_NEW_EMPTY = {"EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"}
_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}


def scan(data: bytes, max_depth: int = MAX_DEPTH, max_objects: int = MAX_OBJECTS) -> tuple[int, int]:
    """``(depth, objects)`` of the pickle in ``data``; raises :class:`PickleShapeError` over the limits."""
    stack: list = []
    memo: dict = {}
    deepest = objects = 0

    def pop_to_mark() -> list[_Cell]:
        items = []
        while stack:
            top = stack.pop()
            if top is _MARK:
                return items
            items.append(top)
        raise PickleShapeError("malformed pickle: no mark on the stack")

    def pop(count: int) -> list[_Cell]:
        if len(stack) < count or any(item is _MARK for item in stack[len(stack) - count :]):
            raise PickleShapeError("malformed pickle: stack underflow")
        items = stack[len(stack) - count :]
        del stack[len(stack) - count :]
        return items

    def deepen(cell: _Cell, members: list[_Cell]) -> None:
        nonlocal deepest
        if members:
            cell.depth = max(cell.depth, 1 + max(member.depth for member in members))
        if cell.depth > deepest:
            deepest = cell.depth
            if deepest > max_depth:
                raise PickleShapeError(f"malformed pickle: nested deeper than {max_depth} levels")

    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name == "MARK":
                stack.append(_MARK)
                continue
            if name in _PUT or name == "MEMOIZE":
                if not stack or stack[-1] is _MARK:
                    raise PickleShapeError("malformed pickle: memo put with an empty stack")
                key = len(memo) if name == "MEMOIZE" else arg
                if not isinstance(key, int) or not 0 <= key <= max_objects:
                    # the C unpickler sizes its memo table by the largest index: 2**32 would be 32 GiB
                    raise PickleShapeError(f"malformed pickle: memo index {key} is out of range")
                memo[key] = stack[-1]
                continue
            if name in _GET:
                if arg not in memo:
                    raise PickleShapeError(f"malformed pickle: memo key {arg!r} was never set")
                stack.append(memo[arg])
                continue
            if name in ("PROTO", "FRAME", "STOP"):
                continue
            if name == "POP_MARK":
                pop_to_mark()
                continue
            if name in _ADD_FROM_MARK or name in _ADD:
                members = pop_to_mark() if name in _ADD_FROM_MARK else pop(_ADD[name])
                if not stack or stack[-1] is _MARK:
                    raise PickleShapeError(f"malformed pickle: {name} without an object to add to")
                if stack[-1] is _LEAF:  # adding to a scalar: the unpickler will refuse it; give it a cell
                    stack[-1] = _Cell(0)
                deepen(stack[-1], members)
                continue
            if name in _NEW_FROM_MARK:
                members = pop_to_mark()
                if name == "OBJ" and not members:
                    raise PickleShapeError("malformed pickle: OBJ without a class")
                cell = _Cell(1)
            elif name == "DUP":
                if not stack or stack[-1] is _MARK:
                    raise PickleShapeError("malformed pickle: DUP with an empty stack")
                stack.append(stack[-1])
                continue
            else:  # scalars, globals, REDUCE, NEWOBJ, TUPLE1-3, persistent ids, ...: the declared stack effect
                before = opcode.stack_before
                if pickletools.markobject in before:
                    raise PickleShapeError(f"malformed pickle: unexpected opcode {name}")
                members = pop(len(before))
                if len(opcode.stack_after) != 1:
                    continue  # POP
                container = name in _NEW_EMPTY or name.startswith("TUPLE") or bool(members)
                cell = _Cell(1) if container else _LEAF
            objects += 1
            if objects > max_objects:
                raise PickleShapeError(f"malformed pickle: more than {max_objects} objects")
            deepen(cell, members)
            stack.append(cell)
    except PickleShapeError:
        raise
    except ValueError as error:  # pickletools' own complaints: unknown opcode, truncated data, ...
        raise PickleShapeError(f"malformed pickle: {error}") from None
    return deepest, objects
