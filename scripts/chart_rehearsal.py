#!/usr/bin/env python3
"""The manifest side of scripts/chart-rehearsal (see its header): from the chart's rendering,
picks what `podman kube play` (podman 4.3) can run — the embedder and generator Deployments and
the Secrets, ConfigMaps and PersistentVolumeClaims they reference — and says why every other
object is not rehearsed. Where podman 4.3 does not do what the kubelet does, the Deployment is
changed here so that it does, and each change is printed ("adapted ...").

Usage: chart_rehearsal.py RENDERED OUTDIR embedder=IP generator=IP
Writes OUTDIR/<component>.yaml (its ConfigMaps and its Deployment), OUTDIR/objects.yaml (claims;
may be empty), OUTDIR/secrets/... (the Secret volumes' files) and OUTDIR/plan.tsv, which the bash
script reads:
  image      <image reference>
  pod        <component> <pod name> <container name> <init container names, comma-separated or ->
  probe      <component> <startupProbe|readinessProbe|livenessProbe> <argv as JSON>
  register   <component> <discovery key prefix> <advertised address>
  claim      <name>
"""

import base64
import json
import os
import re
import sys
from pathlib import Path

import yaml

REHEARSED = ("embedder", "generator")
WHY_NOT = {
    "StatefulSet": "podman kube play cannot run StatefulSets (no ordinal names, no volumeClaimTemplates)",
    "Service": "no Services under kube play (no ClusterIP, no cluster DNS); the ragd pods reach each "
    "other through etcd, which the rehearsal uses",
    "HorizontalPodAutoscaler": "needs a control plane and metrics-server",
    "PodDisruptionBudget": "needs a control plane (evictions)",
    "NetworkPolicy": "needs a CNI that enforces it; a podman network does not",
    "ServiceAccount": "podman has no service accounts (the pods mount no token anyway)",
    "ServiceMonitor": "needs prometheus-operator",
    "Pod": "the `helm test` pod calls the generator through its Service",
}
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


def expand(s, env):
    """Kubernetes' $(VAR) expansion in command/args ($$ is a literal $; unknown stays)."""
    return VAR_REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), s)


def secret_files(secret):
    """A Secret's keys, decoded, as the kubelet would write them."""
    files = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    files.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
    return files


