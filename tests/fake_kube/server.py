#!/usr/bin/env python3
"""A protocol-faithful fake Kubernetes API server for backuphub's tests (stdlib only).

It serves what a client of a real API server sees: legacy discovery documents (/api,
/api/v1, /apis, /apis/GROUP/VERSION) for a Kubernetes 1.33-like cluster with a CRD
(certificates.cert-manager.io), an aggregated API (metrics.k8s.io) that answers 503,
paginated lists (limit, continue tokens, resourceVersion in ListMeta, items sorted by
namespace/name as etcd returns them), `Status` bodies for every error, bearer-token
authentication (401), a resource that answers 403, and a continue token that expires
once (410 Gone, reason Expired).

Usage: server.py --token T [--namespaces N] [--configmaps P] [--expire-once RES]
                 [--forbid RES] [--log FILE]
It prints the port it listens on (127.0.0.1) as its first line.
"""
import argparse, base64, hashlib, json, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlsplit, parse_qs

MARKER = "SECRET-MARKER-5f2c9e"
TS = "2026-11-01T10:00:00Z"

# (group, version, plural, kind, namespaced, verbs)
RESOURCES = [
    ("", "v1", "namespaces", "Namespace", False),
    ("", "v1", "configmaps", "ConfigMap", True),
    ("", "v1", "secrets", "Secret", True),
    ("", "v1", "services", "Service", True),
    ("", "v1", "endpoints", "Endpoints", True),
    ("", "v1", "pods", "Pod", True),
    ("", "v1", "events", "Event", True),
    ("", "v1", "serviceaccounts", "ServiceAccount", True),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    ("", "v1", "persistentvolumes", "PersistentVolume", False),
    ("apps", "v1", "deployments", "Deployment", True),
    ("apps", "v1", "replicasets", "ReplicaSet", True),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ("coordination.k8s.io", "v1", "leases", "Lease", True),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    ("cert-manager.io", "v1", "certificates", "Certificate", True),
]
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
AGGREGATED = ("metrics.k8s.io", "v1beta1")


def uid(*parts):
    h = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def meta(name, ns=None, **extra):
    m = {"name": name, "uid": uid(ns or "", name, extra.pop("_kind", "")),
         "resourceVersion": str(1000 + int(hashlib.md5(f"{ns}/{name}".encode()).hexdigest()[:4], 16)),
         "creationTimestamp": TS,
         "managedFields": [{"manager": "kubectl", "operation": "Apply", "time": TS}]}
    if ns is not None:
        m["namespace"] = ns
    m.update(extra)
    return m


