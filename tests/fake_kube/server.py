#!/usr/bin/env python3
"""A protocol-faithful fake Kubernetes API server for backuphub's tests (stdlib only).

It serves what a client of a real API server sees: legacy discovery documents (/api,
/api/v1, /apis, /apis/GROUP/VERSION) for a Kubernetes 1.33-like cluster with a CRD
(certificates.cert-manager.io), an aggregated API (metrics.k8s.io) that answers 503,
paginated lists (limit, continue tokens, resourceVersion in ListMeta, items sorted by
namespace/name as etcd returns them), `Status` bodies for every error, bearer-token
authentication (401), a resource that answers 403, and a continue token that expires
once (410 Gone, reason Expired).

With --volumes DIR it also plays the storage side of a Rook-Ceph cluster, for the
volume job: the fixture DIR/volumes.json (storage classes, snapshot classes, PVCs whose
data is DIR/data/NS/NAME: a directory, or a regular file for a Block volume), the
snapshot.storage.k8s.io and storage.k8s.io groups, single-object GET, POST and DELETE
of PVCs, pods and VolumeSnapshots whose status moves on by itself (snapshots are real
point-in-time copies in DIR/snapshots, PVCs restored from them copies of those), and
pods/exec over a WebSocket (v5/v4.channel.k8s.io) whose commands run with Debian's
busybox (/bin/busybox) in place of the container, the pod's mount paths in argv
standing for the claims' data.

Usage: server.py --token T [--namespaces N] [--configmaps P] [--expire-once RES]
                 [--forbid RES] [--log FILE]
                 [--volumes DIR [--never-ready NS/PVC] [--unschedulable NS/PVC]
                                [--cut-stream NS/PVC:BYTES]]
  --forbid RES         403 on RES (`plural` or `plural.group`, or `pods/exec`)
  --never-ready NS/PVC snapshots of that PVC never become readyToUse
  --unschedulable NS/PVC  pods mounting that claim, or a claim restored from a
                       snapshot of it, stay Pending (Unschedulable)
  --cut-stream NS/PVC:BYTES  an exec in a pod mounting that PVC, or a claim restored
                       from a snapshot of it, loses its TCP connection after BYTES of
                       stdout (no status, no close frame)
The --volumes-only flags repeat. Every request is logged as `METHOD path code`.
It prints the port it listens on (127.0.0.1) as its first line.
"""
import argparse, base64, copy, hashlib, json, os, re, secrets, select, shutil, signal, socket, stat
import struct, subprocess, sys, tempfile, threading, time, traceback, uuid
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlsplit, parse_qs

MARKER = "SECRET-MARKER-5f2c9e"
TS = "2026-11-01T10:00:00Z"

# (group, version, plural, kind, namespaced)
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
# Served only with --volumes: the external snapshotter's CRDs and the storage API.
VOLUME_RESOURCES = [
    ("snapshot.storage.k8s.io", "v1", "volumesnapshots", "VolumeSnapshot", True),
    ("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses", "VolumeSnapshotClass", False),
    ("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents", "VolumeSnapshotContent", False),
    ("storage.k8s.io", "v1", "storageclasses", "StorageClass", False),
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


USER = "system:serviceaccount:backuphub:backuphub"
# What --volumes lets clients create and delete (with their status moved on by the fake).
CREATABLE = ("persistentvolumeclaims", "pods", "volumesnapshots")


def selects(selector, labels):
    """A label selector's equality terms, comma-separated, all of which must hold:
    `k=v`, `k==v`, `k!=v`, `k` (the label exists), `!k` (it does not). Set-based
    terms (`k in (a,b)`) are not supported."""
    for term in selector.split(","):
        term = term.strip()
        if "!=" in term:
            k, v = term.split("!=", 1)
            ok = labels.get(k.strip()) != v.strip()
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            ok = labels.get(k.strip()) == v.strip()
        elif term.startswith("!"):
            ok = term[1:].strip() not in labels
        else:
            ok = not term or term in labels
        if not ok:
            return False
    return True


def qualified(plural, group):
    return plural + ("." + group if group else "")


def forbidden(verb, plural, group, ns, name=None, sub=None):
    """RBAC's 403, worded as the API server words it."""
    who = qualified(plural, group) + (f' "{name}"' if name else "")
    scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
    details = {"name": name} if name else {}
    details.update({"group": group} if group else {})
    details["kind"] = plural
    resource = plural + ("/" + sub if sub else "")
    return status(403, "Forbidden", f'{who} is forbidden: User "{USER}" cannot {verb} resource "{resource}" in API group "{group}" {scope}', details)


def not_found(plural, group, name):
    details = {"name": name, **({"group": group} if group else {}), "kind": plural}
    return status(404, "NotFound", f'{qualified(plural, group)} "{name}" not found', details)


def invalid(kind, group, name, field, reason, message):
    """422 Invalid, as field validation answers a create."""
    details = {"name": name, **({"group": group} if group else {}), "kind": kind,
               "causes": [{"reason": reason, "message": message, "field": field}]}
    return status(422, "Invalid", f'{qualified(kind, group)} "{name}" is invalid: {field}: {message}', details)


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def quantity(q):
    """A resource.Quantity (`64Mi`, `10Gi`, `1.5G`, `1000`) in bytes; None if malformed."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?\s*", str(q))
    if not m:
        return None
    mult = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}[m.group(2)]
    return int(float(m.group(1)) * mult)


def copy_sparse(src, dst):
    """A file copied with its holes kept (a 64Mi block volume stays a few blocks)."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        while chunk := f.read(1 << 16):
            if chunk.count(0) == len(chunk):
                g.seek(len(chunk), os.SEEK_CUR)
            else:
                g.write(chunk)
        g.truncate(g.tell())


def clone(src, dst):
    """A point-in-time copy of a volume's data, as faithful as a CSI snapshot: for a
    tree, symlinks as symlinks, hard links as links, FIFOs, sockets and devices as
    nodes, with modes, owners, times and xattrs; a block volume's file with its holes.
    (shutil.copytree would split hard links and fail on FIFOs.)"""
    seen = {}

    def one(s, d):
        st = os.lstat(s)
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in seen:
            os.link(seen[key], d)
            return
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d)
            for n in sorted(os.listdir(s)):
                one(os.path.join(s, n), os.path.join(d, n))
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(st.st_mode):
            copy_sparse(s, d)
        else:
            try:
                os.mknod(d, st.st_mode, st.st_rdev)
            except PermissionError:  # devices need CAP_MKNOD: not copied without it
                return
        seen[key] = d
        try:
            os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
        except PermissionError:
            pass
        # Last, so that a directory's mtime is not changed by its entries' creation.
        shutil.copystat(s, d, follow_symlinks=False)

    one(src, dst)


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def busybox_bin():
    """A directory with a link per busybox applet, to be a command's whole PATH: what
    the reader image (busybox) offers and nothing of the host. Shared by every server
    on the machine and never removed (a SIGKILLed server could not): it is named after
    the busybox binary, and made under another name and renamed, so that servers
    starting together do not see a half-filled one."""
    bb = "/bin/busybox"
    if not os.access(bb, os.X_OK):
        sys.exit("server.py: --volumes runs commands with /bin/busybox: apt-get install busybox")
    st = os.stat(bb)
    path = os.path.join(tempfile.gettempdir(), f"fake-kube-busybox-{st.st_ino}-{st.st_size}-{int(st.st_mtime)}")
    if not os.path.isdir(path):
        tmp = tempfile.mkdtemp(prefix="fake-kube-busybox-new-")
        os.chmod(tmp, 0o755)
        for applet in subprocess.run([bb, "--list"], capture_output=True, check=True).stdout.split() + [b"busybox"]:
            os.symlink(bb, os.path.join(tmp, applet.decode()))
        try:
            os.rename(tmp, path)
        except OSError:  # another server made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return path


