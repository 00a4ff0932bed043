"""Microsoft's ContainerInstance spec (api-version 2025-09-01), loaded to check bodies.

The spec and the ARM common types are read from ``ASYNCEXEC_AZURE_SPEC`` or
``<project>/../shared/azure-spec``; :class:`SpecMissing` says where it looked. Swagger
2.0 schemas are Draft 4 JSON Schema plus ``x-ms-*`` keywords, which jsonschema
ignores; ``$ref`` into the common types resolves through ``referencing``.

Two registries: requests against the spec as published, responses against a copy
whose ``required`` lists leave out ``x-ms-secret`` properties (ARM never echoes a
secret, yet the spec marks ``LogAnalytics.workspaceKey`` required; see the spec's
README).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import referencing
import referencing.jsonschema
from referencing._core import Resolver

API_VERSION = "2025-09-01"
SPEC_ENV = "ASYNCEXEC_AZURE_SPEC"
_PROVIDER = "specification/containerinstance/resource-manager/Microsoft.ContainerInstance"
SPEC_FILE = f"{_PROVIDER}/ContainerInstance/stable/{API_VERSION}/containerInstance.json"
TYPES_FILE = "specification/common-types/resource-management/v5/types.json"
EXAMPLES_DIR = f"{_PROVIDER}/ContainerInstance/examples/{API_VERSION}"


class SpecMissing(RuntimeError):
    """The ContainerInstance spec is not where ``ASYNCEXEC_AZURE_SPEC`` (or the default) says."""


def spec_root() -> Path:
    """The directory holding ``specification/``: ``$ASYNCEXEC_AZURE_SPEC`` or the shared copy.

    Raises:
        SpecMissing: the spec or the common types are not there.
    """
    env = os.environ.get(SPEC_ENV)
    # tests/fakeazure/_spec.py -> the project is parents[2]; the spec sits beside it.
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "azure-spec"
    for name in (SPEC_FILE, TYPES_FILE):
        if not (root / name).is_file():
            raise SpecMissing(
                f"the Azure ContainerInstance spec is missing: {root / name} does not exist "
                f"(set {SPEC_ENV} to the directory that holds specification/)"
            )
    return root


def _relax_secrets(node: Any) -> Any:
    """A copy of ``node`` whose ``required`` lists name no ``x-ms-secret`` property."""
    if isinstance(node, list):
        return [_relax_secrets(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _relax_secrets(value) for key, value in node.items()}
    properties = node.get("properties")
    if isinstance(node.get("required"), list) and isinstance(properties, dict):
        out["required"] = [
            name
            for name in node["required"]
            if not (isinstance(properties.get(name), dict) and properties[name].get("x-ms-secret"))
        ]
    return out


class Spec:
    """The spec's operations and schemas: validate bodies, strip read-only or secret fields."""

    def __init__(self, root: Path) -> None:
        self.root = root
        spec_path = (root / SPEC_FILE).resolve()
        types_path = (root / TYPES_FILE).resolve()
        self.document: dict[str, Any] = json.loads(spec_path.read_text())
        types: dict[str, Any] = json.loads(types_path.read_text())
        self.uri = spec_path.as_uri()
        self._types_uri = types_path.as_uri()
        self._requests = self._registry(self.document, types)
        self._responses = self._registry(_relax_secrets(self.document), _relax_secrets(types))
        self.operations: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for path, methods in self.document["paths"].items():
            for method, operation in methods.items():
                if isinstance(operation, dict) and "operationId" in operation:
                    self.operations[operation["operationId"]] = (method.upper(), path, operation)
        self._validators: dict[tuple[str, bool], Any] = {}

    def _registry(self, spec: dict[str, Any], types: dict[str, Any]) -> referencing.Registry[Any]:
        draft4 = referencing.jsonschema.DRAFT4
        return referencing.Registry().with_resources(
            [
                (self.uri, draft4.create_resource(spec)),
                (self._types_uri, draft4.create_resource(types)),
            ]
        )

    def examples(self) -> list[tuple[str, dict[str, Any]]]:
        """(file name, parsed example) of every example beside the spec."""
        directory = self.root / EXAMPLES_DIR
        return [(path.name, json.loads(path.read_text())) for path in sorted(directory.iterdir())]

    def body_schema(self, operation_id: str) -> dict[str, Any] | None:
        """The schema of ``operation_id``'s request body, or None if it takes none."""
        for parameter in self.operations[operation_id][2].get("parameters", []):
            if parameter.get("in") == "body":
                schema: dict[str, Any] = parameter["schema"]
                return schema
        return None

    def response_schema(self, operation_id: str, status: int) -> dict[str, Any] | None:
        """The schema of ``operation_id``'s answer ``status`` (else ``default``), or None."""
        responses = self.operations[operation_id][2]["responses"]
        response = responses.get(str(status)) or responses.get("default") or {}
        schema: dict[str, Any] | None = response.get("schema")
        return schema

    def _validator(self, schema: dict[str, Any], response: bool) -> Any:
        ref = schema.get("$ref", "")
        key = (json.dumps(schema, sort_keys=True), response)
        if key not in self._validators:
            rooted = {"$ref": self.uri + ref} if ref.startswith("#") else schema
            registry = self._responses if response else self._requests
            self._validators[key] = jsonschema.Draft4Validator(rooted, registry=registry)
        return self._validators[key]

    def errors(self, schema: dict[str, Any], body: Any, *, response: bool) -> list[str]:
        """What is wrong with ``body`` against ``schema`` (a spec ``$ref``): [] if valid."""
        validator = self._validator(schema, response)
        found = sorted(validator.iter_errors(body), key=lambda error: list(error.absolute_path))
        return [
            "/".join(str(part) for part in error.absolute_path) + ": " + error.message[:300]
            for error in found
        ]

    def definition(self, name: str) -> dict[str, Any]:
        """``{"$ref": "#/definitions/<name>"}``: a schema for :meth:`errors` and :meth:`prune`."""
        return {"$ref": f"#/definitions/{name}"}

    def prune(
        self, body: Any, schema: dict[str, Any], drop: Callable[[dict[str, Any]], bool]
    ) -> Any:
        """A copy of ``body`` without the properties whose schema ``drop`` selects.

        ``drop`` sees both the property's own schema (where ``readOnly`` sits beside a
        ``$ref``) and the schema it refers to.
        """
        resolver = self._requests.resolver(base_uri=self.uri)
        return _prune(copy.deepcopy(body), schema, resolver, drop)


