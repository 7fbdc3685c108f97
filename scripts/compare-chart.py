#!/usr/bin/env python3
"""Fails unless the Helm chart and the kustomize manifests render the same objects.

    compare-chart.py NAME=KUSTOMIZE.yaml:HELM.yaml...

scripts/check-manifests.sh renders each pair for the same choices (the base, the EFA overlay,
the monitoring overlay, the EFA overlay with each component and with all of them) and calls
this. Both sides are parsed, so what cannot differ in meaning does not count: comments,
quoting, key order, and the order of the objects in the stream (they are matched by apiVersion,
kind, namespace and name). Everything else does: every label, every field, the order of lists
(env, volumes, rules), and the dashboard's and rules' text. Each difference is printed as a
unified diff of the object; exit 1 if there is any.
"""

import difflib
import json
import sys
from pathlib import Path

import yaml


def objects(path: Path) -> dict:
    out = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        meta = doc.get("metadata", {})
        key = (doc.get("apiVersion"), doc.get("kind"), meta.get("namespace"), meta.get("name"))
        if key in out:
            raise SystemExit(f"compare-chart: {path}: {key} twice")
        out[key] = doc
    return out


def show(doc) -> list:
    # JSON, keys sorted: one canonical text per meaning, and multi-line strings stay visible.
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def compare(name: str, kustomize: Path, helm: Path) -> int:
    want, got = objects(kustomize), objects(helm)
    problems = 0
    for key in sorted(set(want) | set(got), key=str):
        ident = "{1}/{3} ({0}, namespace {2})".format(*key)
        if key not in got:
            print(f"FAIL {name}: {ident} rendered by kustomize only")
            problems += 1
        elif key not in want:
            print(f"FAIL {name}: {ident} rendered by helm only")
            problems += 1
        elif want[key] != got[key]:
            print(f"FAIL {name}: {ident} differs (- kustomize, + helm):")
            diff = difflib.unified_diff(show(want[key]), show(got[key]), "kustomize", "helm", lineterm="", n=2)
            print("\n".join("  " + line for line in diff))
            problems += 1
    if not problems:
        print(f"ok   {name}: {len(want)} objects identical")
    return problems


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 64
    failures = 0
    for arg in sys.argv[1:]:
        name, _, files = arg.partition("=")
        kustomize, _, helm = files.partition(":")
        if not (name and kustomize and helm):
            print(f"compare-chart: bad argument {arg!r} (want NAME=KUSTOMIZE.yaml:HELM.yaml)", file=sys.stderr)
            return 64
        failures += compare(name, Path(kustomize), Path(helm)) > 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