class Rec:
    """A stored object, and what the fake's controllers know of it (`managed` objects'
    status is computed from it at every read: a function of time, no timers)."""

    def __init__(self, obj, managed=False, **state):
        self.obj = obj
        self.managed = managed
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.__dict__.update(state)

    def wall(self, mono):
        return iso(self.wall0 + (mono - self.t0))


class ExecPlan:
    """An exec that passed every check and awaits the WebSocket upgrade."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


SCHEDULE_WAIT = 5.0     # a pod whose claims are not all bound by then is Unschedulable
BIND_DELAY = 0.2        # a provisioned PVC is Bound after this
READY_DELAY = 0.3       # a snapshot is readyToUse after this
START_DELAY = 0.2       # a scheduled pod's container runs after this
UNSCHEDULABLE = "0/3 nodes are available: 3 node(s) had volume node affinity conflict."
NODE = "pi-node-1"
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"


class Volumes:
    """The storage side of the cluster (--volumes DIR): every object lives here, in
    `store[plural][(namespace or "", name)]`; PersistentVolumes and
    VolumeSnapshotContents of managed claims and snapshots are derived at read time."""

    def __init__(self, api, args):
        self.api = api
        self.args = args
        self.dir = os.path.abspath(args.volumes)
        with open(os.path.join(self.dir, "volumes.json")) as f:
            fx = json.load(f)
        self.lock = threading.RLock()
        self.store = {r[2]: {} for r in api.resources}
        for plural, items in api.objs.items():
            for ns, name, o in items:
                self.store[plural][(ns, name)] = Rec(o)
        self.classes = {}
        for c in fx.get("storageClasses", []):
            self.classes[c["name"]] = c["provisioner"]
            self.put("storageclasses", "", c["name"], {
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": meta(c["name"], _kind="StorageClass"), "provisioner": c["provisioner"],
                "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate", "allowVolumeExpansion": True})
        for c in fx.get("snapshotClasses", []):
            m = meta(c["name"], _kind="VolumeSnapshotClass")
            if c.get("default"):
                m["annotations"] = {"snapshot.storage.kubernetes.io/is-default-class": "true"}
            self.put("volumesnapshotclasses", "", c["name"], {
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                "metadata": m, "driver": c["driver"], "deletionPolicy": "Delete"})
        for c in fx.get("pvcs", []):
            ns, name = c["namespace"], c["name"]
            m = meta(name, ns, _kind="PersistentVolumeClaim")
            if c.get("labels"):
                m["labels"] = dict(c["labels"])
            spec = {"accessModes": c.get("accessModes", ["ReadWriteOnce"]),
                    "resources": {"requests": {"storage": c["size"]}},
                    "storageClassName": c.get("storageClassName"), "volumeMode": c.get("volumeMode", "Filesystem")}
            o = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": m, "spec": spec}
            # Bound since ever; its data is the tests' to write, and stays when it is deleted.
            self.store["persistentvolumeclaims"][(ns, name)] = Rec(
                o, True, kind="pvc", fixture=True, bound_at=float("-inf"), origin=(ns, name),
                data=self.data_path(ns, name), pv="pvc-" + m["uid"])
            if ("", ns) not in self.store["namespaces"]:
                self.put("namespaces", "", ns, {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": meta(ns, _kind="Namespace"), "status": {"phase": "Active"}})
        self.never_ready = set(args.never_ready)
        self.unschedulable = set(args.unschedulable)
        self.cuts = {}
        for c in args.cut_stream:
            claim, _, n = c.rpartition(":")
            self.cuts[claim] = int(n)
        self.bin = busybox_bin()
        self.applets = set(os.listdir(self.bin))
        self.procs = set()  # running exec processes, killed when the server is stopped

    def put(self, plural, ns, name, o):
        self.store[plural][(ns, name)] = Rec(o)

    def data_path(self, ns, name):
        return os.path.join(self.dir, "data", ns, name)

    def driver(self, rec):
        return self.classes.get(rec.obj["spec"].get("storageClassName") or "", "unknown.csi.k8s.io")

    # Reading: objects with their status as of now.

    def items(self, plural, ns=None):
        now = time.monotonic()
        with self.lock:
            out = [(k[0], k[1], self.render(r, now)) for k, r in self.store[plural].items()
                   if ns is None or k[0] == ns]
            if plural == "persistentvolumes":
                out += [("", r.pv, self.pv(r)) for r in self.store["persistentvolumeclaims"].values()
                        if r.managed and self.bound(r, now)]
            if plural == "volumesnapshotcontents":
                out += [("", r.content, self.content(r, now)) for r in self.store["volumesnapshots"].values()
                        if r.driver]
        out.sort(key=lambda t: (t[0] + "/" + t[1]) if t[0] else t[1])
        return out

    def get(self, plural, ns, name):
        return next((o for n, m, o in self.items(plural, ns) if m == name and n == (ns or "")), None)

    def render(self, rec, now):
        o = copy.deepcopy(rec.obj)
        if rec.managed:
            getattr(self, "render_" + rec.kind)(o, rec, now)
        return o

    def bound(self, rec, now):
        return rec.bound_at is not None and now >= rec.bound_at

    def render_pvc(self, o, rec, now):
        if not self.bound(rec, now):
            o["status"] = {"phase": "Pending"}
            return
        o["spec"]["volumeName"] = rec.pv
        o["metadata"].setdefault("annotations", {}).update({
            "pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes",
            "volume.beta.kubernetes.io/storage-provisioner": self.driver(rec),
            "volume.kubernetes.io/storage-provisioner": self.driver(rec)})
        o["metadata"]["finalizers"] = ["kubernetes.io/pvc-protection"]
        o["status"] = {"phase": "Bound", "accessModes": o["spec"].get("accessModes", []),
                       "capacity": {"storage": o["spec"]["resources"]["requests"]["storage"]}}

    def pv(self, rec):
        c = rec.obj
        return {"apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": rec.pv, "uid": uid("pv", rec.pv), "resourceVersion": c["metadata"]["resourceVersion"],
                             "creationTimestamp": c["metadata"]["creationTimestamp"],
                             "annotations": {"pv.kubernetes.io/provisioned-by": self.driver(rec)},
                             "finalizers": ["kubernetes.io/pv-protection"]},
                "spec": {"accessModes": c["spec"].get("accessModes", []),
                         "capacity": {"storage": c["spec"]["resources"]["requests"]["storage"]},
                         "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": c["metadata"]["namespace"],
                                      "name": c["metadata"]["name"], "uid": c["metadata"]["uid"],
                                      "resourceVersion": c["metadata"]["resourceVersion"]},
                         "csi": {"driver": self.driver(rec), "volumeHandle": "0001-0009-rook-ceph-0000000000000001-" + c["metadata"]["uid"]},
                         "persistentVolumeReclaimPolicy": "Delete",
                         "storageClassName": c["spec"].get("storageClassName"),
                         "volumeMode": c["spec"].get("volumeMode", "Filesystem")},
                "status": {"phase": "Bound"}}

    def render_snap(self, o, rec, now):
        if rec.error:
            o["status"] = {"error": rec.error, "readyToUse": False}
        elif rec.ready_at is not None and now >= rec.ready_at:
            o["status"] = {"boundVolumeSnapshotContentName": rec.content, "creationTime": rec.wall(rec.t0),
                           "readyToUse": True, "restoreSize": rec.size}
        else:
            o["status"] = {"readyToUse": False}

    def content(self, rec, now):
        s = rec.obj["metadata"]
        ready = rec.ready_at is not None and now >= rec.ready_at
        return {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                "metadata": {"name": rec.content, "uid": uid("content", s["uid"]), "resourceVersion": s["resourceVersion"],
                             "creationTimestamp": s["creationTimestamp"]},
                "spec": {"deletionPolicy": "Delete", "driver": rec.driver,
                         "source": {"volumeHandle": "0001-0009-rook-ceph-0000000000000001-" + rec.source_uid},
                         "volumeSnapshotClassName": rec.obj["spec"]["volumeSnapshotClassName"],
                         "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                               "name": s["name"], "namespace": s["namespace"], "uid": s["uid"]}},
                "status": {"readyToUse": ready, **({"restoreSize": quantity(rec.size), "creationTime": int(rec.wall0 * 1e9),
                                                    "snapshotHandle": "0001-0009-rook-ceph-0000000000000001-" + s["uid"]} if ready else {})}}

    def pod_phase(self, rec, now):
        """Where the scheduler and kubelet have got with a pod by `now`: ("unschedulable",
        None), ("waiting", None) for claims not yet bound, or (state, scheduled) with state
        "creating", "errimagepull", "running" or "deadline" and the time it was scheduled."""
        if rec.sched is None and not rec.unschedulable:
            ns = rec.obj["metadata"]["namespace"]
            claims = [self.store["persistentvolumeclaims"].get((ns, c)) for c in rec.claims]
            # --unschedulable NS/PVC holds for that claim and for claims restored from its
            # snapshots (a volume in a zone no node of the pod's reaches).
            origins = {f"{ns}/{c}" for c in rec.claims} | {"/".join(c.origin) for c in claims if c is not None and c.managed}
            if origins & self.unschedulable:
                rec.unschedulable = True
            else:
                times = [c.bound_at if c and c.bound_at is not None else None for c in claims]
                if None not in times and max([rec.t0] + times) <= min(now, rec.t0 + SCHEDULE_WAIT):
                    rec.sched = max([rec.t0] + times)  # once scheduled, a pod stays on its node
                elif now >= rec.t0 + SCHEDULE_WAIT:
                    rec.unschedulable = True
        if rec.unschedulable:
            return "unschedulable", None
        if rec.sched is None:
            return "waiting", None
        deadline = rec.obj["spec"].get("activeDeadlineSeconds")
        if deadline is not None and now >= rec.sched + deadline:
            return "deadline", rec.sched
        if any("does-not-exist" in c.get("image", "") for c in rec.obj["spec"]["containers"]):
            return "errimagepull", rec.sched
        return ("running" if now >= rec.sched + START_DELAY else "creating"), rec.sched

    def render_pod(self, o, rec, now):
        state, sched = self.pod_phase(rec, now)
        if state == "unschedulable":
            o["status"] = {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "lastProbeTime": None,
                "lastTransitionTime": rec.wall(rec.t0), "reason": "Unschedulable", "message": UNSCHEDULABLE}],
                "qosClass": "Burstable"}
            return
        if state == "waiting":
            o["status"] = {"phase": "Pending", "qosClass": "Burstable"}
            return
        o["spec"]["nodeName"] = NODE
        started = rec.wall(sched + START_DELAY)
        running = state == "running"
        cond = lambda t, ok, at: {"type": t, "status": "True" if ok else "False", "lastProbeTime": None, "lastTransitionTime": at}
        st = {"phase": {"deadline": "Failed", "running": "Running"}.get(state, "Pending"),
              "conditions": [cond("PodReadyToStartContainers", True, rec.wall(sched)), cond("Initialized", True, rec.wall(sched)),
                             cond("Ready", running, started), cond("ContainersReady", running, started),
                             cond("PodScheduled", True, rec.wall(sched))],
              "hostIP": "192.168.1.21", "hostIPs": [{"ip": "192.168.1.21"}], "podIP": "10.42.0.77", "podIPs": [{"ip": "10.42.0.77"}],
              "startTime": rec.wall(sched), "qosClass": "Burstable", "containerStatuses": []}
        for c in o["spec"]["containers"]:
            cs = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": running, "restartCount": 0,
                  "started": running, "containerID": "containerd://" + uid(rec.obj["metadata"]["uid"], c["name"]).replace("-", "")}
            if state == "running":
                cs["state"] = {"running": {"startedAt": started}}
            elif state == "deadline":
                cs["state"] = {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": started,
                                              "finishedAt": rec.wall(sched + rec.obj["spec"]["activeDeadlineSeconds"])}}
            elif state == "errimagepull" and "does-not-exist" in c.get("image", ""):
                cs.pop("containerID")
                cs["state"] = {"waiting": {"reason": "ErrImagePull", "message": f'failed to pull and unpack image "{c.get("image", "")}": not found'}}
            else:
                cs.pop("containerID")
                cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
            st["containerStatuses"].append(cs)
        if state == "deadline":
            st["reason"] = "DeadlineExceeded"
            st["message"] = "Pod was active on the node longer than the specified deadline"
        o["status"] = st

    # Writing.

    def create(self, plural, group, version, kind, ns, body):
        api = f"{group}/{version}" if group else version
        if body.get("apiVersion", api) != api:
            return status(400, "BadRequest", f'the API version in the data ({body["apiVersion"]}) does not match the expected API version ({api})')
        if body.get("kind", kind) != kind:
            return status(400, "BadRequest", f'the kind in the data ({body["kind"]}) does not match the expected kind ({kind})')
        md = body.get("metadata")
        if not isinstance(md, dict):
            md = body["metadata"] = {}
        if md.get("namespace", ns) != ns:
            return status(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        name = md.get("name")
        if not name and md.get("generateName"):
            name = md["generateName"] + "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        if not name:
            return invalid(kind, group, "", "metadata.name", "FieldValueRequired", "Required value: name or generateName is required")
        # Validation as the API server's: it keeps bad names out (and out of DIR's paths).
        if not re.fullmatch(DNS_LABEL, ns):
            return not_found("namespaces", "", ns)
        if len(name) > 253 or not re.fullmatch(DNS_SUBDOMAIN, name):
            return invalid(kind, group, name, "metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \'-\' or \'.\', and must start and end with an alphanumeric character (e.g. \'example.com\', regex used for validation is \'{DNS_SUBDOMAIN}\')')
        for k, v in (md.get("labels") or {}).items():
            if not isinstance(v, str) or len(v) > 63 or not re.fullmatch(LABEL_VALUE, v):
                return invalid(kind, group, name, "metadata.labels", "FieldValueInvalid", f'Invalid value: "{v}": a valid label must be an empty string or consist of alphanumeric characters, \'-\', \'_\' or \'.\', and must start and end with an alphanumeric character (e.g. \'MyValue\',  or \'my_value\',  or \'12345\', regex used for validation is \'{LABEL_VALUE}\')')
        # As the server stores it: apiVersion and kind first, no status (the status
        # subresource is the controllers' to write).
        rest = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "status")}
        body = {"apiVersion": api, "kind": kind, **rest}
        spec = body.get("spec")
        if not isinstance(spec, dict):
            return invalid(kind, group, name, "spec", "FieldValueRequired", "Required value")
        with self.lock:
            if (ns, name) in self.store[plural]:
                details = {"name": name, **({"group": group} if group else {}), "kind": plural}
                return status(409, "AlreadyExists", f'{qualified(plural, group)} "{name}" already exists', details)
            self.api.rv += 1
            md.update({"name": name, "namespace": ns, "uid": str(uuid.uuid4()), "resourceVersion": str(self.api.rv),
                       "creationTimestamp": iso(time.time())})
            rec = getattr(self, "create_" + plural)(body, ns, name)
            if isinstance(rec, tuple):
                return rec
            self.store[plural][(ns, name)] = rec
            return 201, self.render(rec, time.monotonic())

    def create_persistentvolumeclaims(self, o, ns, name):
        spec = o["spec"]
        size = (spec.get("resources") or {}).get("requests", {}).get("storage")
        if quantity(size) is None:
            return invalid("PersistentVolumeClaim", "", name, "spec.resources[storage]", "FieldValueRequired", "Required value")
        if not spec.get("accessModes"):
            return invalid("PersistentVolumeClaim", "", name, "spec.accessModes", "FieldValueRequired", "Required value: at least 1 access mode is required")
        spec.setdefault("volumeMode", "Filesystem")
        block = spec["volumeMode"] == "Block"
        data = self.data_path(ns, name)
        rec = Rec(o, True, kind="pvc", fixture=False, bound_at=None, origin=(ns, name), data=data,
                  pv="pvc-" + o["metadata"]["uid"])
        src = spec.get("dataSourceRef") or spec.get("dataSource")
        if src:
            # The CSI provisioner restores a ready snapshot of at most the claim's size;
            # otherwise provisioning keeps failing and the claim stays Pending.
            snap = self.store["volumesnapshots"].get((ns, src.get("name")))
            if (src.get("kind"), src.get("apiGroup")) != ("VolumeSnapshot", "snapshot.storage.k8s.io") or snap is None \
                    or snap.ready_at is None or snap.ready_at > time.monotonic() or quantity(size) < quantity(snap.size):
                return rec
            remove(data)
            os.makedirs(os.path.dirname(data), exist_ok=True)
            clone(snap.data, data)
            rec.origin = snap.origin
        else:
            remove(data)
            os.makedirs(os.path.dirname(data), exist_ok=True)
            if block:
                with open(data, "wb") as f:
                    f.truncate(quantity(size))  # sparse: reads as zeros
            else:
                os.mkdir(data)
        rec.bound_at = rec.t0 + BIND_DELAY
        return rec

    def create_volumesnapshots(self, o, ns, name):
        spec = o["spec"]
        src = (spec.get("source") or {}).get("persistentVolumeClaimName")
        if not src:
            return invalid("VolumeSnapshot", "snapshot.storage.k8s.io", name, "spec.source.persistentVolumeClaimName", "FieldValueRequired", "Required value")
        uid_ = o["metadata"]["uid"]
        rec = Rec(o, True, kind="snap", error=None, ready_at=None, driver=None, content="snapcontent-" + uid_,
                  data=os.path.join(self.dir, "snapshots", ns, name), origin=(ns, src), size=None, source_uid="")
        now_iso = iso(rec.wall0)
        pvc = self.store["persistentvolumeclaims"].get((ns, src))
        if pvc is None or not pvc.managed:
            rec.error = {"message": f'Failed to check and update snapshot content: failed to get input parameters to create snapshot {name}: "failed to retrieve PVC {src} from the lister: \\"persistentvolumeclaim \\\\\\"{src}\\\\\\" not found\\""', "time": now_iso}
            return rec
        cls = spec.get("volumeSnapshotClassName")
        classes = self.store["volumesnapshotclasses"]
        if cls is None:
            # The snapshot controller fills in the default class of the PVC's driver.
            cls = next((n for (_, n), c in sorted(classes.items()) if c.obj["driver"] == self.driver(pvc)
                        and c.obj["metadata"].get("annotations", {}).get("snapshot.storage.kubernetes.io/is-default-class") == "true"), None)
            if cls is None:
                rec.error = {"message": "Failed to set default snapshot class with error cannot find default snapshot class", "time": now_iso}
                return rec
            spec["volumeSnapshotClassName"] = cls
        if ("", cls) not in classes:
            rec.error = {"message": f'Failed to get snapshot class with error volumesnapshotclass.snapshot.storage.k8s.io "{cls}" not found', "time": now_iso}
            return rec
        rec.driver = classes[("", cls)].obj["driver"]
        rec.size = pvc.obj["spec"]["resources"]["requests"]["storage"]
        rec.source_uid = pvc.obj["metadata"]["uid"]
        rec.origin = pvc.origin
        if pvc.bound_at is None:
            return rec  # never provisioned: nothing to snapshot, never ready
        # The point-in-time copy: later writes to the claim's data do not reach it.
        remove(rec.data)
        os.makedirs(os.path.dirname(rec.data), exist_ok=True)
        if os.path.lexists(pvc.data):
            clone(pvc.data, rec.data)
        elif pvc.obj["spec"].get("volumeMode") == "Block":
            with open(rec.data, "wb") as f:
                f.truncate(quantity(rec.size))
        else:
            os.mkdir(rec.data)
        if f"{ns}/{src}" not in self.never_ready:
            rec.ready_at = max(rec.t0, pvc.bound_at) + READY_DELAY
        return rec

    def create_pods(self, o, ns, name):
        cs = o["spec"].get("containers")
        if not isinstance(cs, list) or not cs:
            return invalid("Pod", "", name, "spec.containers", "FieldValueRequired", "Required value")
        for i, c in enumerate(cs):
            if not c.get("name") or not c.get("image"):
                return invalid("Pod", "", name, f"spec.containers[{i}].image", "FieldValueRequired", "Required value")
        claims = [v["persistentVolumeClaim"]["claimName"] for v in o["spec"].get("volumes", [])
                  if isinstance(v.get("persistentVolumeClaim"), dict)]
        o["spec"].setdefault("restartPolicy", "Always")
        return Rec(o, True, kind="pod", claims=claims, sched=None, unschedulable=False,
                   tmp=os.path.join(self.dir, "pods", ns, name))

    def delete(self, plural, group, ns, name):
        """Objects go at once (no finalizers, no grace period); the data of a created
        claim and of a snapshot goes with them (reclaim and deletion policy Delete)."""
        with self.lock:
            rec = self.store[plural].pop((ns, name), None)
            if rec is None:
                return not_found(plural, group, name)
            self.api.rv += 1
            o = self.render(rec, time.monotonic())
            if rec.managed and (rec.kind == "snap" or (rec.kind == "pvc" and not rec.fixture)):
                remove(rec.data)
            if rec.managed and rec.kind == "pod":
                remove(rec.tmp)
        return 200, o

    # Exec.

    def exec_plan(self, ns, name, query):
        flag = lambda k: query.get(k, ["false"])[-1].lower() in ("true", "1")  # absent: false, as PodExecOptions
        stdin, stdout, stderr = flag("stdin"), flag("stdout"), flag("stderr")
        argv = query.get("command", [])
        if not argv:
            return status(400, "BadRequest", "you must specify at least 1 command")
        if not (stdin or stdout or stderr):
            return status(400, "BadRequest", "you must specify at least one of stdin, stdout, stderr")
        with self.lock:
            rec = self.store["pods"].get((ns, name))
            if rec is None:
                return not_found("pods", "", name)
            now = time.monotonic()
            pod = self.render(rec, now)
            containers = pod["spec"].get("containers", [])
            cname = query.get("container", [""])[-1]
            if not cname:
                if len(containers) != 1:
                    return status(400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: [{' '.join(c['name'] for c in containers)}]")
                cname = containers[0]["name"]
            c = next((c for c in containers if c["name"] == cname), None)
            if c is None:
                return status(400, "BadRequest", f"container {cname} is not valid for pod {name}")
            if not pod["spec"].get("nodeName"):
                return status(400, "BadRequest", f"pod {name} does not have a host assigned")
            cs = next((s for s in pod.get("status", {}).get("containerStatuses", []) if s["name"] == cname), None)
            running = pod.get("status", {}).get("phase") == "Running" and (cs is None or "running" in cs.get("state", {}))
            if not running:
                return status(400, "BadRequest", f'container not found ("{cname}")')
            # The container's mounts: a claim's mount path stands for the claim's data.
            vols = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"].get("volumes", [])
                    if isinstance(v.get("persistentVolumeClaim"), dict)}
            empty = {v["name"] for v in pod["spec"].get("volumes", []) if "emptyDir" in v}
            mounts, roots, cut, tmpdir = {}, [], None, None
            for m in c.get("volumeMounts", []) + c.get("volumeDevices", []):
                at = m.get("mountPath") or m.get("devicePath")
                if m["name"] in vols:
                    claim = self.store["persistentvolumeclaims"].get((ns, vols[m["name"]]))
                    data = claim.data if claim is not None and claim.managed else self.data_path(ns, vols[m["name"]])
                    mounts[at] = data
                    roots.append(data)
                    origin = claim.origin if claim is not None and claim.managed else (ns, vols[m["name"]])
                    n = self.cuts.get("/".join(origin))
                    if n is not None:
                        cut = n if cut is None else min(cut, n)
                elif m["name"] in empty and at == "/tmp" and rec.managed:
                    # The pod's own /tmp (an emptyDir): where mktemp makes its files.
                    tmpdir = os.path.join(rec.tmp, m["name"])
                    os.makedirs(tmpdir, exist_ok=True)
        if mounts:
            # One pass, longest path first: a replacement is not replaced again.
            pat = re.compile("|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True)))
            argv = [pat.sub(lambda m: mounts[m.group(0)], a) for a in argv]
        env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e and e.get("name") != "PATH"}
        env.update({"PATH": self.bin, "HOME": "/", "HOSTNAME": name})
        if tmpdir:
            env["TMPDIR"] = tmpdir
        return ExecPlan(ns=ns, pod=name, uid=pod["metadata"].get("uid"), container=cname, argv=argv,
                        exe=self.resolve(argv[0], roots), env=env, stdin=stdin, stdout=stdout, stderr=stderr, cut=cut)

    def resolve(self, arg0, roots):
        """argv[0] as the busybox image resolves it: an applet by name or in /bin,
        /sbin, /usr/bin, /usr/sbin; else an executable on a mounted volume; else None."""
        d, base = os.path.split(arg0)
        if (not d or d in ("/bin", "/sbin", "/usr/bin", "/usr/sbin")) and base in self.applets:
            return os.path.join(self.bin, base)
        if d and any(arg0.startswith(r + "/") for r in roots) and os.path.isfile(arg0) and os.access(arg0, os.X_OK):
            return arg0
        return None

    def pod_running(self, plan):
        """Whether the exec's container still runs (not deleted, no deadline passed)."""
        with self.lock:
            rec = self.store["pods"].get((plan.ns, plan.pod))
            if rec is None or rec.obj["metadata"].get("uid") != plan.uid:
                return False
            return not rec.managed or self.pod_phase(rec, time.monotonic())[0] == "running"

    def kill_all(self):
        for p in list(self.procs):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass


