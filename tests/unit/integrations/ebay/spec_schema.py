"""A small validator of JSON values against the schemas of eBay's published Fulfillment OAS3 spec.

Enough for our spec-derived examples (no new packages): it follows ``$ref``s and checks types,
``required`` lists and ``int32`` ranges, and — stricter than JSON Schema, on purpose — rejects
properties the schema does not declare, so an example cannot invent a field eBay never sends.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from tests.fixtures.official import OFFICIAL

__all__ = ["SPEC_PATH", "schema_errors", "spec"]

SPEC_PATH = OFFICIAL / "ebay" / "spec" / "sell_fulfillment_v1_oas3.v1.20.7.json"

_INT32 = (-(2**31), 2**31 - 1)


@cache
def spec() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return data


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec()
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _check(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    schema = _resolve(schema)
    kind = schema.get("type")
    if kind == "object" or (kind is None and "properties" in schema):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected object, got {type(value).__name__}")
            return
        props: dict[str, Any] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        for name, item in value.items():
            if name in props:
                _check(item, props[name], f"{path}.{name}", errors)
            elif props or schema.get("additionalProperties") is False:
                errors.append(f"{path}.{name}: not in the schema")
    elif kind == "array":
        if not isinstance(value, list):
            errors.append(f"{path}: expected array, got {type(value).__name__}")
            return
        for index, item in enumerate(value):
            _check(item, schema.get("items", {}), f"{path}[{index}]", errors)
    elif kind == "string":
        if not isinstance(value, str):
            errors.append(f"{path}: expected string, got {type(value).__name__}")
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: expected integer, got {type(value).__name__}")
        elif schema.get("format") == "int32" and not _INT32[0] <= value <= _INT32[1]:
            errors.append(f"{path}: outside int32")
    elif kind == "number":
        if not isinstance(value, int | float) or isinstance(value, bool):
            errors.append(f"{path}: expected number, got {type(value).__name__}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected boolean, got {type(value).__name__}")


def schema_errors(value: Any, schema_name: str) -> list[str]:
    """Every mismatch between ``value`` and ``components.schemas[schema_name]`` (empty = valid)."""
    errors: list[str] = []
    _check(value, {"$ref": f"#/components/schemas/{schema_name}"}, schema_name, errors)
    return errors
