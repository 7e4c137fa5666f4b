#!/usr/bin/env python3
"""Writes strict, standalone JSON schemas for kubeconform without the internet.

kubeconform downloads its schemas from a web host this machine cannot reach, so they are
made here: the built-in kinds from the live API server's OpenAPI v3 documents (fetched with
`kubectl get --raw`, so they match the server's version exactly), the custom kinds from
CRD files (ours from crds/, others such as ServiceMonitor from wherever the caller found
them). Layout: OUT/<group or version>/<kind>_<version>.json, which kubeconform finds with
-schema-location 'OUT/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'.

Strict means what kubeconform's -strict schemas mean: an object schema with properties
refuses properties it does not list (unless x-kubernetes-preserve-unknown-fields says
otherwise), so a misspelt or misplaced field fails validation.
"""

import argparse
import copy
import json
import os
import subprocess
import sys

import yaml

# The API groups whose kinds the chart renders (and a few neighbours). Fetching all of
# them would work too but costs a few seconds more on a busy machine.
GROUP_VERSIONS = [
    "api/v1",
    "apis/apps/v1",
    "apis/rbac.authorization.k8s.io/v1",
    "apis/networking.k8s.io/v1",
    "apis/policy/v1",
    "apis/apiextensions.k8s.io/v1",
    "apis/coordination.k8s.io/v1",
    "apis/events.k8s.io/v1",
    "apis/autoscaling/v2",
]

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def kubectl_raw(path):
    out = subprocess.run(
        ["kubectl", "get", "--raw", "/openapi/v3/" + path],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def inline(schema, components, stack=()):
    """Replaces every $ref with the schema it names; a reference back into the chain
    being inlined (JSONSchemaProps refers to itself) becomes an open schema."""
    if isinstance(schema, list):
        return [inline(item, components, stack) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in stack:
            return {}
        return inline(components[name], components, stack + (name,))
    result = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            result[key] = {k: inline(v, components, stack) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            result[key] = inline(value, components, stack)
        else:
            result[key] = value
    # OpenAPI v3 wraps a reference as {allOf: [{$ref}], default, description}: unwrap it.
    if list(result.get("allOf", [])) and len(result["allOf"]) == 1 and "type" not in result:
        inner = result.pop("allOf")[0]
        merged = dict(inner)
        merged.update({k: v for k, v in result.items() if k in ("description",)})
        return merged
    return result


def strict(schema, in_crd=False):
    """Closes object schemas; turns the Kubernetes extensions into JSON Schema."""
    if isinstance(schema, list):
        return [strict(item, in_crd) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            result[key] = {k: strict(v, in_crd) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            result[key] = strict(value, in_crd)
        elif key == "default":
            continue  # defaults are applied by the server, not checked
        else:
            result[key] = value
    if result.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result.setdefault("oneOf", [{"type": "integer"}, {"type": "string"}])
    if result.pop("nullable", False) and "type" in result:
        result["type"] = [result["type"], "null"]
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def write(out, group, version, kind, schema):
    directory = os.path.join(out, group or version)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{kind.lower()}_{version}.json")
    with open(path, "w") as f:
        json.dump(schema, f)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("crds", nargs="*", help="CRD YAML files")
    args = parser.parse_args()

    object_meta = None
    count = 0
    for group_version in GROUP_VERSIONS:
        document = kubectl_raw(group_version)
        components = document["components"]["schemas"]
        for name, schema in components.items():
            if name == OBJECT_META and object_meta is None:
                object_meta = strict(inline(schema, components))
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                # Only the kinds this group-version serves, not shared ones such as DeleteOptions.
                served = group_version.split("/", 1)[1]
                if f"{gvk['group']}/{gvk['version']}".lstrip("/") != served:
                    continue
                if "properties" not in schema or "kind" not in schema["properties"]:
                    continue
                full = strict(inline(schema, components))
                write(args.out, gvk["group"], gvk["version"], gvk["kind"], full)
                count += 1
    if object_meta is None:
        sys.exit("k8s_json_schemas: no ObjectMeta in the API server's OpenAPI documents")

    for path in args.crds:
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                    schema.setdefault("properties", {})
                    schema["properties"]["apiVersion"] = {"type": "string"}
                    schema["properties"]["kind"] = {"type": "string"}
                    schema["properties"]["metadata"] = object_meta
                    full = strict(schema, in_crd=True)
                    full["properties"]["metadata"] = object_meta
                    write(args.out, spec["group"], version["name"], spec["names"]["kind"], full)
                    count += 1
    print(f"k8s_json_schemas: {count} schemas in {args.out}")


if __name__ == "__main__":
    main()
