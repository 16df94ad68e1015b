"""Drive every route of the OpenAPI document: sample bodies and resource ids per path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

SAMPLE_STRING = "sample-pass-1"  # satisfies the name patterns and the password rules
SELF_SERVICE = {
    ("POST", "/v1/hosts/register"),  # authenticated by a cluster join token, not a user
    ("POST", "/v1/auth/tokens"),
    ("DELETE", "/v1/auth/tokens/current"),
    ("POST", "/v1/users/me/actions/change-password"),
}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# Platform inventory and catalogues: not any tenant's, so not part of tenant isolation.
PLATFORM_COLLECTIONS = {
    "regions", "clusters", "hosts", "instance-types", "storage-pools", "ip-pools",
}  # fmt: skip


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = spec["components"]["schemas"][name]
    return schema


def sample(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A minimal valid value: only required properties, simple values."""
    schema = _resolve(spec, schema)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if _resolve(spec, s).get("type") != "null"]
            return sample(spec, options[0])
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: sample(spec, props[name]) for name in schema.get("required", [])}
    if kind == "array":
        return [sample(spec, schema["items"])] if schema.get("minItems") else []
    if kind == "integer":
        return max(int(schema.get("minimum", 1)), 1)
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if schema.get("format") == "date-time":
        return (datetime.now(UTC) + timedelta(days=1)).isoformat()
    return SAMPLE_STRING


def routes(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, methods in spec["paths"].items()
        for method, op in methods.items()
        if path.startswith("/v1/")
    ]


def body_for(spec: dict[str, Any], op: dict[str, Any]) -> Any:
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    return None if content is None else sample(spec, content["schema"])


def fill(path: str, ids: dict[str, str]) -> str:
    """Put the resource id of the collection into the path's one parameter."""
    collection = path.split("/")[2]
    if "{" not in path:
        return path
    if collection not in ids:
        raise AssertionError(
            f"{path}: the isolation/permission matrices need a sample resource for "
            f"'{collection}' — add it to the fixture in tests/identity/test_matrices.py"
        )
    start, end = path.index("{"), path.index("}")
    return path[:start] + ids[collection] + path[end + 1 :]
