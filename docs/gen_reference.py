#!/usr/bin/env python3
"""Writes docs/reference.md, the reference of every custom resource field, from crds/*.yaml.

The CRDs are generated from the Rust types (crdgen), so this page follows the code: run
`python3 docs/gen_reference.py` after `crdgen`; `--check` fails when the committed page is
stale (charts/test.sh runs it in CI).
"""

import argparse
import difflib
import glob
import json
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "docs", "reference.md")
# The order in which a reader meets the kinds: topics first, then what uses them.
KIND_ORDER = ["EventTopic", "EventConsumer", "WebhookIngress"]


def cell(text):
    """One Markdown table cell: no newlines, no bare pipes."""
    return " ".join(str(text).split()).replace("|", "\\|")


def code(value):
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value, separators=(', ', ': '))}`"
    return f"`{json.dumps(value)}`"


def type_of(schema):
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = schema.get("type", "")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {})) or 'any'}"
    if kind == "object" and "additionalProperties" in schema and "properties" not in schema:
        inner = schema["additionalProperties"]
        return f"map of {type_of(inner) if isinstance(inner, dict) else 'any'}"
    if not kind and schema.get("x-kubernetes-preserve-unknown-fields"):
        return "any"
    if schema.get("format") in ("date-time", "int32", "int64"):
        return f"{kind} ({schema['format']})"
    return kind


def constraints(schema, required):
    parts = []
    if required:
        parts.append("required")
    if "default" in schema:
        parts.append(f"default {code(schema['default'])}")
    if "enum" in schema:
        parts.append("one of " + ", ".join(code(v) for v in schema["enum"]))
    for key, label in (("minimum", "min"), ("maximum", "max"), ("minLength", "min length"),
                       ("maxLength", "max length"), ("minItems", "min items"),
                       ("maxItems", "max items"), ("minProperties", "min entries"),
                       ("maxProperties", "max entries")):
        if key in schema:
            value = schema[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            parts.append(f"{label} {value}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    if schema.get("nullable"):
        parts.append("nullable")
    if schema.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(schema.get("x-kubernetes-list-map-keys", []))
        parts.append(f"list keyed by {keys}")
    for rule in schema.get("x-kubernetes-validations", []):
        parts.append("rule: " + (rule.get("message") or f"`{rule['rule']}`"))
    # A list item has no row of its own, so the rules on each item go on the list's.
    items = schema.get("items")
    for rule in items.get("x-kubernetes-validations", []) if isinstance(items, dict) else []:
        parts.append("rule on each item: " + (rule.get("message") or f"`{rule['rule']}`"))
    return "; ".join(parts)


def walk(schema, path, required, rows):
    rows.append((path, type_of(schema), constraints(schema, required), schema.get("description", "")))
    children = schema.get("properties", {})
    must = set(schema.get("required", []))
    for name in sorted(children):
        walk(children[name], f"{path}.{name}", name in must, rows)
    items = schema.get("items")
    if isinstance(items, dict) and items.get("properties"):
        must = set(items.get("required", []))
        for name in sorted(items["properties"]):
            walk(items["properties"][name], f"{path}[].{name}", name in must, rows)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("properties"):
        must = set(extra.get("required", []))
        for name in sorted(extra["properties"]):
            walk(extra["properties"][name], f"{path}.<key>.{name}", name in must, rows)


def render_kind(crd):
    spec = crd["spec"]
    names = spec["names"]
    lines = []
    for version in spec["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        lines.append(f"## {names['kind']}")
        lines.append("")
        lines.append(cell(schema.get("description", "")))
        lines.append("")
        lines.append(f"- API version: `{spec['group']}/{version['name']}`, {spec['scope'].lower()}")
        lines.append(f"- Names: `{names['plural']}`, short names "
                     + ", ".join(f"`{s}`" for s in names.get("shortNames", [])))
        if "status" in version.get("subresources", {}):
            lines.append("- Status subresource: yes")
        columns = version.get("additionalPrinterColumns", [])
        if columns:
            lines.append("- `kubectl get` columns: " + ", ".join(c["name"] for c in columns))
        for rule in schema.get("x-kubernetes-validations", []):
            lines.append("- Rule on the object: " + cell(rule.get("message") or rule["rule"]))
        lines.append("")
        for section in ("spec", "status"):
            part = schema.get("properties", {}).get(section)
            if part is None:
                continue
            rows = []
            must = set(schema.get("required", []))
            walk(part, section, section in must, rows)
            lines.append(f"### {names['kind']} `{section}`")
            lines.append("")
            lines.append("| field | type | constraints | description |")
            lines.append("|---|---|---|---|")
            for path, kind, rules, description in rows:
                lines.append(f"| `{path}` | {cell(kind)} | {cell(rules)} | {cell(description)} |")
            lines.append("")
    return lines


def render():
    crds = []
    for path in sorted(glob.glob(os.path.join(ROOT, "crds", "*.yaml"))):
        with open(path) as f:
            crds.extend(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "CustomResourceDefinition")
    crds.sort(key=lambda c: (KIND_ORDER.index(c["spec"]["names"]["kind"])
                             if c["spec"]["names"]["kind"] in KIND_ORDER else len(KIND_ORDER),
                             c["spec"]["names"]["kind"]))
    lines = [
        "# Custom resource reference",
        "",
        "<!-- Generated by docs/gen_reference.py from crds/*.yaml: do not edit by hand. -->",
        "",
        "Every field of the OmniNode Bridge custom resources, as the API server validates it.",
        "Paths use `[]` for list items and `<key>` for map entries. A rule is a CEL validation",
        "the API server runs; its message is what `kubectl` prints when the rule refuses an object.",
        "",
    ]
    for crd in crds:
        lines.extend(render_kind(crd))
    return "\n".join(lines).rstrip("\n") + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/reference.md is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = open(OUTPUT).read() if os.path.exists(OUTPUT) else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(True), text.splitlines(True), "docs/reference.md", "generated"))
            sys.exit("docs/reference.md is stale: run `python3 docs/gen_reference.py`")
        return
    with open(OUTPUT, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