def _resolve(
    schema: dict[str, Any], resolver: Resolver[Any]
) -> tuple[dict[str, Any], Resolver[Any]]:
    while "$ref" in schema:
        resolved = resolver.lookup(schema["$ref"])
        schema, resolver = resolved.contents, resolved.resolver
    return schema, resolver


def _properties(
    schema: dict[str, Any], resolver: Resolver[Any]
) -> dict[str, tuple[dict[str, Any], Resolver[Any]]]:
    schema, resolver = _resolve(schema, resolver)
    found: dict[str, tuple[dict[str, Any], Resolver[Any]]] = {}
    for part in schema.get("allOf", []):
        found.update(_properties(part, resolver))
    for name, sub in schema.get("properties", {}).items():
        found[name] = (sub, resolver)
    return found


def _prune(
    body: Any,
    schema: dict[str, Any],
    resolver: Resolver[Any],
    drop: Callable[[dict[str, Any]], bool],
) -> Any:
    resolved, inner = _resolve(schema, resolver)
    if isinstance(body, list) and isinstance(resolved.get("items"), dict):
        return [_prune(item, resolved["items"], inner, drop) for item in body]
    if not isinstance(body, dict):
        return body
    properties = _properties(resolved, inner)
    extra = resolved.get("additionalProperties")
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in properties:
            sub, sub_resolver = properties[name]
            if drop(sub) or drop(_resolve(sub, sub_resolver)[0]):
                continue
            out[name] = _prune(value, sub, sub_resolver, drop)
        elif isinstance(extra, dict):
            out[name] = _prune(value, extra, inner, drop)
        else:
            out[name] = value
    return out


@functools.lru_cache(maxsize=4)
def load_spec(root: Path | None = None) -> Spec:
    """The spec under ``root`` (default :func:`spec_root`), parsed once per process.

    Raises:
        SpecMissing: the spec is not there.
    """
    return Spec(root if root is not None else spec_root())
