#!/usr/bin/env python3
"""Validates rendered manifests (the output of `kubectl kustomize`), offline.

    validate-manifests.py --k8s-version 1.30.0 [--k8s-version ...] --crd-validator CMD \\
        --rules-dir DIR RENDERED.yaml...

For every object in every file:
- built-in kinds: against the Kubernetes OpenAPI schemas bundled with kubernetes-validate,
  strictly (an unknown field is an error), for each --k8s-version;
- monitoring.coreos.com kinds (PodMonitor, PrometheusRule): by --crd-validator (run with the
  objects as a JSON list on stdin; scripts/validate-crs.mjs), since kubernetes-validate has no
  schema for custom resources and would only warn;
- any other kind: an error (nothing would check it).
Then what the agent and the rules rely on, in every rendering (see invariants()): among it, that
the cluster-wide RBAC grants exactly what the node actions turned on need, and that the base
turns none on while the EFA and monitoring overlays turn them all on (node_action_rbac()); and the Pod
Security Standard its namespace enforces, which the API server would otherwise apply to the
pods only when it creates them (see pod_security()). Each
PrometheusRule's spec is written to --rules-dir as a rule file, for `promtool check rules`.
Exit 1 on any failure, each one printed.

Runs with the Python that has kubernetes-validate (scripts/setup.sh installs it).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

CR_GROUP = "monitoring.coreos.com/"
NAMESPACE = "efaprobe"
POD_LABEL = ("app.kubernetes.io/name", "efaprobe")  # the agent's --selector default
PORT = 9476


BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                 "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}


def pod_security(pod, level):
    """The Pod Security Standards' controls this pod spec touches, for the namespace's enforce
    level: the API server would refuse the DaemonSet's pods otherwise, which no schema shows."""
    if level == "privileged":
        return []
    problems = []
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    scs = [c.get("securityContext", {}) for c in containers]
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(field)
    if any(sc.get("privileged") for sc in scs):
        problems.append("privileged")
    if any(v.get("hostPath") for v in pod.get("volumes", [])):
        problems.append("hostPath volume")
    if any(p.get("hostPort") for c in containers for p in c.get("ports", [])):
        problems.append("hostPort")
    added = {cap for sc in scs for cap in sc.get("capabilities", {}).get("add", [])}
    if level == "baseline" and added - BASELINE_CAPS:
        problems.append(f"capabilities {sorted(added - BASELINE_CAPS)}")
    if level == "restricted":
        psc = pod.get("securityContext", {})
        if added - {"NET_BIND_SERVICE"}:
            problems.append(f"capabilities {sorted(added - {'NET_BIND_SERVICE'})}")
        for c, sc in zip(containers, scs):
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{c['name']}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{c['name']}: does not drop ALL capabilities")
            if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
                problems.append(f"{c['name']}: runAsNonRoot")
            if sc.get("runAsUser", psc.get("runAsUser")) == 0:
                problems.append(f"{c['name']}: runAsUser 0")
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{c['name']}: seccompProfile {seccomp}")
        for v in pod.get("volumes", []):
            kinds = set(v) - {"name"}
            if not kinds <= RESTRICTED_VOLUMES:
                problems.append(f"volume {v['name']}: {sorted(kinds)}")
    return problems


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
SERVICE_ACCOUNT = "efaprobe"

# What each node action needs (agent/src/node_actions/api.rs), as (apiGroup, resource) -> verbs,
# and the setting that turns it on (environment variable; the flag is the same name).
NODE_ACTIONS = {
    "condition": ("EFAPROBE_NODE_CONDITION", "--node-condition", {("", "nodes/status"): {"patch"}}),
    "events": ("EFAPROBE_NODE_EVENTS", "--node-events", {("events.k8s.io", "events"): {"create", "patch"}}),
    "startup-taint-gate": ("EFAPROBE_STARTUP_TAINT_GATE", "--startup-taint-gate", {("", "nodes"): {"get", "patch"}}),
}
# Which node actions each of check-manifests.sh's renderings must have on (by file stem).
EXPECTED_NODE_ACTIONS = {
    "base": set(),
    "overlay-efa": {"condition", "events", "startup-taint-gate"},
    "overlay-monitoring": {"condition", "events", "startup-taint-gate"},
}
TRUTHY = {"y", "yes", "t", "true", "on", "1"}  # clap's BoolishValueParser


