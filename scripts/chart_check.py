#!/usr/bin/env python3
"""Offline checks of the Helm chart helm/ragd; run through scripts/chart-check (see its header).

Every check prints one line: `ok   <what was checked>` or `FAIL <what>: <why>`; the script exits
non-zero when any failed. Environment: HELM (the helm binary), RAGD_BIN (the ragd binary whose
flags the rendered args must satisfy).
"""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "ragd"
HELM = os.environ.get("HELM", "helm")
RAGD_BIN = os.environ.get("RAGD_BIN", str(ROOT / "target" / "debug" / "ragd"))
KUBE_VALIDATE = str(Path(sys.executable).parent / "kubernetes-validate")
KUBE_VERSIONS = ["1.30.0", "1.33.0"]
RELEASE, NAMESPACE = "rel", "ragd-test"
IMAGE_UID = 10001  # the ragd image's user (deploy/Containerfile)
# Flags whose value is a secret: the chart must never pass them (env from a Secret instead).
SECRET_FLAGS = ("--qdrant-api-key", "--openai-api-key", "--reranker-api-key", "--etcd-password", "--api-key")
SECRET_ENV = re.compile(r"(API_KEY|PASSWORD|TOKEN|SECRET)$")
# An API key in ragd's format (`ragd_` + 43 base64url characters; metric names are lowercase).
KEY_LITERAL = re.compile(r"ragd_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
ROLE_SERVICE = {
    "embedder": "ragd.v1.Embedder",
    "indexer": "ragd.v1.Indexer",
    "generator": "ragd.v1.Generator",
}

failures = []


def ok(what):
    print(f"ok   {what}", flush=True)


def fail(what, why):
    failures.append(what)
    print(f"FAIL {what}: {why}", flush=True)


def check(cond, what, why):
    (ok if cond else lambda w: fail(w, why))(what)
    return cond


def run(cmd, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def helm_template(values=None, sets=(), kube="1.30.0"):
    cmd = [HELM, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube]
    if values:
        cmd += ["-f", str(values)]
    for s in sets:
        cmd += ["--set", s]
    return run(cmd)


# ---------------------------------------------------------------- rendered objects -------------


class Render:
    """The objects of one `helm template`, with lookups the checks share."""

    def __init__(self, name, text, values_text):
        self.name = name
        self.text = text
        self.values_text = values_text
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    def kind(self, *kinds):
        return [d for d in self.docs if d["kind"] in kinds]

    def workloads(self):
        return self.kind("Deployment", "StatefulSet")

    def secrets(self):
        return {d["metadata"]["name"]: d for d in self.kind("Secret")}

    def selects(self, selector, labels):
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    def pods_selected_by(self, selector):
        return [
            w for w in self.workloads() if self.selects(selector, w["spec"]["template"]["metadata"]["labels"])
        ]

    def ragd_containers(self):
        """(workload, role, container) for every container running `ragd serve <role>`."""
        for w in self.workloads():
            for c in w["spec"]["template"]["spec"]["containers"]:
                if c.get("command", [""])[0].endswith("/ragd") and "serve" in c.get("args", []):
                    args = c["args"]
                    yield w, args[args.index("serve") + 1], c


def flag(args, name):
    """The value of `--name=value` (or `--name value`) in args; None when absent."""
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args) and not args[i + 1].startswith("--"):
            return args[i + 1]
    return None


def port_of(addr):
    return int(addr.rsplit(":", 1)[1].rstrip("/"))


def pod_spec(w):
    return w["spec"] if w["kind"] == "Pod" else w["spec"]["template"]["spec"]


def container_ports(c):
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


# ---------------------------------------------------------------- checks on one render ---------


def env_for(container, ipv6):
    """The container's environment as Kubernetes would give it, with placeholders for what only
    a cluster knows (pod IP, Secret values); $(VAR) references expanded."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    placeholders = {"status.podIP": "fd00::5" if ipv6 else "10.1.2.3", "metadata.name": "pod-0"}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(str(e["value"]), env)
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = placeholders[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = "placeholder-from-secret"
    return env


def expand(s, env):
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)


def check_args(r):
    """Every ragd container's args and env through the binary's own parser."""
    if not os.access(RAGD_BIN, os.X_OK):
        fail(f"{r.name}: args", f"no ragd binary at {RAGD_BIN} (cargo build -p ragd, or set RAGD_BIN)")
        return
    for w, role, c in r.ragd_containers():
        ipv6 = flag(c["args"], "--listen").startswith("[")
        env = env_for(c, ipv6)
        args = [expand(a, env) for a in c["args"]]
        p = run([RAGD_BIN, *args, "--check-config"], env=env)
        what = (
            f"{r.name}: {w['metadata']['name']}: `ragd serve {role}` accepts its {len(args) - 2} args and env"
        )
        check(p.returncode == 0, what, (p.stderr or p.stdout).strip().splitlines()[-1:] or p.returncode)
        # Other ragd commands (probes, the models init container): clap parses every flag and its
        # value before it acts on --help, and exits 2 on any it does not accept.
        others = [
            (kind, c.get(kind, {}).get("exec", {}).get("command") or [])
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        ]
        others += [
            (f"init container {i['name']}", i.get("command", []) + i.get("args", []))
            for i in pod_spec(w).get("initContainers", [])
        ]
        for kind, cmd in others:
            if cmd and cmd[0].endswith("/ragd"):
                p = run([RAGD_BIN, *cmd[1:], "--help"], env=env)
                check(
                    p.returncode == 0,
                    f"{r.name}: {w['metadata']['name']}: {kind} `ragd {cmd[1]}` accepts its "
                    f"{len(cmd) - 2} flags",
                    (p.stderr or p.stdout).strip().splitlines()[-1:],
                )


def check_test_pods(r):
    """`helm test` pods: their ragd command parses, its files are mounted, and it asks the
    generator's Service on its port."""
    for pod in r.kind("Pod"):
        name = pod["metadata"]["name"]
        for c in pod_spec(pod)["containers"]:
            cmd = c.get("command", []) + c.get("args", [])
            if not (cmd and cmd[0].endswith("/ragd")):
                continue
            if os.access(RAGD_BIN, os.X_OK):
                p = run([RAGD_BIN, *cmd[1:], "--help"], env={"PATH": os.environ.get("PATH", "")})
                check(
                    p.returncode == 0,
                    f"{r.name}: {name}: `ragd {cmd[1]}` accepts its {len(cmd) - 2} flags",
                    (p.stderr or p.stdout).strip().splitlines()[-1:],
                )
            mounts = mounts_of(pod, c)
            missing = []
            for a in cmd:
                m = re.match(r"--[a-z-]+=(/etc/ragd/.+)", a)
                if m:
                    mp = next((p for p in mounts if m.group(1).startswith(p.rstrip("/") + "/")), None)
                    files = mounts[mp][1] if mp else set()
                    if mp is None or (files is not None and m.group(1)[len(mp) + 1 :] not in files):
                        missing.append(m.group(1))
            check(not missing, f"{r.name}: {name}: the files its command names are mounted", missing)
            endpoint = flag(cmd, "--endpoint") or ""
            host, port = endpoint.split("://", 1)[-1].rsplit(":", 1)
            svc = next(
                (s for s in r.kind("Service") if f"{s['metadata']['name']}.{NAMESPACE}.svc" == host), None
            )
            ports = [p["port"] for p in svc["spec"]["ports"]] if svc else []
            check(
                svc is not None and int(port) in ports and svc["metadata"]["name"].endswith("-generator"),
                f"{r.name}: {name}: asks the generator's Service {host}:{port}",
                ports,
            )


def check_etcd_args(r):
    """The etcd members' flags through an etcd's own parser: Debian's etcd-server (3.4, from
    `scripts/setup --with-test`) stands in for the image's 3.5, whose flags are a superset."""
    etcd = shutil.which("etcd")
    version = run([etcd, "--version"]).stdout.split("\n")[0].replace("Version: ", "") if etcd else ""
    for w in r.kind("StatefulSet"):
        for c in pod_spec(w)["containers"]:
            if c["name"] != "etcd":
                continue
            name, n = w["metadata"]["name"], len(c["args"])
            what = f"{r.name}: {name}: {version or 'etcd'}'s parser accepts its {n} flags"
            if not etcd:
                fail(what, "no etcd binary on PATH (scripts/setup --with-test installs etcd-server)")
                continue
            env = env_for(c, False)
            p = run([etcd, *[expand(a, env) for a in c["args"]], "--help"], env=env)
            check(p.returncode == 0, what, (p.stderr or p.stdout).strip().splitlines()[:1])


def check_ports(r):
    for w, role, c in r.ragd_containers():
        name, args, ports = w["metadata"]["name"], c["args"], container_ports(c)
        listen = port_of(flag(args, "--listen"))
        check(
            ports.get("grpc") == listen,
            f"{r.name}: {name}: containerPort grpc = --listen port {listen}",
            ports,
        )
        adv = flag(args, "--advertise-addr")
        check(
            adv is not None and port_of(adv) == listen and "$(POD_IP)" in adv,
            f"{r.name}: {name}: --advertise-addr is the pod IP on the listen port",
            adv,
        )
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            if not probe:
                continue
            if "grpc" in probe:
                got = probe["grpc"]["port"]
                svc = probe["grpc"].get("service")
            else:
                cmd = probe["exec"]["command"]
                got, svc = port_of(flag(cmd, "--endpoint")), flag(cmd, "--service")
            check(
                got == listen and svc == ROLE_SERVICE[role],
                f"{r.name}: {name}: {kind} asks {ROLE_SERVICE[role]} on port {listen}",
                (got, svc),
            )
        metrics = flag(args, "--metrics-addr")
        if metrics:
            mp = port_of(metrics)
            ann = w["spec"]["template"]["metadata"].get("annotations", {})
            check(
                ports.get("metrics") == mp,
                f"{r.name}: {name}: containerPort metrics = --metrics-addr port {mp}",
                ports,
            )
            if "prometheus.io/port" in ann:
                check(
                    ann["prometheus.io/port"] == str(mp), f"{r.name}: {name}: prometheus.io/port = {mp}", ann
                )
                scheme = "https" if flag(args, "--tls-cert") else "http"
                check(
                    ann.get("prometheus.io/scheme") == scheme,
                    f"{r.name}: {name}: prometheus.io/scheme {scheme}",
                    ann,
                )
        else:
            check("metrics" not in ports, f"{r.name}: {name}: no metrics port without --metrics-addr", ports)
    for s in r.kind("Service"):
        pods = r.pods_selected_by(s["spec"].get("selector", {}))
        sname = s["metadata"]["name"]
        if not check(bool(pods), f"{r.name}: Service {sname} selects a workload", s["spec"].get("selector")):
            continue
        for p in s["spec"]["ports"]:
            tp = p["targetPort"]
            for w in pods:
                cports = {}
                for c in pod_spec(w)["containers"]:
                    cports.update(container_ports(c))
                resolved = cports.get(tp) if isinstance(tp, str) else (tp if tp in cports.values() else None)
                check(
                    resolved is not None,
                    f"{r.name}: Service {sname} port {p['name']} → {w['metadata']['name']}:{tp}",
                    f"no container port {tp}",
                )
    for w in r.workloads():
        for c in pod_spec(w)["containers"]:
            if c["name"] != "etcd":
                continue
            ports = container_ports(c)
            for fl, pname in (
                ("--listen-client-urls", "client"),
                ("--listen-peer-urls", "peer"),
                ("--listen-metrics-urls", "metrics"),
                ("--advertise-client-urls", "client"),
                ("--initial-advertise-peer-urls", "peer"),
            ):
                check(
                    port_of(flag(c["args"], fl)) == ports[pname],
                    f"{r.name}: etcd {fl} on containerPort {pname}",
                    (flag(c["args"], fl), ports),
                )
            rp = c["readinessProbe"]["httpGet"]["port"]
            check(rp in ports, f"{r.name}: etcd readiness probe on a declared port ({rp})", ports)


def mounts_of(w, c):
    """mountPath → (volume, the file names it holds or None for any)."""
    vols = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
    for t in w["spec"].get("volumeClaimTemplates", []):
        vols[t["metadata"]["name"]] = {"name": t["metadata"]["name"], "persistentVolumeClaim": {}}
    out = {}
    for m in c.get("volumeMounts", []):
        v = vols.get(m["name"])
        if v is None:
            out[m["mountPath"]] = (None, None)
            continue
        items = v.get("secret", {}).get("items")
        out[m["mountPath"]] = (v, {i["path"] for i in items} if items else None)
    return out


def check_files(r):
    """Every file or directory a flag (or an exec probe) names under a mount exists in that
    mount; Secrets named by volumes and env are rendered by the chart or named by the values."""
    rendered = set(r.secrets())
    for w, role, c in r.ragd_containers():
        name = w["metadata"]["name"]
        mounts = mounts_of(w, c)
        problems = [f"volume {mp} undeclared" for mp, (v, _) in mounts.items() if v is None]
        named = [("args", a) for a in c["args"]]
        named += [
            (k, a)
            for k in ("startupProbe", "readinessProbe", "livenessProbe")
            for a in c.get(k, {}).get("exec", {}).get("command", [])
        ]
        checked = 0
        for where, a in named:
            if not a.startswith("--") or "=" not in a:
                continue
            fl, val = a.split("=", 1)
            if not val.startswith("/") or fl == "--ort-library":  # ONNX Runtime is in the image
                continue
            mp = max(
                (m for m in mounts if val == m or val.startswith(m.rstrip("/") + "/")), key=len, default=None
            )
            if mp is None:
                if fl in ("--models-dir", "--llm-model") and not any(
                    m["name"] == "models" for m in c.get("volumeMounts", [])
                ):
                    continue  # models.source=image: inside the image
                problems.append(f"{where} {fl}={val} is under no mount")
                continue
            files, rel = mounts[mp][1], val[len(mp) :].lstrip("/")
            checked += 1
            if files is not None and rel not in files:
                problems.append(f"{where} {fl}={val}: {rel} is not among {sorted(files)}")
        check(
            not problems,
            f"{r.name}: {name}: every path its flags and probes name is mounted ({checked} checked)",
            "; ".join(problems),
        )
    for w in r.workloads():
        spec = pod_spec(w)
        refs = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        for c in spec["containers"] + spec.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add(ref["name"])
        for s in sorted(refs):
            where = "rendered by the chart" if s in rendered else "named by the values file"
            check(
                s in rendered or re.search(rf"\b{re.escape(s)}\b", r.values_text),
                f"{r.name}: {w['metadata']['name']}: Secret {s} is {where}",
                "neither rendered nor in values",
            )


def check_secrets(r):
    """Secrets are referenced, never inlined; generated keys match their keys file."""
    for w in r.workloads():
        for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", []):
            name = f"{w['metadata']['name']}/{c['name']}"
            bad = [a for a in c.get("args", []) if a.split("=", 1)[0] in SECRET_FLAGS]
            check(not bad, f"{r.name}: {name}: no secret passed as a flag", bad)
            inline = [e["name"] for e in c.get("env", []) if SECRET_ENV.search(e["name"]) and "value" in e]
            check(not inline, f"{r.name}: {name}: secret env vars come from secretKeyRef", inline)
    generated = {
        base64.b64decode(v).decode() for s in r.secrets().values() for v in s.get("data", {}).values()
    }
    generated = {k for k in generated if k.startswith("ragd_")}
    for d in r.docs:
        if d["kind"] == "Secret":
            continue
        text = yaml.safe_dump(d)
        found = [k for k in KEY_LITERAL.findall(text) if re.search(r"[A-Z0-9]", k[5:])]
        found += [k for k in generated if k in text]
        if found:
            fail(f"{r.name}: {d['kind']} {d['metadata']['name']}: no API key inlined", f"{found[0][:9]}...")
    ok(
        f"{r.name}: no API key outside Secrets "
        f"({len(r.docs)} objects scanned, {len(generated)} generated keys)"
    )
    for sname, s in r.secrets().items():
        data = {k: base64.b64decode(v).decode() for k, v in s.get("data", {}).items()}
        keys_file = next((k for k in data if k.startswith("keys.")), None)
        if keys_file:
            entries = {e["name"]: e for e in json.loads(data[keys_file])["keys"]}
            for k, key in data.items():
                if not k.endswith(".key"):
                    continue
                principal = f"{RELEASE}-ragd-{k[:-4]}"
                e = entries.get(principal, {})
                check(
                    e.get("sha256") == hashlib.sha256(key.encode()).hexdigest() and key.startswith("ragd_"),
                    f"{r.name}: Secret {sname}: {k} is listed as {principal} by its sha256",
                    e,
                )
            grants = {n: e.get("grants", []) for n, e in entries.items()}
            check(
                grants.get(f"{RELEASE}-ragd-indexer") == [{"service": "embed"}]
                and grants.get(f"{RELEASE}-ragd-generator") == [{"collection": "*", "role": "read"}]
                and grants.get(f"{RELEASE}-ragd-probe") == [],
                f"{r.name}: Secret {sname}: the services' own keys carry only what their hop needs",
                grants,
            )
        if "tls.crt" in data and "ca.crt" in data:
            check_certificate(r, sname, data)


def check_certificate(r, sname, data):
    """The generated certificate chains to its CA and names what the clients verify."""
    with tempfile.TemporaryDirectory() as t:
        for k in ("tls.crt", "ca.crt"):
            Path(t, k).write_text(data[k])
        v = run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", f"{t}/ca.crt", f"{t}/tls.crt"])
        check(
            v.returncode == 0,
            f"{r.name}: Secret {sname}: tls.crt verifies against ca.crt for servers",
            v.stdout + v.stderr,
        )
        v = run(["openssl", "verify", "-purpose", "sslclient", "-CAfile", f"{t}/ca.crt", f"{t}/tls.crt"])
        check(
            v.returncode == 0,
            f"{r.name}: Secret {sname}: tls.crt verifies for clients (mutual TLS)",
            v.stdout + v.stderr,
        )
        san = run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", f"{t}/tls.crt"]).stdout
    names = set(re.findall(r"DNS:([^,\s]+)", san))
    for w, role, c in r.ragd_containers():
        cmds = [c["args"]] + [c.get(k, {}).get("exec", {}).get("command", []) for k in ("readinessProbe",)]
        for args in cmds:
            sn = flag(args, "--upstream-tls-server-name")
            if sn:
                check(
                    sn in names,
                    f"{r.name}: {w['metadata']['name']}: the certificate names {sn}",
                    sorted(names),
                )


def check_resources_and_security(r):
    for w in r.workloads() + r.kind("Pod"):
        spec, name = pod_spec(w), w["metadata"]["name"]
        psc = spec.get("securityContext", {})
        check(
            psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            f"{r.name}: {name}: pod runs as non-root with seccomp RuntimeDefault",
            psc,
        )
        check(
            spec.get("automountServiceAccountToken") is False,
            f"{r.name}: {name}: no service account token",
            spec.get("automountServiceAccountToken"),
        )
        if any(True for _ in (x for x in r.ragd_containers() if x[0] is w)):
            check(
                psc.get("runAsUser") == IMAGE_UID,
                f"{r.name}: {name}: runs as the image's user {IMAGE_UID}",
                psc.get("runAsUser"),
            )
        for c in spec["containers"] + spec.get("initContainers", []):
            csc, res = c.get("securityContext", {}), c.get("resources", {})
            what = f"{name}/{c['name']}"
            check(
                csc.get("allowPrivilegeEscalation") is False
                and csc.get("readOnlyRootFilesystem") is True
                and "ALL" in csc.get("capabilities", {}).get("drop", [])
                and not csc.get("privileged"),
                f"{r.name}: {what}: read-only root, no privilege escalation, all capabilities dropped",
                csc,
            )
            check(
                all(k in res.get("requests", {}) for k in ("cpu", "memory"))
                and "memory" in res.get("limits", {}),
                f"{r.name}: {what}: cpu/memory requests and a memory limit",
                res,
            )


def check_lifecycle(r):
    for w, role, c in r.ragd_containers():
        name, spec = w["metadata"]["name"], pod_spec(w)
        grace = int(flag(c["args"], "--shutdown-grace-secs") or 10)
        sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        tgps = spec.get("terminationGracePeriodSeconds", 30)
        check(
            tgps > grace + sleep,
            f"{r.name}: {name}: terminationGracePeriodSeconds {tgps} > preStop {sleep} + drain {grace}",
            tgps,
        )
        secured = flag(c["args"], "--tls-cert") or "--auth-health" in c["args"]
        probe = c.get("readinessProbe", {})
        check(
            ("exec" in probe) if secured else bool(probe),
            f"{r.name}: {name}: probes "
            + (
                "run `ragd health` (kubelet gRPC probes cannot speak TLS or send keys)"
                if secured
                else "present"
            ),
            list(probe),
        )
        st = c.get("startupProbe", {})
        budget = st.get("periodSeconds", 10) * st.get("failureThreshold", 3)
        check(budget >= 300, f"{r.name}: {name}: startup probe allows {budget} s for loading", budget)
        ann = w["spec"]["template"]["metadata"].get("annotations", {})
        check(
            "checksum/secrets" in ann,
            f"{r.name}: {name}: checksum annotation rolls pods on Secret changes",
            list(ann),
        )
        check(
            spec.get("enableServiceLinks") is False,
            f"{r.name}: {name}: no service-link env (RAGD_* stays ragd's)",
            spec.get("enableServiceLinks"),
        )


def check_wiring(r):
    """Selectors, HPAs, PDBs, discovery, NetworkPolicy peers, ServiceMonitors."""
    for w in r.workloads():
        sel = w["spec"]["selector"]["matchLabels"]
        check(
            r.selects(sel, w["spec"]["template"]["metadata"]["labels"]),
            f"{r.name}: {w['metadata']['name']}: selector matches its pods",
            sel,
        )
    deployments = {d["metadata"]["name"]: d for d in r.kind("Deployment")}
    for h in r.kind("HorizontalPodAutoscaler"):
        t = deployments.get(h["spec"]["scaleTargetRef"]["name"])
        check(
            t is not None and "replicas" not in t["spec"],
            f"{r.name}: HPA {h['metadata']['name']} owns its Deployment's replicas",
            "target missing or replicas set",
        )
    for p in r.kind("PodDisruptionBudget"):
        check(
            bool(r.pods_selected_by(p["spec"]["selector"]["matchLabels"])),
            f"{r.name}: PDB {p['metadata']['name']} selects a workload",
            "none",
        )
    etcd = [w for w in r.kind("StatefulSet") if any(c["name"] == "etcd" for c in pod_spec(w)["containers"])]
    members = set()
    for e in etcd:
        port = container_ports(pod_spec(e)["containers"][0])["client"]
        members |= {
            f"http://{e['metadata']['name']}-{i}.{e['spec']['serviceName']}.{NAMESPACE}"
            f".svc.cluster.local:{port}"
            for i in range(e["spec"]["replicas"])
        }
    roles = {}
    for w, role, c in r.ragd_containers():
        roles[role] = w
        eps = set((flag(c["args"], "--etcd-endpoints") or "").split(","))
        if etcd:
            check(
                eps == members,
                f"{r.name}: {w['metadata']['name']}: --etcd-endpoints are the {len(members)} etcd members",
                eps,
            )
        else:
            check(
                eps != {""}, f"{r.name}: {w['metadata']['name']}: --etcd-endpoints set (external etcd)", eps
            )
        up = {"indexer": ("--embedder-url", "embedder"), "generator": ("--indexer-url", "indexer")}.get(role)
        if up:
            check(
                flag(c["args"], up[0]) == "etcd",
                f"{r.name}: {w['metadata']['name']}: {up[0]} discovers through etcd",
                flag(c["args"], up[0]),
            )
            sn = flag(c["args"], "--upstream-tls-server-name")
            if sn:
                svc = next(
                    (s for s in r.kind("Service") if f"{s['metadata']['name']}.{NAMESPACE}.svc" == sn), None
                )
                target = svc and r.pods_selected_by(svc["spec"]["selector"])
                check(
                    bool(target)
                    and target[0]["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
                    == up[1],
                    f"{r.name}: {w['metadata']['name']}: verifies its upstream as {sn}, "
                    f"the {up[1]}'s Service",
                    sn,
                )
        scheme = "https" if flag(c["args"], "--tls-cert") else "http"
        check(
            flag(c["args"], "--advertise-addr").startswith(scheme + "://"),
            f"{r.name}: {w['metadata']['name']}: advertises {scheme}://",
            None,
        )
    labels = {role: w["spec"]["template"]["metadata"]["labels"] for role, w in roles.items()}
    for np in r.kind("NetworkPolicy"):
        targets = r.pods_selected_by(np["spec"]["podSelector"]["matchLabels"])
        nname = np["metadata"]["name"]
        check(bool(targets), f"{r.name}: NetworkPolicy {nname} selects a workload", "none")
        for rule in np["spec"].get("ingress", []):
            port_names = [p["port"] for p in rule.get("ports", [])]
            froms = [
                f["podSelector"]["matchLabels"]
                for f in rule.get("from", [])
                if "podSelector" in f and "namespaceSelector" not in f
            ]
            allowed = {role for role, lab in labels.items() for f in froms if r.selects(f, lab)}
            comp = (
                targets[0]["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
                if targets
                else None
            )
            if "grpc" in port_names and comp == "embedder":
                check(
                    allowed == {"indexer"},
                    f"{r.name}: NetworkPolicy {nname}: only the indexer calls the embedder",
                    allowed,
                )
            if "grpc" in port_names and comp == "indexer":
                check(
                    "generator" in allowed and not {"embedder"} & allowed,
                    f"{r.name}: NetworkPolicy {nname}: the generator calls the indexer, "
                    "the embedder does not",
                    allowed,
                )
            if port_names == ["client"] and comp == "etcd":
                check(
                    allowed == set(labels),
                    f"{r.name}: NetworkPolicy {nname}: every ragd service reaches etcd",
                    allowed,
                )
    services = {s["metadata"]["name"]: s for s in r.kind("Service")}
    for sm in r.kind("ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        hits = [
            s
            for s in services.values()
            if r.selects(sel, s["metadata"].get("labels", {}))
            and any(p["name"] == "metrics" for p in s["spec"]["ports"])
        ]
        check(
            bool(hits),
            f"{r.name}: ServiceMonitor {sm['metadata']['name']} finds a Service with a metrics port",
            sel,
        )
        for ep in sm["spec"]["endpoints"]:
            cred = ep.get("authorization", {}).get("credentials")
            if cred:
                sec = r.secrets().get(cred["name"])
                check(
                    sec is None or cred["key"] in sec.get("data", {}),
                    f"{r.name}: ServiceMonitor {sm['metadata']['name']}: its key {cred['key']} "
                    f"is in Secret {cred['name']}",
                    None,
                )


# ---------------------------------------------------------------- the run ----------------------


def validate(name, path, kube):
    """kubernetes-validate --strict of one render against the Kubernetes it was rendered for."""
    p = run([KUBE_VALIDATE, "--strict", "--quiet", "-k", kube, str(path)])
    errors = [line for line in p.stdout.splitlines() if line.startswith("ERROR")]
    unknown = sorted({m.group(1) for m in re.finditer(r"Couldn't find schema for kind (\w+)", p.stdout)})
    count = sum(1 for d in yaml.safe_load_all(path.read_text()) if d)
    note = f"; no schema for {', '.join(unknown)}: checked by the chart tests" if unknown else ""
    check(
        p.returncode == 0 and not errors,
        f"{name}: kubernetes-validate --strict, Kubernetes {kube} ({count} objects{note})",
        "\n  ".join(errors[:5]) or p.stderr.strip()[-500:],
    )


def live_probe_test(r):
    """The rendered security flags with the rendered Secrets, for real: an indexer started with
    the TLS, mutual-TLS and keys flags of its manifest (paths into the Secrets' files, which the
    chart generated) answers its rendered exec probe SERVING; without the probe key, and in
    plaintext as kubelet's gRPC probe would call, it refuses."""
    import signal
    import time

    found = [(w, c) for w, role, c in r.ragd_containers() if role == "indexer"]
    secrets = r.secrets()
    if not found or not secrets or not os.access(RAGD_BIN, os.X_OK):
        fail(f"{r.name}: live probe", "needs the indexer, generated Secrets and the ragd binary")
        return
    w, c = found[0]
    with tempfile.TemporaryDirectory() as t:
        for m in c["volumeMounts"]:
            v = next((v for v in pod_spec(w)["volumes"] if v["name"] == m["name"]), {})
            sec = secrets.get(v.get("secret", {}).get("secretName"))
            if sec is None:
                continue
            d = Path(t + m["mountPath"])
            d.mkdir(parents=True)
            for item in v["secret"].get("items") or [{"key": k, "path": k} for k in sec["data"]]:
                d.joinpath(item["path"]).write_bytes(base64.b64decode(sec["data"][item["key"]]))
        drop = (
            "--listen",
            "--advertise-addr",
            "--etcd-endpoints",
            "--metrics-addr",
            "--data-dir",
            "--embedder-url",
            "--auth-jwks-file",
        )
        args = [a.replace("=/etc/ragd/", f"={t}/etc/ragd/") for a in c["args"] if a.split("=")[0] not in drop]
        args += ["--listen=127.0.0.1:0", f"--data-dir={t}/data", "--embedder-url=http://127.0.0.1:9"]
        env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn"}
        proc = subprocess.Popen(
            [RAGD_BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            port = None
            line = proc.stdout.readline()  # RAGD_LISTENING indexer 127.0.0.1:<port>
            if line.startswith("RAGD_LISTENING"):
                port = line.split()[2].rsplit(":", 1)[1]
            if not check(
                port is not None,
                f"{r.name}: live: the indexer starts with its rendered flags",
                (line + (proc.stderr.read() if proc.poll() is not None else ""))[-400:],
            ):
                return
            probe = c["readinessProbe"]["exec"]["command"]
            probe = [a.replace("=/etc/ragd/", f"={t}/etc/ragd/") for a in probe]
            probe = [re.sub(r"(--endpoint=https?://[^:]+):\d+", rf"\g<1>:{port}", a) for a in probe]
            deadline, p = time.time() + 60, None
            while time.time() < deadline:
                p = run([RAGD_BIN, *probe[1:]], env=env)
                if p.returncode == 0:
                    break
                time.sleep(0.5)
            check(
                p.returncode == 0 and "SERVING" in p.stdout,
                f"{r.name}: live: the rendered exec probe gets SERVING over mutual TLS with probe.key",
                (p.stderr or p.stdout).strip()[-300:],
            )
            no_key = [a for a in probe if not a.startswith("--api-key-file")]
            p = run([RAGD_BIN, *no_key[1:]], env=env)
            check(
                p.returncode != 0,
                f"{r.name}: live: the probe without a key is refused (--auth-health)",
                p.stdout,
            )
            plain = [a.replace("https://", "http://") for a in probe]
            p = run([RAGD_BIN, *plain[1:]], env=env)
            check(
                p.returncode != 0,
                f"{r.name}: live: a plaintext probe (kubelet's gRPC probe) is refused",
                p.stdout,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def notes_tests():
    """NOTES.txt's ragd commands parse. `helm template` does not render NOTES.txt, so a copy of
    the chart carries it as a template whose output is the text."""
    if not os.access(RAGD_BIN, os.X_OK):
        fail("NOTES.txt: ragd commands", f"no ragd binary at {RAGD_BIN}")
        return
    import shlex

    with tempfile.TemporaryDirectory() as t:
        chart = Path(t, "ragd")
        shutil.copytree(CHART, chart)
        notes = (chart / "templates" / "NOTES.txt").read_text()
        (chart / "templates" / "NOTES.txt").unlink()
        (chart / "templates" / "notes-as-data.yaml").write_text(
            '{{- define "notes.text" -}}\n'
            + notes
            + '\n{{- end -}}\ntext: {{ include "notes.text" . | toJson }}\n'
        )
        for f in sorted((CHART / "ci").glob("*-values.yaml")):
            p = run(
                [
                    HELM,
                    "template",
                    RELEASE,
                    str(chart),
                    "-n",
                    NAMESPACE,
                    "-f",
                    str(f),
                    "--show-only",
                    "templates/notes-as-data.yaml",
                ]
            )
            name = f.name.removesuffix("-values.yaml")
            if not check(p.returncode == 0, f"{name}: NOTES.txt renders", p.stderr.strip()[-300:]):
                continue
            text = yaml.safe_load(p.stdout)["text"]
            cmds = [shlex.split(line.strip()) for line in text.splitlines() if line.startswith("  ragd ")]
            bad = []
            for cmd in cmds:
                q = run([RAGD_BIN, *cmd[1:], "--help"], env={"PATH": os.environ.get("PATH", "")})
                if q.returncode != 0:
                    bad.append(f"{' '.join(cmd[:3])}: {(q.stderr or q.stdout).strip().splitlines()[-1:]}")
            check(
                cmds and not bad,
                f"{name}: NOTES.txt's {len(cmds)} ragd commands parse",
                "; ".join(bad) or "none found",
            )


def schema_tests():
    """values.schema.json and the chart's refusals: each of these values must fail."""
    cases = [
        (["embeder.replicas=3"], "Additional property embeder is not allowed", "a misspelt top-level key"),
        (
            ["indexer.persistance.size=1Gi"],
            "Additional property persistance is not allowed",
            "a misspelt nested key",
        ),
        (
            ["embedder.autoscaling.minReplica=1"],
            "Additional property minReplica is not allowed",
            "a misspelt HPA key",
        ),
        (["indexer.durability=sometimes"], "indexer.durability must be one of", "an unknown --durability"),
        (["indexer.reranker.api=colbert"], "indexer.reranker.api must be one of", "an unknown --reranker-api"),
        (["embedder.extraArgs[0]=workers=2"], "Does not match pattern", "an extra arg that is not a flag"),
        (["embedder.port=70000"], "embedder.port", "a port out of range"),
        (["indexer.replicas=2"], "more than one indexer is not supported", "two indexers"),
        (["tls.mutual=true"], "tls.mutual needs tls.enabled", "mutual TLS without TLS"),
        (
            ["tls.enabled=true", "probes.mode=grpc"],
            "probes.mode=grpc cannot work",
            "kubelet gRPC probes under TLS",
        ),
        (
            ["generator.terminationGracePeriodSeconds=20"],
            "must exceed",
            "a grace period shorter than the drain",
        ),
        (["etcd.enabled=false"], "set externalEtcd.endpoints", "no etcd at all"),
        (["generator.llm.model="], "cannot run without its embedded model", "a generator without its GGUF"),
    ]
    for sets, expect, what in cases:
        p = helm_template(sets=sets)
        check(
            p.returncode != 0 and expect in p.stderr,
            f"schema: {what} ({' '.join(sets)}) fails `helm template`",
            f"rc {p.returncode}, stderr: {p.stderr.strip()[-300:]}",
        )


def main():
    print(
        f"chart-check: {CHART.relative_to(ROOT)} with {run([HELM, 'version', '--short']).stdout.strip()}, "
        f"ragd binary {RAGD_BIN}",
        flush=True,
    )
    values_files = sorted((CHART / "ci").glob("*-values.yaml"))
    p = run([HELM, "lint", "--strict", str(CHART)])
    check(p.returncode == 0, "helm lint --strict (defaults)", p.stdout[-800:] + p.stderr[-800:])
    for f in values_files:
        p = run([HELM, "lint", "--strict", str(CHART), "-f", str(f)])
        check(p.returncode == 0, f"helm lint --strict -f ci/{f.name}", p.stdout[-800:] + p.stderr[-800:])
    with tempfile.TemporaryDirectory() as out:
        for f in values_files:
            name = f.name.removesuffix("-values.yaml")
            rendered = True
            for k in KUBE_VERSIONS:
                p = helm_template(f, kube=k)
                if not check(
                    p.returncode == 0, f"{name}: helm template --kube-version {k}", p.stderr.strip()[-500:]
                ):
                    rendered = False
                    continue
                path = Path(out, f"{name}-{k}.yaml")
                path.write_text(p.stdout)
                validate(name, path, k)
            if not rendered:
                continue
            r = Render(name, Path(out, f"{name}-{KUBE_VERSIONS[0]}.yaml").read_text(), f.read_text())
            if name == "tls-auth":
                live_probe_test(r)
            for test in (
                check_args,
                check_etcd_args,
                check_test_pods,
                check_ports,
                check_files,
                check_secrets,
                check_resources_and_security,
                check_lifecycle,
                check_wiring,
            ):
                test(r)
    notes_tests()
    schema_tests()
    if failures:
        print(f"chart-check: {len(failures)} check(s) FAILED", flush=True)
        sys.exit(1)
    print("chart-check: every check passed", flush=True)


if __name__ == "__main__":
    main()
