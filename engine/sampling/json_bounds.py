"""Bounds that make constrained JSON end: a small model held to a schema may otherwise write an
integer of 60 digits, a number with endless decimals, or nest `{"a": {"b": {...` until it runs
out of tokens, since the grammar allows all of them.

llguidance has no option for any of these (its JSON options are separators, whitespace, escapes
and `oneOf` handling), but it does compile `minimum`/`maximum` on integers and numbers and
`multipleOf` on numbers into exact patterns. So the schema is rewritten before it is compiled:

- an `integer` without bounds gets the 64-bit range (19 digits at most; the bound is the largest
  float below 2**63, as llguidance reads bounds as floats);
- a `number` without bounds gets +-1e15 and, without a `multipleOf`, steps of 1e-10: at most 15
  digits before the point (or 1e15 itself) and 10 after it, no exponent;
- a free-form value (`{}`, `true`, an object's unspecified `additionalProperties`, an array's
  unspecified `items`, `json_object`'s whole answer) is any JSON nested at most `ANY_DEPTH` deep.

What a schema spells out (its own bounds, its own nesting, recursion through `$ref`) is kept.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

INT_BOUND = 2**63 - 1024
NUMBER_BOUND = 1e15
NUMBER_STEP = 1e-10
ANY_DEPTH = 4
ANY_PREFIX = "hearth_any_"

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "additionalItems", "contains", "not", "if", "then", "else")


def bounded_schema(schema: Mapping[str, Any] | bool) -> Any:
    """`schema` with the bounds above, and the `$defs` of the free-form values it refers to (`false`,
    which allows nothing, as it is)."""
    root = _bound(copy.deepcopy(dict(schema)) if isinstance(schema, Mapping) else schema, top=True)
    if not isinstance(root, dict):
        return root
    defs = dict(root.get("$defs") or {})
    defs.update(any_defs())
    return {**root, "$defs": defs}


def any_defs(depth: int = ANY_DEPTH) -> dict[str, Any]:
    """`hearth_any_<k>`: any JSON value nested at most k deep (0: a scalar)."""
    scalars: list[dict[str, Any]] = [
        {"type": "string"},
        _number({"type": "number"}),
        {"type": "boolean"},
        {"type": "null"},
    ]
    defs: dict[str, Any] = {f"{ANY_PREFIX}0": {"anyOf": scalars}}
    for k in range(1, depth + 1):
        inner = {"$ref": f"#/$defs/{ANY_PREFIX}{k - 1}"}
        nested = [{"type": "array", "items": inner}, {"type": "object", "additionalProperties": inner}]
        defs[f"{ANY_PREFIX}{k}"] = {"anyOf": [*scalars, *nested]}
    return defs


def _any_ref(depth: int = ANY_DEPTH) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{ANY_PREFIX}{depth}"}


def _within(node: dict[str, Any], bound: float) -> dict[str, Any]:
    """`node` with `-bound` as its minimum and `bound` as its maximum where it sets none."""
    if "minimum" not in node and "exclusiveMinimum" not in node:
        node = {**node, "minimum": -bound}
    if "maximum" not in node and "exclusiveMaximum" not in node:
        node = {**node, "maximum": bound}
    return node


def _number(node: dict[str, Any]) -> dict[str, Any]:
    node = _within(node, NUMBER_BOUND)
    if "multipleOf" not in node:
        node = {**node, "multipleOf": NUMBER_STEP}
    return node


def _bound(node: Any, top: bool = False) -> Any:
    if node is True or (isinstance(node, dict) and not node):
        return _any_ref()
    if not isinstance(node, dict):
        return node
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            node[key] = {name: _bound(sub) for name, sub in node[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            node[key] = [_bound(sub) for sub in node[key]]
    for key in _SCHEMA_VALUES:
        if key in node and (node[key] is True or isinstance(node[key], dict)):
            node[key] = _bound(node[key])
    types = node.get("type")
    kinds = {types} if isinstance(types, str) else set(types or ())
    if kinds == {"integer"}:
        node = _within(node, INT_BOUND)
    if kinds == {"number"}:
        node = _number(node)
    if "object" in kinds and "additionalProperties" not in node and "unevaluatedProperties" not in node:
        node = {**node, "additionalProperties": _any_ref(ANY_DEPTH - 1 if top else ANY_DEPTH)}
    if "array" in kinds and "items" not in node and "prefixItems" not in node:
        node = {**node, "items": _any_ref(ANY_DEPTH - 1 if top else ANY_DEPTH)}
    return node