# WebSocket (RFC 6455) for exec. Client frames are masked, the server's are not.
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 16 << 20
# Like the kubelet's io.Copy buffer: stdout goes out in messages of at most 32 KiB.
CHUNK = 32 * 1024 - 1
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_frame(opcode, payload):
    """A whole message in one unmasked frame, as the server sends them."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def ws_mask(data, key):
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def ws_read(f):
    """One client frame from a file: (fin, opcode, unmasked payload), None at a clean
    EOF; EOFError or ValueError when the client broke off or broke the protocol."""
    h = f.read(2)
    if not h:
        return None
    if len(h) < 2:
        raise EOFError

    def exact(n):
        b = f.read(n)
        if len(b) < n:
            raise EOFError
        return b

    fin, rsv, opcode, masked, n = h[0] & 0x80, h[0] & 0x70, h[0] & 0x0F, h[1] & 0x80, h[1] & 0x7F
    if rsv or not masked:
        raise ValueError("protocol error")
    if n == 126:
        n = struct.unpack("!H", exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exact(8))[0]
    if n > MAX_MESSAGE:
        raise ValueError("message too big")
    key = exact(4)
    return bool(fin), opcode, ws_mask(exact(n), key)


def exit_status(argv, rc):
    """The status the kubelet sends on channel 3 when the command has ended."""
    if rc == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command [{' '.join(argv)}], exit code {rc}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]}}


def internal_error(message):
    m = f"error executing command in container: {message}"
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {m}",
            "reason": "InternalError", "details": {"causes": [{"message": m}]}, "code": 500}


class ExecSession:
    """One exec after the 101: the command runs with stdin/stdout/stderr on pipes; this
    thread pumps its output to the client while a second one reads the client's frames
    (stdin, stdin's close, ping, close). Both end with the exec: nothing outlives it."""

    def __init__(self, vol, handler, plan, v5):
        self.vol, self.plan, self.v5 = vol, plan, v5
        self.sock, self.rfile = handler.connection, handler.rfile
        self.wlock = threading.Lock()
        self.stdin_lock = threading.Lock()
        self.gone = threading.Event()  # the client left, or the stream was cut
        self.close_sent = False
        self.proc = None

    def send(self, opcode, payload, wait=None):
        """Sends a message (blocking: the client's pace is the command's); with `wait`,
        gives up if the output holds the socket that long (see read_client)."""
        if not self.wlock.acquire(timeout=-1 if wait is None else wait):
            return
        try:
            if not self.gone.is_set():
                self.sock.sendall(ws_frame(opcode, payload))
        except OSError:
            self.left()
        finally:
            self.wlock.release()

    def message(self, channel, data=b""):
        self.send(OP_BINARY, bytes([channel]) + data)

    def left(self):
        """The client is gone: a command must not run on for nobody."""
        self.gone.set()
        self.kill()

    def kill(self):
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the whole group: `sh -c 'a | b'` too
            except OSError:
                pass

    def close_stdin(self):
        with self.stdin_lock:
            if self.proc and self.proc.stdin and not self.proc.stdin.closed:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass

    def run(self):
        p = self.plan
        # Like the kubelet: one empty message on the lowest server→client channel opened,
        # to tell the client the streams are up (kube-client skips 1-byte messages).
        self.message(STDOUT if p.stdout else STDERR if p.stderr else ERROR)
        if p.exe is None:
            err = f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{p.argv[0]}": executable file not found in $PATH: unknown'
            return self.finish(internal_error(err))
        pipe = lambda on: subprocess.PIPE if on else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(p.argv, executable=p.exe, stdin=pipe(p.stdin), stdout=pipe(p.stdout),
                                         stderr=pipe(p.stderr), env=p.env, cwd="/", bufsize=0,
                                         start_new_session=True, close_fds=True)
        except OSError as e:
            return self.finish(internal_error(f"OCI runtime exec failed: exec failed: {e}: unknown"))
        self.vol.procs.add(self.proc)
        reader = threading.Thread(target=self.read_client, name="exec-client", daemon=True)
        reader.start()
        cut = True  # if the pump fails, the client sees the connection end, as on a cut
        try:
            cut = self.pump()
            rc = self.proc.wait()
        finally:
            self.kill()
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # what the command left in the background
            except OSError:
                pass
            self.proc.wait()
            for f in (self.proc.stdout, self.proc.stderr):
                if f:
                    f.close()
            self.vol.procs.discard(self.proc)
            if cut:
                self.cut()
                reader.join()
        if not cut:
            # A command killed by a signal ends like a container's: 128 + the signal.
            self.finish(exit_status(p.argv, rc if rc >= 0 else 128 - rc), reader)

    def pump(self):
        """The command's output to the client until both pipes are at EOF and the command
        has exited, the client has gone, or the stream is cut (returns True then)."""
        p, proc = self.plan, self.proc
        fds = {f.fileno(): ch for f, ch in ((proc.stdout, STDOUT), (proc.stderr, STDERR)) if f}
        sent, checked = 0, time.monotonic()
        while (fds or proc.poll() is None) and not self.gone.is_set():
            ready = select.select(list(fds), [], [], 0.2)[0] if fds else (time.sleep(0.05) or [])
            if time.monotonic() - checked >= 0.2:
                checked = time.monotonic()
                if not self.vol.pod_running(p):
                    self.kill()  # pod deleted or past its deadline: the container is killed
            for fd in ready:
                data = os.read(fd, CHUNK)
                if not data:
                    del fds[fd]
                    continue
                if fds[fd] == STDOUT and p.cut is not None and sent + len(data) > p.cut:
                    if p.cut > sent:
                        self.message(STDOUT, data[:p.cut - sent])
                    self.cut()
                    return True
                sent += len(data) if fds[fd] == STDOUT else 0
                self.message(fds[fd], data)
        return False

    def cut(self):
        """--cut-stream: the TCP connection just ends, as when a node or proxy dies."""
        with self.wlock:
            self.gone.set()
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.kill()

    def finish(self, st, reader=None):
        self.message(ERROR, json.dumps(st, separators=(",", ":")).encode())
        self.close_sent = True
        self.send(OP_CLOSE, struct.pack("!H", 1000))
        if reader is not None:
            reader.join(2)  # the client's answering close frame
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if reader is not None:
            reader.join()

    def read_client(self):
        op, parts = None, []
        try:
            while True:
                fr = ws_read(self.rfile)
                if fr is None:
                    break
                fin, opcode, payload = fr
                if opcode == OP_PING:
                    # Not at any price: were the output blocked on a client that is itself
                    # blocked sending stdin, waiting here would stop reading that stdin.
                    self.send(OP_PONG, payload, wait=1)
                elif opcode == OP_CLOSE:
                    # The v4 client's way to end stdin; the output still goes on.
                    self.close_stdin()
                    if self.close_sent:
                        return
                elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                    if opcode != OP_CONT:
                        op, parts = opcode, []
                    parts.append(payload)
                    if fin:
                        self.on_message(op, b"".join(parts))
        except (OSError, EOFError, ValueError):
            pass
        if not self.close_sent:
            self.left()
        self.close_stdin()

    def on_message(self, op, msg):
        if op != OP_BINARY or not msg:
            return  # text frames are for the base64 protocols, not offered here
        if msg[0] == STDIN and self.plan.stdin:
            with self.stdin_lock:
                if self.proc.stdin.closed:
                    return
                try:
                    view = memoryview(msg)[1:]
                    while view:
                        view = view[self.proc.stdin.write(view):]
                except OSError:  # the command closed its stdin: the rest is dropped
                    self.proc.stdin.close()
        elif msg[0] == CLOSE and self.v5 and msg[1:] == bytes([STDIN]):
            self.close_stdin()
        # RESIZE (a tty's size) and anything else: nothing to do without a tty.


class Api:
    def __init__(self, args):
        self.args = args
        self.objs = build(args)
        self.resources = RESOURCES + (VOLUME_RESOURCES if args.volumes else [])
        self.rv = 424242
        self.expired = set()
        self.lock = threading.Lock()
        self.vol = Volumes(self, args) if args.volumes else None

    def discovery(self, path):
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}
        if path == "/apis":
            groups = sorted({r[0] for r in self.resources if r[0]}) + [AGGREGATED[0]]
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
        rs = [r for r in self.resources if r[0] == group and r[1] == version]
        if not rs:
            return status(404, "NotFound", "the server could not find the requested resource")
        res = []
        for g, v, plural, kind, namespaced in rs:
            res.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": VERBS})
            if plural == "pods":
                res.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]})
                if self.vol:
                    res.append({"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions", "verbs": ["create", "get"]})
        gv = f"{group}/{version}" if group else version
        return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res}

    def list(self, path, query):
        """The cluster-wide list at `path` (None if `path` is no list path)."""
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 3:
            group, version, plural = "", parts[1], parts[2]
        elif parts[0] == "apis" and len(parts) == 4:
            group, version, plural = parts[1], parts[2], parts[3]
        else:
            return None
        r = [x for x in self.resources if x[0] == group and x[1] == version and x[2] == plural]
        if not r:
            return status(404, "NotFound", "the server could not find the requested resource")
        qualified = plural + ("." + group if group else "")
        if qualified in self.args.forbid:
            return status(403, "Forbidden", f'{plural}.{group or ""} is forbidden: User "system:serviceaccount:backuphub:backuphub" cannot list resource "{plural}" in API group "{group}" at the cluster scope', {"group": group, "kind": plural})
        return self.page(group, version, plural, r[0][3], query, self.objs[plural])

    def page(self, group, version, plural, kind, query, items):
        """One page of `items` ((namespace, name, object) in list order) as a List."""
        qualified = plural + ("." + group if group else "")
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
            items = [i for i in items if selects(selector, i[2]["metadata"].get("labels") or {})]
        end = len(items) if limit <= 0 else min(len(items), start + limit)
        page = [i[2] for i in items[start:end]]
        lm = {"resourceVersion": str(self.rv)}
        if end < len(items):
            lm["continue"] = base64.b64encode(json.dumps({"v": "meta.k8s.io/v1", "rv": self.rv, "start": end}).encode()).decode()
            lm["remainingItemCount"] = len(items) - end
        api = f"{group}/{version}" if group else version
        # Items of a list carry no apiVersion/kind of their own in some servers' output.
        return 200, {"kind": kind + "List", "apiVersion": api, "metadata": lm, "items": page}

    def route(self, path):
        """A resource path with --volumes: (resource tuple, namespace, name, subresource),
        or None when no resource is there."""
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        ns = None
        # /namespaces/NS/PLURAL...; /namespaces/NAME alone is a Namespace object.
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if len(rest) > 3 or "" in rest:
            return None
        r = [x for x in self.resources if x[0] == group and x[1] == version and x[2] == rest[0]]
        if not r or (ns is not None and not r[0][4]):
            return None
        return r[0], ns, (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)

    def request(self, method, path, query, raw):
        """A request with --volumes: (code, body), or an ExecPlan to upgrade to."""
        if method == "GET":
            d = self.discovery(path)
            if d:
                return d
        rt = self.route(path)
        if rt is None:
            return status(404, "NotFound", "the server could not find the requested resource")
        (group, version, plural, kind, namespaced), ns, name, sub = rt
        verb = {"GET": "list" if name is None else "get", "POST": "create", "DELETE": "delete"}.get(method)
        if sub is not None:
            if (plural, sub) != ("pods", "exec") or method not in ("GET", "POST"):
                return status(404, "NotFound", "the server could not find the requested resource")
            if "pods/exec" in self.args.forbid:
                return forbidden("create", plural, group, ns, name, sub)
            return self.vol.exec_plan(ns, name, query)
        if verb is None or (method == "POST" and (name is not None or plural not in CREATABLE)) \
                or (method == "DELETE" and (name is None or plural not in CREATABLE)):
            return status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if plural + ("." + group if group else "") in self.args.forbid:
            return forbidden(verb, plural, group, ns, name)
        if verb == "list":
            return self.page(group, version, plural, kind, query, self.vol.items(plural, ns))
        if verb == "get":
            o = self.vol.get(plural, ns, name)
            return (200, o) if o else not_found(plural, group, name)
        if verb == "delete":
            return self.vol.delete(plural, group, ns, name)
        try:
            body = json.loads(raw or b"null")
        except ValueError as e:
            return status(400, "BadRequest", f"the object provided is unrecognized: {e}")
        if not isinstance(body, dict):
            return status(400, "BadRequest", "the object provided is unrecognized")
        return self.vol.create(plural, group, version, kind, ns, body)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--token", required=True)
    p.add_argument("--namespaces", type=int, default=3)
    p.add_argument("--configmaps", type=int, default=5)
    p.add_argument("--expire-once", action="append", default=[])
    p.add_argument("--forbid", action="append", default=[])
    p.add_argument("--log")
    p.add_argument("--volumes", metavar="DIR")
    p.add_argument("--never-ready", action="append", default=[], metavar="NS/PVC")
    p.add_argument("--unschedulable", action="append", default=[], metavar="NS/PVC")
    p.add_argument("--cut-stream", action="append", default=[], metavar="NS/PVC:BYTES")
    args = p.parse_args()
    if not args.volumes and (args.never_ready or args.unschedulable or args.cut_stream):
        p.error("--never-ready, --unschedulable and --cut-stream need --volumes")
    api = Api(args)
    log = open(args.log, "a", buffering=1) if args.log else None
    log_lock = threading.Lock()

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
            if api.vol:
                return self.volume_request("GET")
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

        # With --volumes only: without it a POST gets http.server's 501, as before.
        def do_POST(self):
            self.volume_request("POST") if api.vol else self.send_error(501, "Unsupported method ('POST')")

        def do_DELETE(self):
            self.volume_request("DELETE") if api.vol else self.send_error(501, "Unsupported method ('DELETE')")

        def do_PUT(self):
            self.volume_request("PUT") if api.vol else self.send_error(501, "Unsupported method ('PUT')")

        def do_PATCH(self):
            self.volume_request("PATCH") if api.vol else self.send_error(501, "Unsupported method ('PATCH')")

        def log_line(self, method, code):
            if log:
                with log_lock:
                    log.write(f"{method} {self.path} {code}\n")

        def volume_request(self, method):
            u = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Authorization") != f"Bearer {args.token}":
                code, body = status(401, "Unauthorized", "Unauthorized")
            else:
                try:
                    r = api.request(method, u.path, parse_qs(u.query, keep_blank_values=True), raw)
                    if isinstance(r, ExecPlan):
                        r = self.upgrade(r)
                        if r is None:
                            return
                    code, body = r
                except Exception as e:  # a bug of the fake: said, not hidden
                    traceback.print_exc()
                    code, body = status(500, "InternalError", f"Internal error occurred: {e!r}")
            self.log_line(method, code)
            self.send(code, body)

        def upgrade(self, plan):
            """The WebSocket handshake, then the exec on the upgraded connection (None),
            or the error that a non-upgrade request gets."""
            h = self.headers
            if "upgrade" not in h.get("Connection", "").lower() or h.get("Upgrade", "").lower() != "websocket" \
                    or not h.get("Sec-WebSocket-Key"):
                return status(400, "BadRequest", "Upgrade request required")
            if h.get("Sec-WebSocket-Version") != "13":
                return status(400, "BadRequest", "unsupported websocket version")
            # kube sends one comma-separated header; other clients one header per protocol.
            offered = [p.strip() for v in h.get_all("Sec-WebSocket-Protocol", []) for p in v.split(",")]
            proto = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io") if p in offered), None)
            if proto is None:
                return status(400, "BadRequest", f"unable to upgrade: unsupported subprotocol(s): {offered}")
            self.send_response(101, "Switching Protocols")
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", ws_accept(h["Sec-WebSocket-Key"]))
            self.send_header("Sec-WebSocket-Protocol", proto)
            self.end_headers()
            self.log_line(self.command, 101)
            self.close_connection = True  # the connection is the WebSocket's now
            try:
                ExecSession(api.vol, self, plan, proto.startswith("v5")).run()
            except Exception:  # a bug of the fake: said; the client sees the connection end
                traceback.print_exc()
            return None

    if api.vol:
        # Stopped (SIGTERM, ^C): the commands of execs under way go with the server.
        def stop(*_):
            api.vol.kill_all()
            os._exit(0)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
