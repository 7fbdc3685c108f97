#!/usr/bin/env python3
"""Validates manifests/examples/*.yaml offline (scripts/check-manifests.sh runs it).

    validate-examples.py --k8s-version 1.30.0 [--k8s-version ...] EXAMPLE.yaml...

- built-in kinds: against the Kubernetes OpenAPI schemas bundled with kubernetes-validate,
  strictly (an unknown field is an error), for each --k8s-version;
- kubeflow.org kinds (PyTorchJob): there is no schema for them here; they must parse and
  each replica's pod template is checked as below;
- any other kind: an error (nothing would check it).
Every pod template (a Job's, each PyTorchJob replica's) must run `efaprobe preflight` as an
init container, with HOST_IP from the downward API (status.hostIP) unless it names --agent.
Exit 1 on any failure, each one printed.
"""

import argparse
import sys
from pathlib import Path

import kubernetes_validate
import yaml

KUBEFLOW = "kubeflow.org/"


def preflight_problems(ident, pod_spec):
    inits = [c for c in pod_spec.get("initContainers", []) if "preflight" in c.get("args", [])[:1]]
    if not inits:
        return [f"{ident}: no init container runs `efaprobe preflight`"]
    problems = []
    for c in inits:
        args = c.get("args", [])
        if not any(a.startswith(("--nodes=", "--nodes-file=")) or a in ("--nodes", "--nodes-file") for a in args):
            problems.append(f"{ident}: {c['name']} names no nodes (--nodes or --nodes-file)")
        host_ip = [e for e in c.get("env", []) if e.get("name") == "HOST_IP"]
        from_downward = host_ip and host_ip[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.hostIP"
        if not from_downward and not any(a.startswith("--agent") for a in args):
            problems.append(f"{ident}: {c['name']} has neither HOST_IP from status.hostIP nor --agent")
    return problems


def pod_templates(o):
    ident = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
    if o.get("kind") == "Job":
        yield ident, o["spec"]["template"]["spec"]
    elif o.get("kind") == "PyTorchJob":
        for role, replica in o["spec"]["pytorchReplicaSpecs"].items():
            yield f"{ident} {role}", replica["template"]["spec"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-version", action="append", required=True)
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args()
    failures = 0
    for path in args.files:
        errs, notes = [], []
        try:
            objs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except yaml.YAMLError as e:
            print(f"FAIL {path.name}: not YAML: {e}")
            failures += 1
            continue
        templates = 0
        for o in objs:
            ident = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
            if o.get("apiVersion", "").startswith(KUBEFLOW):
                notes.append(f"{ident}: a Kubeflow custom resource, no schema here: parsed only")
            else:
                for version in args.k8s_version:
                    try:
                        kubernetes_validate.validate(o, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        where = "/".join(str(p) for p in e.path)
                        errs.append(f"{ident} (Kubernetes {version}): {where}: {e.message}")
                    except kubernetes_validate.SchemaNotFoundError:
                        errs.append(f"{ident}: no schema for {o.get('apiVersion')} in Kubernetes {version}")
            for where, spec in pod_templates(o):
                templates += 1
                errs += preflight_problems(where, spec)
        if templates == 0:
            errs.append("no Job or PyTorchJob pod template")
        if errs:
            failures += 1
            print(f"FAIL {path.name}:", *errs, sep="\n  ")
        else:
            print(f"ok   {path.name}: {len(objs)} objects, {templates} pod templates with the preflight"
                  + "".join(f"; {n}" for n in notes))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