def node_actions_on(container):
    """The node actions the agent container's settings turn on (a flag wins over its env)."""
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    args = container.get("args", [])
    on = set()
    for action, (var, flag, _) in NODE_ACTIONS.items():
        value = env.get(var, "false").strip().lower() in TRUTHY
        for a in args:
            if a == flag:
                value = True
            elif a.startswith(flag + "="):
                value = a.split("=", 1)[1].strip().lower() in TRUTHY
        if value:
            on.add(action)
    return on


def cluster_grants(by_kind):
    """(apiGroup, resource) -> verbs the ClusterRoleBindings give the agent's service account,
    with the errors found on the way (a rule the agent cannot need, a binding to nothing)."""
    errs, grants = [], {}
    roles = {r["metadata"]["name"]: r for r in by_kind.get("ClusterRole", [])}
    bound = set()
    for b in by_kind.get("ClusterRoleBinding", []):
        name = b["metadata"]["name"]
        subjects = b.get("subjects", [])
        if subjects != [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]:
            errs.append(f"ClusterRoleBinding/{name}: subjects {subjects}, want only the agent's service account")
        ref = b.get("roleRef", {})
        if ref.get("kind") != "ClusterRole" or ref.get("name") not in roles:
            errs.append(f"ClusterRoleBinding/{name}: roleRef {ref} is no ClusterRole rendered here")
            continue
        bound.add(ref["name"])
        for rule in roles[ref["name"]].get("rules", []):
            if rule.get("resourceNames") or rule.get("nonResourceURLs"):
                errs.append(f"ClusterRole/{ref['name']}: resourceNames/nonResourceURLs are not what the agent uses")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    verbs = set(rule.get("verbs", []))
                    if "*" in (group, resource) or "*" in verbs:
                        errs.append(f"ClusterRole/{ref['name']}: a wildcard in {rule}")
                    grants.setdefault((group, resource), set()).update(verbs)
    for name in roles:
        if name not in bound:
            errs.append(f"ClusterRole/{name}: bound by no ClusterRoleBinding")
    return errs, grants


def node_action_rbac(by_kind, on):
    """The cluster-wide RBAC must be exactly what the node actions that are on need."""
    errs, grants = cluster_grants(by_kind)
    want = {}
    for action in on:
        for key, verbs in NODE_ACTIONS[action][2].items():
            want.setdefault(key, set()).update(verbs)
    if grants != want:
        show = lambda g: {f"{k[0] or 'core'}/{k[1]}": sorted(v) for k, v in sorted(g.items())}
        errs.append(f"cluster-wide RBAC {show(grants)}, but the node actions on ({sorted(on) or 'none'}) need exactly {show(want)}")
    return errs


def self_test():
    """The RBAC check fails where it should (a check that cannot fail checks nothing)."""
    container = {"name": "agent", "env": [{"name": "EFAPROBE_NODE_CONDITION", "value": "true"}]}
    assert node_actions_on(container) == {"condition"}
    assert node_actions_on({**container, "args": ["--node-condition=false", "--node-events"]}) == {"events"}
    role = {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}]}
    binding = {"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "r"},
               "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]}
    rbac = {"ClusterRole": [role], "ClusterRoleBinding": [binding]}
    assert node_action_rbac(rbac, {"condition"}) == []
    assert node_action_rbac(rbac, set()), "RBAC where nothing is on"
    assert node_action_rbac({}, {"condition"}), "no RBAC where the condition is on"
    assert node_action_rbac(rbac, {"condition", "startup-taint-gate"}), "the gate's verbs missing"
    wider = {"ClusterRole": [{**role, "rules": role["rules"] + [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}]}],
             "ClusterRoleBinding": [binding]}
    assert node_action_rbac(wider, {"condition"}), "more than the condition needs"
    assert node_action_rbac({"ClusterRole": [role]}, set()), "an unbound ClusterRole"


