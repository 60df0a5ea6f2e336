"""Which of the model's class ids is which of an annotation file's category ids, checked, not assumed.

Annotation sets number the same 80 COCO classes in several ways: COCO's own ids 1..90 with gaps
(``coco80``), 0..79 like the model (``identity``), 1..80, or their own numbering with names. Scoring with
the wrong table gives a plausible but wrong AP (0.11 instead of 0.81 on a 1..80 set), so ``eval`` decides
from the categories' names when it has them, checks an explicit ``--category-map`` against those names,
and refuses when it cannot tell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .coco_categories import COCO80_TO_91
from .errors import CliError
from .outputs import category_mapper

MAPS = ("coco80", "names", "identity")


def describe_ids(ids: Sequence[int]) -> str:
    """``ids 1..80``, ``ids 0..79``, ``COCO ids 1..90 (80 of them)``, or ``12 ids from 3 to 57``."""
    if not ids:
        return "no categories"
    ordered = sorted(set(ids))
    low, high, count = ordered[0], ordered[-1], len(ordered)
    if high - low + 1 == count:
        return f"ids {low}..{high}"
    if set(ordered) <= set(COCO80_TO_91):
        return f"COCO ids {low}..{high} ({count} of them)"
    return f"{count} ids from {low} to {high}"


def _key(name: str) -> str:
    return " ".join(str(name).lower().split())


def choose_category_map(requested: str | None, names: Sequence[str] | None,
                        annotations: dict[str, Any]) -> tuple[str, str]:
    """(mode for :func:`outputs.category_mapper`, one line saying how the categories were matched).

    Raises CliError when ``requested`` contradicts the annotations' category names, or when nothing tells
    how the ids correspond."""
    categories = [c for c in annotations.get("categories", []) if isinstance(c, dict) and "id" in c]
    ids = [int(c["id"]) for c in categories]
    scheme = describe_ids(ids)
    by_name = {_key(c["name"]): int(c["id"]) for c in categories if c.get("name")}
    name_of = {int(c["id"]): str(c.get("name", "")) for c in categories}
    if names is None:  # a server that does not publish its class names: nothing to check against
        mode = requested or "coco80"
        return mode, f"categories: {scheme}; the model's class names are unknown, so --category-map {mode} is unchecked"
    model = [_key(name) for name in names]
    shared = [index for index, name in enumerate(model) if name in by_name]

    if requested is not None:
        if requested != "names" and shared:
            mapper = category_mapper(requested, names, annotations)
            wrong = [(index, mapper(index)) for index in shared if mapper(index) != by_name[model[index]]]
            if wrong:
                index, cid = wrong[0]
                raise CliError(
                    f"--category-map {requested} does not fit {scheme}: it scores class {index} "
                    f"'{names[index]}' as category {cid} ('{name_of.get(cid, 'not in the annotations')}'), "
                    f"but the annotations call it category {by_name[model[index]]} ({len(wrong)} of "
                    f"{len(shared)} named classes disagree); use --category-map names"
                )
        return requested, f"categories: {scheme}, mapped with --category-map {requested}"

    if shared:
        line = f"categories: {scheme}, matched to the model's classes by name ({len(shared)} of {len(categories)})"
        unmatched = [c.get("name") or str(c["id"]) for c in categories if _key(c.get("name", "")) not in set(model)]
        if unmatched:
            shown = ", ".join(map(str, unmatched[:8])) + (", ..." if len(unmatched) > 8 else "")
            line += f"; not classes of the model, so their objects count as missed: {shown}"
        return "names", line
    if by_name:
        raise CliError(
            f"none of the annotations' category names ({', '.join(list(name_of.values())[:6])}, ...) is a class "
            f"of the model ({', '.join(names[:6])}, ...): pass --category-map coco80 or identity if the "
            "ids themselves correspond"
        )
    # no names at all: only a numbering that cannot be anything else is accepted
    if len(names) == 80 and ids and set(ids) <= set(COCO80_TO_91) and max(ids) > 80:
        return "coco80", f"categories: {scheme} without names, taken as COCO's numbering (coco80)"
    if ids and min(ids) == 0 and set(ids) <= set(range(len(names))):
        return "identity", f"categories: {scheme} without names, taken as the model's own class ids (identity)"
    raise CliError(
        f"cannot tell how the model's classes map to the annotations' categories ({scheme}, no names): "
        "name the categories, or pass --category-map coco80 | identity | names"
    )


def foreign_results(results: Sequence[dict[str, Any]], annotations: dict[str, Any]) -> str | None:
    """A warning when detections (``--detections``) carry category ids the annotations do not have."""
    known = {int(c["id"]) for c in annotations.get("categories", []) if isinstance(c, dict) and "id" in c}
    if not known or not results:
        return None
    foreign = [r for r in results if r.get("category_id") not in known]
    if not foreign:
        return None
    seen = describe_ids([int(r["category_id"]) for r in results if isinstance(r.get("category_id"), int)])
    return (f"{len(foreign)} of {len(results)} detections have category ids the annotations do not have "
            f"(detections: {seen}; annotations: {describe_ids(sorted(known))}): they can only count as false "
            "positives — were they written with another --category-map?")