def build(args):
    """Every object by plural name: a list of (namespace or '', name, object)."""
    objs = {r[2]: [] for r in RESOURCES}

    def add(plural, kind, api, name, ns=None, **body):
        extra = body.pop("_meta", {})
        o = {"apiVersion": api, "kind": kind, "metadata": meta(name, ns, _kind=kind, **extra)}
        o.update(body)
        objs[plural].append((ns or "", name, o))
        return o

    namespaces = [f"ns-{i:02d}" for i in range(args.namespaces)] + ["kube-system", "shop"]
    for ns in namespaces:
        add("namespaces", "Namespace", "v1", ns, status={"phase": "Active"})
        add("serviceaccounts", "ServiceAccount", "v1", "default", ns)
    for ns in namespaces[:args.namespaces]:
        for j in range(args.configmaps):
            add("configmaps", "ConfigMap", "v1", f"cm-{j:04d}", ns, data={"key": f"value {ns} {j}", "unicode": "Grüße ☃"})
    # Names that are prefixes of others: key order (name + ".yaml") differs from list order.
    for n in ["app", "app-config", "app.v2", "apple", "app0"]:
        add("configmaps", "ConfigMap", "v1", n, "shop", data={"n": n})
    add("secrets", "Secret", "v1", "db-password", "shop", type="Opaque",
        data={"password": base64.b64encode(MARKER.encode()).decode()}, stringData=None)
    objs["secrets"][-1][2].pop("stringData")
    dep = add("deployments", "Deployment", "apps/v1", "web", "shop", _meta={"generation": 3},
              spec={"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
              status={"replicas": 1, "readyReplicas": 1})
    owner = lambda o, kind, api: [{"apiVersion": api, "kind": kind, "name": o["metadata"]["name"], "uid": o["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    rs = add("replicasets", "ReplicaSet", "apps/v1", "web-5d9c", "shop",
             _meta={"ownerReferences": owner(dep, "Deployment", "apps/v1")},
             spec={"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": dep["spec"]["template"]})
    add("pods", "Pod", "v1", "web-5d9c-x1", "shop", _meta={"ownerReferences": owner(rs, "ReplicaSet", "apps/v1")},
        spec={"nodeName": "pi-node-1", "containers": [{"name": "web", "image": "nginx:1.27"}]}, status={"phase": "Running"})
    add("pods", "Pod", "v1", "standalone", "shop", spec={"nodeName": "pi-node-1", "containers": [{"name": "x", "image": "busybox"}]})
    add("services", "Service", "v1", "web", "shop", spec={"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"], "selector": {"app": "web"}, "ports": [{"port": 80}]})
    add("endpoints", "Endpoints", "v1", "web", "shop", subsets=[{"addresses": [{"ip": "10.42.0.5"}], "ports": [{"port": 80}]}])
    add("events", "Event", "v1", "web.1799", "shop", reason="Scheduled", message="scheduled")
    add("leases", "Lease", "coordination.k8s.io/v1", "web-leader", "shop", spec={"holderIdentity": "x"})
    add("persistentvolumeclaims", "PersistentVolumeClaim", "v1", "data", "shop",
        _meta={"annotations": {"pv.kubernetes.io/bind-completed": "yes", "volume.kubernetes.io/storage-provisioner": "rbd.csi.ceph.com"}},
        spec={"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "volumeName": "pvc-123", "storageClassName": "ceph-block"},
        status={"phase": "Bound"})
    add("persistentvolumes", "PersistentVolume", "v1", "pvc-123",
        spec={"capacity": {"storage": "1Gi"}, "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data", "uid": "abc", "resourceVersion": "7"}, "csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": "0001"}})
    add("roles", "Role", "rbac.authorization.k8s.io/v1", "reader", "shop", rules=[])
    add("clusterroles", "ClusterRole", "rbac.authorization.k8s.io/v1", "backuphub-reader", rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}])
    add("customresourcedefinitions", "CustomResourceDefinition", "apiextensions.k8s.io/v1", "certificates.cert-manager.io",
        spec={"group": "cert-manager.io", "names": {"plural": "certificates", "kind": "Certificate"}, "scope": "Namespaced",
              "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
        status={"conditions": [{"type": "Established", "status": "True"}]})
    for ns, n in [("shop", "shop-tls"), ("ns-00", "wildcard")]:
        if ns == "ns-00" and args.namespaces == 0:
            continue
        add("certificates", "Certificate", "cert-manager.io/v1", n, ns, spec={"secretName": n, "dnsNames": [f"{n}.lan"]}, status={"ready": True})
    for k in objs:
        objs[k].sort(key=lambda t: (t[0] + "/" + t[1]) if t[0] else t[1])
    return objs


def status(code, reason, message, details=None):
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return code, body


class Api:
    def __init__(self, args):
        self.args = args
        self.objs = build(args)
        self.rv = 424242
        self.expired = set()
        self.lock = threading.Lock()

    def discovery(self, path):
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}
        if path == "/apis":
            groups = sorted({r[0] for r in RESOURCES if r[0]}) + [AGGREGATED[0]]
            out = []
            for g in groups:
                v = AGGREGATED[1] if g == AGGREGATED[0] else "v1"
                gv = {"groupVersion": f"{g}/{v}", "version": v}
                out.append({"name": g, "versions": [gv], "preferredVersion": gv})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}
        parts = path.strip("/").split("/")
        if parts == ["apis", *AGGREGATED]:
            return status(503, "ServiceUnavailable", "the server is currently unable to handle the request", {"group": AGGREGATED[0], "causes": [{"reason": "UnexpectedServerResponse", "message": "service unavailable"}]})
        if parts[0] == "api" and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[0] == "apis" and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            return None
        rs = [r for r in RESOURCES if r[0] == group and r[1] == version]
        if not rs:
            return status(404, "NotFound", "the server could not find the requested resource")
        res = []
        for g, v, plural, kind, namespaced in rs:
            res.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": VERBS})
            if plural == "pods":
                res.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]})
        gv = f"{group}/{version}" if group else version
        return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res}

    def list(self, path, query):
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 3:
            group, version, plural = "", parts[1], parts[2]
        elif parts[0] == "apis" and len(parts) == 4:
            group, version, plural = parts[1], parts[2], parts[3]
        else:
            return None
        r = [x for x in RESOURCES if x[0] == group and x[1] == version and x[2] == plural]
        if not r:
            return status(404, "NotFound", "the server could not find the requested resource")
        kind = r[0][3]
        qualified = plural + ("." + group if group else "")
        if qualified in self.args.forbid:
            return status(403, "Forbidden", f'{plural}.{group or ""} is forbidden: User "system:serviceaccount:backuphub:backuphub" cannot list resource "{plural}" in API group "{group}" at the cluster scope', {"group": group, "kind": plural})
        items = self.objs[plural]
        limit = int(query.get("limit", ["0"])[0] or 0)
        start = 0
        token = query.get("continue", [None])[0]
        if token:
            try:
                t = json.loads(base64.b64decode(token))
                start = int(t["start"])
            except Exception:
                return status(400, "BadRequest", "continue key is not valid: illegal base64 data")
            with self.lock:
                if qualified in self.args.expire_once and qualified not in self.expired:
                    self.expired.add(qualified)
                    return status(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
        selector = query.get("labelSelector", [None])[0]
        if selector:
            k, _, v = selector.partition("=")
            items = [i for i in items if i[2]["metadata"].get("labels", {}).get(k) == v]
        end = len(items) if limit <= 0 else min(len(items), start + limit)
        page = [i[2] for i in items[start:end]]
        lm = {"resourceVersion": str(self.rv)}
        if end < len(items):
            lm["continue"] = base64.b64encode(json.dumps({"v": "meta.k8s.io/v1", "rv": self.rv, "start": end}).encode()).decode()
            lm["remainingItemCount"] = len(items) - end
        api = f"{group}/{version}" if group else version
        # Items of a list carry no apiVersion/kind of their own in some servers' output.
        return 200, {"kind": kind + "List", "apiVersion": api, "metadata": lm, "items": page}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--token", required=True)
    p.add_argument("--namespaces", type=int, default=3)
    p.add_argument("--configmaps", type=int, default=5)
    p.add_argument("--expire-once", action="append", default=[])
    p.add_argument("--forbid", action="append", default=[])
    p.add_argument("--log")
    args = p.parse_args()
    api = Api(args)
    log = open(args.log, "a", buffering=1) if args.log else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            u = urlsplit(self.path)
            code = None
            try:
                if self.headers.get("Authorization") != f"Bearer {args.token}":
                    code, body = status(401, "Unauthorized", "Unauthorized")
                else:
                    r = api.discovery(u.path) or api.list(u.path, parse_qs(u.query))
                    code, body = r if r else status(404, "NotFound", "the server could not find the requested resource")
            finally:
                if log:
                    log.write(f"GET {self.path} {code}\n")
            self.send(code, body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
