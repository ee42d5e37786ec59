#!/usr/bin/env python3
"""Keeps, from a published Swagger 2.0 document, only the definitions reachable from the
named roots, so that the vendored schemas stay small. Nothing else is changed.

Usage: extract.py SWAGGER_JSON OUT_JSON ROOT...   (see README.md for the exact runs)
"""
import json
import sys


def refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.rsplit("/", 1)[-1]
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def main(src, out, roots):
    with open(src) as f:
        doc = json.load(f)
    definitions = doc["definitions"]
    keep, todo = {}, list(roots)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = definitions[name]
        todo.extend(refs(definitions[name]))
    with open(out, "w") as f:
        json.dump({"info": doc.get("info", {}), "definitions": dict(sorted(keep.items()))},
                  f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