def main():
    rendered, outdir = Path(sys.argv[1]), Path(sys.argv[2])
    ips = dict(a.split("=", 1) for a in sys.argv[3:])
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    plan, notes, picked, claims, missing = [], [], {}, {}, []

    def ref(kind, name, comp):
        obj = by_kind.get(kind, {}).get(name)
        if obj is None:
            missing.append(f"{comp} references {kind} {name}, which the chart did not render")
        picked[(kind, name)] = obj
        return obj

    for d in by_kind.get("Deployment", {}).values():
        comp = d["metadata"]["labels"].get("app.kubernetes.io/component")
        if comp not in REHEARSED:
            continue
        name = d["metadata"]["name"]
        picked[("Deployment", name)] = d
        ip = ips[comp]
        pod = d["spec"]["template"]["spec"]
        containers = pod.get("initContainers", []) + pod["containers"]
        fs_group = pod.get("securityContext", {}).get("fsGroup")
        own_cms = {}

        renamed = {}
        for v in pod.get("volumes", []):
            if "configMap" in v:
                own_cms[v["configMap"]["name"]] = ref("ConfigMap", v["configMap"]["name"], comp)
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                claims[claim] = ref("PersistentVolumeClaim", claim, comp)
            if "projected" in v:
                sys.exit(f"chart_rehearsal: {comp}: projected volume {v['name']} is not handled here")
            if "emptyDir" in v:
                renamed[v["name"]] = v["name"] = f"{name}-{v['name']}"
            if "secret" in v:
                src = v.pop("secret")
                secret = ref("Secret", src["secretName"], comp)
                if secret is None:
                    continue
                # What the kubelet does with a secret volume: the keys decoded, the items chosen
                # and renamed, defaultMode (or the item's mode), group fsGroup.
                files = secret_files(secret)
                items = src.get("items") or [{"key": k, "path": k} for k in files]
                folder = outdir / "secrets" / name / v["name"]
                folder.mkdir(parents=True)
                os.chmod(folder, 0o755)
                for it in items:
                    f = folder / it["path"]
                    f.write_bytes(files[it["key"]])
                    os.chmod(f, it.get("mode", src.get("defaultMode", 0o644)))
                    if fs_group is not None:
                        os.chown(f, 0, fs_group)
                v["hostPath"] = {"path": str(folder.resolve()), "type": "Directory"}
                mode = oct(src.get("defaultMode", 0o644))[2:]
                notes.append(
                    f"{comp}: Secret {src['secretName']} mounted as a directory of its {len(items)} "
                    f"projected keys, decoded, mode {mode}, group {fs_group} (as the kubelet writes "
                    "them; kube play 4.3 writes a Secret's data still base64-encoded and ignores "
                    "items, defaultMode and stringData)"
                )
        if renamed:
            for c in containers:
                for m in c.get("volumeMounts", []):
                    m["name"] = renamed.get(m["name"], m["name"])
            notes.append(
                f"{comp}: emptyDir volumes {', '.join(sorted(renamed))} named <deployment>-<name> "
                "(kube play 4.3 makes each a volume named after it: two pods' `models` would be one)"
            )

        for c in containers:
            env = {}
            for e in c.get("env", []):
                vf = e.get("valueFrom", {})
                if vf.get("fieldRef", {}).get("fieldPath") == "status.podIP":
                    del e["valueFrom"]
                    e["value"] = ip
                    notes.append(
                        f"{comp}: {c['name']}'s env {e['name']} from status.podIP set to {ip}, the "
                        "address the pod gets with --ip (kube play 4.3 refuses that fieldPath)"
                    )
                for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if key in vf:
                        obj = ref(kind, vf[key]["name"], comp)
                        if obj is not None:
                            data = secret_files(obj) if kind == "Secret" else obj.get("data", {})
                            val = data[vf[key]["key"]]
                            e.pop("valueFrom")
                            e["value"] = val.decode() if isinstance(val, bytes) else val
                            notes.append(f"{comp}: {c['name']}'s env {e['name']} from {kind} {obj['metadata']['name']} set to its value")
                if "value" in e:
                    env[e["name"]] = e["value"]
            if c.get("envFrom"):
                sys.exit(f"chart_rehearsal: {comp}: envFrom is not handled here")
            for key in ("command", "args"):
                if key in c:
                    new = [expand(a, env) for a in c[key]]
                    if new != c[key]:
                        notes.append(
                            f"{comp}: $(VAR) references in {c['name']}'s {key} expanded as the kubelet "
                            "does (kube play 4.3 passes them verbatim)"
                        )
                        c[key] = new
            if c.pop("ports", None):
                notes.append(
                    f"{comp}: {c['name']}'s containerPorts dropped (kube play 4.3 publishes every "
                    "one on the host, where both pods' metrics ports collide); each pod is reached "
                    "at its own address"
                )
        if pod.get("initContainers"):
            d["metadata"].setdefault("annotations", {})["io.podman.annotations.init.container.type"] = "always"
            notes.append(
                f"{comp}: init containers of podman's type `always` (kube play 4.3 fails removing a "
                "`once` one: 'failed to remove once init container ... as it is running')"
            )
        cms = [c for c in own_cms.values() if c is not None]
        (outdir / f"{comp}.yaml").write_text(yaml.safe_dump_all([*cms, d], sort_keys=False))

        main_c = pod["containers"][0]
        for c in containers:
            plan.append(["image", c["image"]])
        inits = ",".join(c["name"] for c in pod.get("initContainers", [])) or "-"
        plan.append(["pod", comp, f"{name}-pod-0", f"{name}-pod-0-{main_c['name']}", inits])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = main_c.get(probe)
            if p is None:
                continue
            if "exec" not in p:
                sys.exit(
                    f"chart_rehearsal: {comp}'s {probe} is not an exec probe: podman runs no gRPC "
                    "probes (set probes.mode=exec)"
                )
            plan.append(["probe", comp, probe, json.dumps(p["exec"]["command"])])
        args = main_c["args"]
        flag = lambda f: next((a.split("=", 1)[1] for a in args if a.startswith(f + "=")), None)
        prefix = f"/{flag('--discovery-prefix')}/{flag('--cluster')}/{comp}/"
        plan.append(["register", comp, prefix, flag("--advertise-addr")])

    if missing:
        sys.exit("chart_rehearsal: " + "; ".join(missing))
    for n in claims:
        plan.append(["claim", n])
    (outdir / "objects.yaml").write_text(yaml.safe_dump_all(list(claims.values()), sort_keys=False) if claims else "")
    (outdir / "plan.tsv").write_text("".join("\t".join(r) + "\n" for r in plan))

    # What the chart rendered and what of it runs here.
    for kind, objs in sorted(by_kind.items()):
        for n in sorted(objs):
            if (kind, n) in picked:
                how = " (its files, by the rehearsal)" if kind == "Secret" else ""
                print(f"rehearsed       {kind} {n}{how}")
                continue
            comp = objs[n]["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
            why = WHY_NOT.get(kind, "not needed by the embedder or generator")
            if kind == "Deployment":
                why = "the indexer's Deployment (qdrant.url) needs a Qdrant"
            elif kind == "StatefulSet":
                why = f"{why}; the {comp} is covered by the container cluster test"
            elif kind == "Secret":
                why = "not mounted by the embedder or generator"
            print(f"not rehearsed   {kind} {n}: {why}")
    for n in notes:
        print(f"adapted         {n}")


if __name__ == "__main__":
    main()