def invariants(objs, stem=None):
    """What must hold in every rendering, whatever overlay or component made it."""
    errs = []
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
        ns = o["metadata"].get("namespace")
        if o["kind"] not in CLUSTER_SCOPED and ns != NAMESPACE:
            errs.append(f"{o['kind']}/{o['metadata']['name']}: namespace {ns!r}, want {NAMESPACE!r}")

    for role in by_kind.get("Role", []):
        want = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
        if role.get("rules") != want:
            errs.append(f"Role/{role['metadata']['name']}: rules {role.get('rules')}, want {want}")

    daemonsets = by_kind.get("DaemonSet", [])
    if len(daemonsets) != 1:
        return errs + [f"{len(daemonsets)} DaemonSets, want 1"]
    ds = daemonsets[0]
    tmpl = ds["spec"]["template"]
    pod = tmpl["spec"]
    labels = tmpl["metadata"].get("labels", {})

    def need(cond, what):
        if not cond:
            errs.append(f"DaemonSet/{ds['metadata']['name']}: {what}")

    need(labels.get(POD_LABEL[0]) == POD_LABEL[1], f"pod label {POD_LABEL[0]}={POD_LABEL[1]} (discovery's selector)")
    need(all(labels.get(k) == v for k, v in ds["spec"]["selector"]["matchLabels"].items()), "selector matches its pods")
    need({"operator": "Exists"} in pod.get("tolerations", []), "tolerates every taint (operator: Exists, no key)")
    need(pod.get("priorityClassName") == "system-node-critical", "priorityClassName system-node-critical")
    need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "runAsNonRoot")
    need(ds["spec"].get("updateStrategy", {}).get("type") == "RollingUpdate", "RollingUpdate")
    need(pod.get("terminationGracePeriodSeconds", 30) >= 15, "terminationGracePeriodSeconds >= 15 (the agent needs ~10 s)")
    (c,) = [c for c in pod["containers"] if c["name"] == "agent"]
    on = node_actions_on(c)
    errs += node_action_rbac(by_kind, on)
    if stem in EXPECTED_NODE_ACTIONS and on != EXPECTED_NODE_ACTIONS[stem]:
        errs.append(f"node actions on: {sorted(on)}, want {sorted(EXPECTED_NODE_ACTIONS[stem])} in {stem}")
    sc = c.get("securityContext", {})
    need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], "drops ALL capabilities")
    need(set(sc.get("capabilities", {}).get("add", [])) <= {"IPC_LOCK"}, "adds no capability but IPC_LOCK")
    need("--discovery=kubernetes" in c.get("args", []), "--discovery=kubernetes")
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])}
    for name, path in (("NODE_NAME", "spec.nodeName"), ("POD_IP", "status.podIP"), ("POD_NAMESPACE", "metadata.namespace")):
        need(env.get(name) == path, f"env {name} from {path}")
    need({"name": "http", "containerPort": PORT, "protocol": "TCP"} in c.get("ports", []), f"port http {PORT}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        need(c.get(probe, {}).get("httpGet") == {"path": path, "port": "http"}, f"{probe} on {path}")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        need({"cpu", "memory"} <= set(res.get(kind, {})), f"{kind} for cpu and memory")

    for ns in by_kind.get("Namespace", []):
        level = ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce", "privileged")
        for problem in pod_security(pod, level):
            errs.append(f"DaemonSet/{ds['metadata']['name']}: Pod Security {level!r} of its namespace: {problem}")

    for svc in by_kind.get("Service", []):
        # The node-local one (the preflight's way to its own node's agent) routes only to the
        # agent on the caller's node; every other is headless.
        if svc["metadata"]["name"] == "efaprobe-local":
            if svc["spec"].get("internalTrafficPolicy") != "Local" or svc["spec"].get("clusterIP") == "None":
                errs.append("Service/efaprobe-local: not a ClusterIP with internalTrafficPolicy Local")
        elif svc["spec"].get("clusterIP") != "None":
            errs.append(f"Service/{svc['metadata']['name']}: not headless")
        if {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"} not in svc["spec"]["ports"]:
            errs.append(f"Service/{svc['metadata']['name']}: no port http {PORT}")
        if svc["spec"].get("selector") != dict([POD_LABEL]):
            errs.append(f"Service/{svc['metadata']['name']}: selector is not the agents'")

    for pm in by_kind.get("PodMonitor", []):
        sel = pm["spec"]["selector"].get("matchLabels", {})
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            errs.append(f"PodMonitor/{pm['metadata']['name']}: selector {sel} does not select the agents")
        eps = pm["spec"].get("podMetricsEndpoints", [])
        node_label = {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node", "action": "replace"}
        if not any(e.get("port") == "http" and e.get("path") == "/metrics" and node_label in e.get("relabelings", []) for e in eps):
            errs.append(f"PodMonitor/{pm['metadata']['name']}: no endpoint http /metrics adding `node`")

    # The network policy: the agents' port admits the other agents and one namespace's
    # Prometheus, nothing else (an empty selector in a `from` would admit a whole namespace).
    agent_peer = {"podSelector": {"matchLabels": dict([POD_LABEL])}}
    for np in by_kind.get("NetworkPolicy", []):
        def np_need(cond, what):
            if not cond:
                errs.append(f"NetworkPolicy/{np['metadata']['name']}: {what}")
        spec = np["spec"]
        np_need(spec.get("podSelector") == agent_peer["podSelector"], "podSelector is not the agents'")
        np_need(spec.get("policyTypes") == ["Ingress"], "policyTypes is not [Ingress] (egress must stay open)")
        rules = spec.get("ingress", [])
        np_need(all(r.get("ports") == [{"port": PORT, "protocol": "TCP"}] for r in rules), f"a rule admits more than TCP {PORT}")
        peers = [p for r in rules for p in r.get("from", [])]
        np_need(len(peers) == len(rules) and all(r.get("from") for r in rules), "a rule without exactly one `from`")
        np_need(agent_peer in peers, "the other agents are not admitted")
        prometheus = [p for p in peers if p != agent_peer]
        np_need(len(prometheus) == 1, f"{len(prometheus)} peers besides the agents, want 1 (Prometheus)")
        for p in prometheus:
            np_need(set(p) == {"namespaceSelector", "podSelector"}
                    and "kubernetes.io/metadata.name" in p["namespaceSelector"].get("matchLabels", {})
                    and p["podSelector"].get("matchLabels"),
                    f"Prometheus peer {p}: not one namespace's labelled pods")

    for cm in by_kind.get("ConfigMap", []):
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            for key, text in cm.get("data", {}).items():
                try:
                    json.loads(text)
                except json.JSONDecodeError as e:
                    errs.append(f"ConfigMap/{cm['metadata']['name']}: {key} is not JSON: {e}")
    return errs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-version", action="append", required=True)
    ap.add_argument("--crd-validator", required=True, help="command: JSON list on stdin, exit 0 if valid")
    ap.add_argument("--rules-dir", type=Path, required=True)
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args()
    self_test()

    failures = 0
    for path in args.files:
        objs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        errs, crs, checked = [], [], 0
        for o in objs:
            ident = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
            if o.get("apiVersion", "").startswith(CR_GROUP):
                crs.append(o)
                continue
            for version in args.k8s_version:
                try:
                    kubernetes_validate.validate(o, version, strict=True)
                    checked += 1
                except kubernetes_validate.ValidationError as e:
                    where = "/".join(str(p) for p in e.path)
                    errs.append(f"{ident} (Kubernetes {version}): {where}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError:
                    errs.append(f"{ident}: no schema for {o.get('apiVersion')} in Kubernetes {version}")
        if crs:
            run = subprocess.run(args.crd_validator, shell=True, input=json.dumps(crs), text=True, capture_output=True)
            if run.returncode != 0:
                errs.append(f"custom resources: {run.stdout.strip()} {run.stderr.strip()}")
        errs += invariants(objs, path.stem)
        for rule in (o for o in crs if o["kind"] == "PrometheusRule"):
            out = args.rules_dir / f"{path.stem}-{rule['metadata']['name']}.rules.yml"
            out.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
        kinds = sorted({o["kind"] for o in objs})
        if errs:
            failures += 1
            print(f"FAIL {path.name}:", *errs, sep="\n  ")
        else:
            print(f"ok   {path.name}: {len(objs)} objects ({', '.join(kinds)}); "
                  f"{checked} schema checks, {len(crs)} custom resources")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
