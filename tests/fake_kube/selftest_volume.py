#!/usr/bin/env python3
"""Self-test of the fake API server's --volumes mode (stdlib only).

Starts tests/fake_kube/server.py as a subprocess on a temporary fixture and drives it
over real HTTP, and over a WebSocket client written here (handshake, masked and
fragmented client frames, ping, close), the way kube-client 5.0 does: snapshot →
ready → PVC from it → pod Running → exec. It also checks that without --volumes the
server answers byte for byte as the committed version (git HEAD) does.

Usage: python3 tests/fake_kube/selftest_volume.py   (exit 0: every check passed)
"""
import base64, hashlib, http.client, json, os, socket, struct, subprocess, sys, tempfile, threading, time
from urllib.parse import urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "server.py")
TOKEN = "selftest-token"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SNAP = "/apis/snapshot.storage.k8s.io/v1"
FORBID_MSG = ('volumesnapshots.snapshot.storage.k8s.io is forbidden: User "system:serviceaccount:backuphub:backuphub" '
              'cannot create resource "volumesnapshots" in API group "snapshot.storage.k8s.io" in the namespace "immich"')

FIXTURE = {
    "storageClasses": [{"name": "ceph-filesystem", "provisioner": "rook-ceph.cephfs.csi.ceph.com"},
                       {"name": "ceph-block", "provisioner": "rook-ceph.rbd.csi.ceph.com"}],
    "snapshotClasses": [{"name": "csi-cephfsplugin-snapclass", "driver": "rook-ceph.cephfs.csi.ceph.com", "default": True},
                        {"name": "csi-rbdplugin-snapclass", "driver": "rook-ceph.rbd.csi.ceph.com", "default": True}],
    "pvcs": [{"namespace": "immich", "name": "library", "volumeMode": "Filesystem", "storageClassName": "ceph-filesystem",
              "accessModes": ["ReadWriteMany"], "size": "10Gi", "labels": {"backup": "yes"}},
             {"namespace": "database", "name": "data-postgresql-0", "volumeMode": "Block", "storageClassName": "ceph-block",
              "accessModes": ["ReadWriteOnce"], "size": "64Mi"},
             # For the faults: flagged on the command line.
             {"namespace": "immich", "name": "stuck", "volumeMode": "Filesystem", "storageClassName": "ceph-filesystem",
              "accessModes": ["ReadWriteMany"], "size": "1Gi"},
             {"namespace": "immich", "name": "faraway", "volumeMode": "Filesystem", "storageClassName": "ceph-filesystem",
              "accessModes": ["ReadWriteMany"], "size": "1Gi"},
             {"namespace": "immich", "name": "flaky", "volumeMode": "Filesystem", "storageClassName": "ceph-filesystem",
              "accessModes": ["ReadWriteMany"], "size": "1Gi"}]}

checks = 0


def check(cond, what, *detail):
    global checks
    checks += 1
    if not cond:
        print(f"FAIL: {what}", *detail, file=sys.stderr, flush=True)
        sys.exit(1)


def eventually(fn, what, timeout=5.0):
    """Polls fn() until it returns something true; fails with `what` at the timeout."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            check(False, f"{what} (within {timeout}s)", v)
        time.sleep(0.05)


class Server:
    def __init__(self, *args, script=SERVER, log=None):
        cmd = [sys.executable, script, "--token", TOKEN] + (["--log", log] if log else []) + list(args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(5)

    def raw(self, method, path, body=None, token=TOKEN):
        """(status, raw body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        out = r.status, r.read()
        c.close()
        return out

    def call(self, method, path, body=None, token=TOKEN):
        code, data = self.raw(method, path, body, token)
        return code, (json.loads(data) if data else None)

    def get(self, path):
        return self.call("GET", path)

    def ok(self, method, path, body=None, code=200):
        c, o = self.call(method, path, body)
        check(c == code, f"{method} {path} answers {code}", c, o)
        return o


# A WebSocket client (RFC 6455): the handshake and framing kube-client's tungstenite does.

def frame(opcode, payload, fin=True):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class WS:
    def __init__(self, port, path, protocols="v5.channel.k8s.io, v4.channel.k8s.io"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f = self.sock.makefile("rb")
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n")
        self.sock.sendall(req.encode())
        status = self.f.readline().decode()
        self.code = int(status.split()[1])
        self.headers = {}
        while (line := self.f.readline().decode().rstrip("\r\n")):
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.error = None
        if self.code != 101:
            self.error = json.loads(self.f.read(int(self.headers.get("content-length", 0))))
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        check(self.headers.get("sec-websocket-accept") == accept, "Sec-WebSocket-Accept is right", self.headers)
        check(self.headers.get("upgrade", "").lower() == "websocket" and self.headers.get("connection", "").lower() == "upgrade",
              "101 names the upgrade", self.headers)
        self.protocol = self.headers.get("sec-websocket-protocol")
        self.wlock = threading.Lock()

    def send(self, opcode, payload, fin=True):
        with self.wlock:
            self.sock.sendall(frame(opcode, payload, fin))

    def read(self):
        """One frame: (fin, opcode, payload); None at EOF."""
        h = self.f.read(2)
        if len(h) < 2:
            return None
        if h[1] & 0x80:
            check(False, "server frames are not masked")
        n = h[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.f.read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.f.read(8))[0]
        data = self.f.read(n)
        if len(data) < n:
            return None
        return bool(h[0] & 0x80), h[0] & 0x0F, data


def exec_(srv, ns, pod, argv, stdin=None, container=None, protocols="v5.channel.k8s.io, v4.channel.k8s.io",
          fragment=False, ping=False, keep_stdin_open=False, on_open=None):
    """An exec as kube-client does it; returns what came back, by channel."""
    q = [("stdout", "true"), ("stderr", "true")]
    if container:
        q.append(("container", container))
    if stdin is not None:
        q.append(("stdin", "true"))
    q += [("command", a) for a in argv]
    path = f"/api/v1/namespaces/{ns}/pods/{pod}/exec?&" + urlencode(q)
    ws = WS(srv.port, path, protocols)
    if ws.code != 101:
        return {"code": ws.code, "error": ws.error}
    r = {"code": 101, "protocol": ws.protocol, "stdout": b"", "stderr": b"", "status": None, "close": None,
         "messages": [], "pongs": [], "eof_without_close": False, "ws": ws}
    if on_open:
        on_open(ws)

    def feed():
        data = stdin
        if fragment and len(data) > 2:
            # One message in three frames, with a ping between them (control frames may
            # come amid a fragmented message).
            a, b = len(data) // 3, 2 * len(data) // 3
            ws.send(0x2, b"\x00" + data[:a], fin=False)
            if ping:
                ws.send(0x9, b"are you there")
            ws.send(0x0, data[a:b], fin=False)
            ws.send(0x0, data[b:], fin=True)
        else:
            for i in range(0, len(data), 10000):
                ws.send(0x2, b"\x00" + data[i:i + 10000])
        if keep_stdin_open:
            return
        if ws.protocol == "v5.channel.k8s.io":
            ws.send(0x2, bytes([255, 0]))  # v5: stdin is closed
        else:
            ws.send(0x8, struct.pack("!H", 1000))  # v4: the client's close frame is its EOF

    t = None
    if stdin is not None:
        t = threading.Thread(target=feed, daemon=True)
        t.start()
    while True:
        fr = ws.read()
        if fr is None:
            r["eof_without_close"] = True
            break
        fin, op, data = fr
        if not fin:
            check(False, "the server sends unfragmented messages")
        if op == 0x8:
            r["close"] = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            try:
                ws.send(0x8, data[:2])
            except OSError:
                pass
            break
        if op == 0xA:
            r["pongs"].append(data)
            continue
        if op != 0x2:
            check(False, "exec messages are binary", op)
        r["messages"].append((data[0], len(data)))
        ch, payload = data[0], data[1:]
        if ch == 1:
            r["stdout"] += payload
        elif ch == 2:
            r["stderr"] += payload
        elif ch == 3:
            r["status"] = json.loads(payload)
    if t:
        t.join(5)
    ws.sock.close()
    return r


def pvc_body(name, size="1Gi", block=False, snapshot=None, labels=None, sc="ceph-filesystem"):
    spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}},
            "volumeMode": "Block" if block else "Filesystem", "storageClassName": sc}
    if snapshot:
        spec["dataSource"] = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, **({"labels": labels} if labels else {})}, "spec": spec}


def pod_body(name, claim, block=False, image="busybox:1.37", deadline=None, labels=None):
    c = {"name": "reader", "image": image, "command": ["sleep", "86400"],
         "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}
    if block:
        c["volumeDevices"] = [{"name": "volume", "devicePath": "/dev/backuphub-volume"}]
    else:
        c["volumeMounts"].append({"name": "volume", "mountPath": "/backuphub/volume", "readOnly": True})
    spec = {"restartPolicy": "Never", "containers": [c],
            "volumes": [{"name": "volume", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}]}
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **({"labels": labels} if labels else {})}, "spec": spec}


def snap_body(name, pvc, cls=None):
    spec = {"source": {"persistentVolumeClaimName": pvc}}
    if cls:
        spec["volumeSnapshotClassName"] = cls
    return {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": name}, "spec": spec}


def phase(srv, ns, pod):
    return srv.get(f"/api/v1/namespaces/{ns}/pods/{pod}")[1].get("status", {})


def ready_snapshot(srv, ns, name, pvc):
    srv.ok("POST", f"{SNAP}/namespaces/{ns}/volumesnapshots", snap_body(name, pvc), 201)
    return eventually(lambda: srv.get(f"{SNAP}/namespaces/{ns}/volumesnapshots/{name}")[1]["status"].get("readyToUse"),
                      f"snapshot {name} becomes ready")


def running_pod(srv, ns, name, claim, **kw):
    srv.ok("POST", f"/api/v1/namespaces/{ns}/pods", pod_body(name, claim, **kw), 201)
    eventually(lambda: phase(srv, ns, name).get("phase") == "Running", f"pod {name} runs")


# The checks.

def baseline():
    """The newest committed server.py from before --volumes (HEAD's, until this lands)."""
    git = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True).stdout
    for commit in git("log", "--format=%H", "--", "server.py").decode().split():
        src = git("show", f"{commit}:./server.py")
        if src and b"--volumes" not in src:
            return src
    return None


def unchanged_without_volumes(tmp):
    """Without --volumes: the same bytes as the server before --volumes, request for
    request (and the same request log)."""
    src = baseline()
    if src is None:
        print("selftest_volume: no committed server.py without --volumes (no git history?): comparison skipped")
        return
    head = os.path.join(tmp, "server_before.py")
    with open(head, "wb") as f:
        f.write(src)
    args = ["--namespaces", "2", "--configmaps", "3", "--expire-once", "configmaps", "--forbid", "roles.rbac.authorization.k8s.io"]
    logs = [os.path.join(tmp, "old.log"), os.path.join(tmp, "new.log")]
    old, new = Server(*args, script=head, log=logs[0]), Server(*args, log=logs[1])
    try:
        paths = ["/api", "/api/v1", "/apis", "/apis/nothing/v1", "/apis/metrics.k8s.io/v1beta1", "/nothing",
                 "/api/v1/configmaps?labelSelector=x%3Dy", "/api/v1/namespaces/shop/configmaps",
                 "/api/v1/namespaces/shop/pods/web-5d9c-x1", "/api/v1/namespaces/shop/pods/standalone/exec?command=ls"]
        groups = json.loads(old.raw("GET", "/apis")[1])["groups"]
        new.raw("GET", "/apis")  # the same requests to both: their logs are compared
        paths += [f"/apis/{g['preferredVersion']['groupVersion']}" for g in groups]
        for p in list(paths):
            code, body = old.raw("GET", p)
            new.raw("GET", p)
            if code == 200 and b"APIResourceList" in body:
                gv = json.loads(body)["groupVersion"]
                base = "/api/" + gv if "/" not in gv else "/apis/" + gv
                for r in json.loads(body)["resources"]:
                    if "/" not in r["name"]:
                        paths.append(f"{base}/{r['name']}?limit=2")
        seen = set()
        while paths:
            p = paths.pop(0)
            a, b = old.raw("GET", p), new.raw("GET", p)
            check(a == b, f"GET {p} answers as before without --volumes", a, b)
            if a[0] == 200 and p not in seen:
                seen.add(p)
                cont = json.loads(a[1]).get("metadata", {}).get("continue")
                if cont:
                    paths.append(p.split("?")[0] + "?" + urlencode({"limit": 2, "continue": cont}))
        for m in ("POST", "DELETE", "PUT"):
            a, b = old.raw(m, "/api/v1/namespaces/shop/pods", {}), new.raw(m, "/api/v1/namespaces/shop/pods", {})
            check(a == b, f"{m} answers as before without --volumes", a, b)
        a, b = old.raw("GET", "/api/v1", token="wrong"), new.raw("GET", "/api/v1", token="wrong")
        check(a == b and a[0] == 401, "401 as before", a, b)
    finally:
        old.stop()
        new.stop()
    check(open(logs[0]).read() == open(logs[1]).read(), "the request log is as before")


def discovery(srv, plain):
    names = lambda s: [g["name"] for g in s.get("/apis")[1]["groups"]]
    check("snapshot.storage.k8s.io" in names(srv) and "storage.k8s.io" in names(srv), "--volumes: /apis has the new groups", names(srv))
    check("snapshot.storage.k8s.io" not in names(plain) and "storage.k8s.io" not in names(plain), "without --volumes: no new groups")
    res = {r["name"]: r for r in srv.get("/api/v1")[1]["resources"]}
    check(res.get("pods/exec", {}).get("verbs") == ["create", "get"], "--volumes: pods/exec in /api/v1", res.get("pods/exec"))
    check("pods/exec" not in [r["name"] for r in plain.get("/api/v1")[1]["resources"]], "without --volumes: no pods/exec")
    snap = {r["name"]: r["namespaced"] for r in srv.get(SNAP)[1]["resources"]}
    check(snap == {"volumesnapshots": True, "volumesnapshotclasses": False, "volumesnapshotcontents": False}, "snapshot group resources", snap)
    sto = {r["name"]: r["namespaced"] for r in srv.get("/apis/storage.k8s.io/v1")[1]["resources"]}
    check(sto == {"storageclasses": False}, "storage group resources", sto)
    check(plain.get(SNAP)[0] == 404, "without --volumes the snapshot group is not served")


def objects(srv, d):
    classes = srv.get(f"{SNAP}/volumesnapshotclasses")[1]["items"]
    check([(c["metadata"]["name"], c["driver"], c["metadata"]["annotations"]["snapshot.storage.kubernetes.io/is-default-class"])
           for c in classes] == [("csi-cephfsplugin-snapclass", "rook-ceph.cephfs.csi.ceph.com", "true"),
                                 ("csi-rbdplugin-snapclass", "rook-ceph.rbd.csi.ceph.com", "true")], "snapshot classes", classes)
    sc = srv.ok("GET", "/apis/storage.k8s.io/v1/storageclasses/ceph-block")
    check(sc["provisioner"] == "rook-ceph.rbd.csi.ceph.com" and sc["kind"] == "StorageClass", "storage class", sc)
    srv.ok("GET", f"{SNAP}/volumesnapshotclasses/csi-rbdplugin-snapclass")
    pvc = srv.ok("GET", "/api/v1/namespaces/immich/persistentvolumeclaims/library")
    check(pvc["status"]["phase"] == "Bound" and pvc["spec"]["volumeName"].startswith("pvc-"), "a fixture PVC is bound", pvc)
    pv = srv.ok("GET", f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
    check(pv["spec"]["csi"]["driver"] == "rook-ceph.cephfs.csi.ceph.com" and pv["spec"]["claimRef"]["name"] == "library", "its PV", pv)
    pvs = [p["metadata"]["name"] for p in srv.get("/api/v1/persistentvolumes")[1]["items"]]
    check(pv["metadata"]["name"] in pvs and "pvc-123" in pvs, "PV list has the fixture's and the old PVs", pvs)
    all_pvcs = [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in srv.get("/api/v1/persistentvolumeclaims")[1]["items"]]
    check(("immich", "library") in all_pvcs and ("database", "data-postgresql-0") in all_pvcs and ("shop", "data") in all_pvcs,
          "the cluster-wide PVC list has the fixture's and the old PVCs", all_pvcs)
    check(all_pvcs == sorted(all_pvcs, key=lambda t: t[0] + "/" + t[1]), "lists are in etcd order")
    ns = [p["metadata"]["name"] for p in srv.get("/api/v1/namespaces/database/persistentvolumeclaims")[1]["items"]]
    check(ns == ["data-postgresql-0"], "a namespace's PVC list", ns)
    page = srv.get("/api/v1/persistentvolumeclaims?limit=2")[1]
    check(len(page["items"]) == 2 and page["metadata"].get("continue"), "lists page as before", page["metadata"])
    code, st = srv.get("/api/v1/namespaces/immich/persistentvolumeclaims/nope")
    check(code == 404 and st["reason"] == "NotFound" and st["message"] == 'persistentvolumeclaims "nope" not found'
          and st["details"] == {"name": "nope", "kind": "persistentvolumeclaims"}, "404 NotFound Status", st)
    code, st = srv.get(f"{SNAP}/namespaces/immich/volumesnapshots/nope")
    check(code == 404 and st["message"] == 'volumesnapshots.snapshot.storage.k8s.io "nope" not found', "404 in a group", st)
    for p in ["/api/v1/namespaces/immich/pods/nope", "/apis/storage.k8s.io/v1/storageclasses/nope",
              f"{SNAP}/volumesnapshotclasses/nope", "/api/v1/persistentvolumes/nope", "/api/v1/nothing/x"]:
        check(srv.get(p)[0] == 404, f"404 for {p}")
    code, st = srv.call("PUT", "/api/v1/namespaces/immich/persistentvolumeclaims/library", {})
    check(code == 405 and st["reason"] == "MethodNotAllowed", "405 MethodNotAllowed", code, st)
    check(srv.call("POST", "/apis/storage.k8s.io/v1/storageclasses", {})[0] == 405, "405 creating what is not creatable")
    check(srv.call("GET", "/api/v1/persistentvolumeclaims", token="x")[0] == 401, "401 with a wrong token")

    # Label selectors: `k=v` terms and bare `k`, all of which must hold.
    for name, labels in [("sel-both", {"a": "b", "c": "1"}), ("sel-a", {"a": "b"}), ("sel-c", {"a": "x", "c": "2"})]:
        srv.ok("POST", "/api/v1/namespaces/immich/persistentvolumeclaims", pvc_body(name, labels=labels), 201)
    sel = lambda s: [p["metadata"]["name"] for p in srv.get(f"/api/v1/persistentvolumeclaims?labelSelector={s}")[1]["items"]]
    check(sel("a%3Db%2Cc") == ["sel-both"], "selector a=b,c", sel("a%3Db%2Cc"))
    check(sel("a%3Db") == ["sel-a", "sel-both"], "selector a=b", sel("a%3Db"))
    check(sel("c") == ["sel-both", "sel-c"], "selector c", sel("c"))
    check(sel("backup%3Dyes") == ["library"], "selector on a fixture label", sel("backup%3Dyes"))
    check(sel("a!%3Db,c") == ["sel-c"], "selector a!=b,c", sel("a!%3Db,c"))

    # Create: 201 with what the server adds; 409 when there; 422 without a name.
    o = srv.ok("POST", "/api/v1/namespaces/immich/persistentvolumeclaims", pvc_body("fresh", size="64Mi"), 201)
    m = o["metadata"]
    check(m["namespace"] == "immich" and m["uid"] and m["resourceVersion"] and m["creationTimestamp"].endswith("Z")
          and o["status"]["phase"] == "Pending", "a created PVC", o)
    eventually(lambda: srv.get("/api/v1/namespaces/immich/persistentvolumeclaims/fresh")[1]["status"]["phase"] == "Bound",
               "a new PVC is bound", 2)
    check(os.path.isdir(f"{d}/data/immich/fresh") and os.listdir(f"{d}/data/immich/fresh") == [], "its data is an empty directory")
    code, st = srv.call("POST", "/api/v1/namespaces/immich/persistentvolumeclaims", pvc_body("fresh"))
    check(code == 409 and st["reason"] == "AlreadyExists" and st["message"] == 'persistentvolumeclaims "fresh" already exists', "409", st)
    nameless = pvc_body("x")
    del nameless["metadata"]["name"]
    code, st = srv.call("POST", "/api/v1/namespaces/immich/persistentvolumeclaims", nameless)
    check(code == 422 and st["reason"] == "Invalid" and "metadata.name" in st["message"], "422 Invalid without a name", st)
    blk = srv.ok("POST", "/api/v1/namespaces/immich/persistentvolumeclaims", pvc_body("blank", size="3Mi", block=True, sc="ceph-block"), 201)
    check(os.path.getsize(f"{d}/data/immich/blank") == 3 * 2**20 and os.stat(f"{d}/data/immich/blank").st_blocks == 0,
          "a new Block PVC is a sparse zero file of its size", blk)

    # Delete: 200 with the object, then 404; a created PVC's data goes with it.
    o = srv.ok("DELETE", "/api/v1/namespaces/immich/persistentvolumeclaims/fresh")
    check(o["metadata"]["name"] == "fresh" and o["kind"] == "PersistentVolumeClaim", "DELETE returns the object", o)
    check(srv.get("/api/v1/namespaces/immich/persistentvolumeclaims/fresh")[0] == 404, "DELETE then GET: 404")
    check(not os.path.exists(f"{d}/data/immich/fresh"), "a deleted PVC's data is gone")
    code, st = srv.call("DELETE", "/api/v1/namespaces/immich/persistentvolumeclaims/fresh")
    check(code == 404 and st["reason"] == "NotFound", "DELETE of what is gone: 404", st)


def snapshot_restore_exec(srv, d):
    lib = f"{d}/data/immich/library"
    o = srv.ok("POST", f"{SNAP}/namespaces/immich/volumesnapshots", snap_body("snap-1", "library"), 201)
    check(o["status"] == {"readyToUse": False}, "a new snapshot is not ready", o)
    check(o["spec"]["volumeSnapshotClassName"] == "csi-cephfsplugin-snapclass", "the default class of the driver is filled in", o)
    # Changed after the snapshot: the snapshot must keep the old state.
    with open(f"{lib}/a.txt", "w") as f:
        f.write("NEW content\n")
    os.mkdir(f"{lib}/after")
    s = eventually(lambda: (lambda o: o if o["status"].get("readyToUse") else None)(
        srv.get(f"{SNAP}/namespaces/immich/volumesnapshots/snap-1")[1]), "the snapshot becomes ready", 2)
    st = s["status"]
    check(st["restoreSize"] == "10Gi" and st["boundVolumeSnapshotContentName"] == "snapcontent-" + s["metadata"]["uid"]
          and st["creationTime"].endswith("Z"), "a ready snapshot's status", st)
    check(os.stat(f"{d}/snapshots/immich/snap-1/sub/b").st_mtime == os.stat(f"{lib}/sub/b").st_mtime, "the copy keeps mtimes")
    check(os.readlink(f"{d}/snapshots/immich/snap-1/link") == "a.txt", "the copy keeps symlinks")
    check(os.path.samefile(f"{d}/snapshots/immich/snap-1/hard1", f"{d}/snapshots/immich/snap-1/sub/hard2"), "and hard links")
    snaps = [x["metadata"]["name"] for x in srv.get(f"{SNAP}/volumesnapshots")[1]["items"]]
    check(snaps == ["snap-1"], "cluster-wide snapshot list", snaps)
    check(srv.get(f"{SNAP}/namespaces/database/volumesnapshots")[1]["items"] == [], "another namespace's snapshot list")
    content = srv.get(f"{SNAP}/volumesnapshotcontents")[1]["items"]
    check([c["metadata"]["name"] for c in content] == [st["boundVolumeSnapshotContentName"]], "its content", content)

    o = srv.ok("POST", "/api/v1/namespaces/immich/persistentvolumeclaims", pvc_body("restore-1", size="10Gi", snapshot="snap-1"), 201)
    check(o["status"]["phase"] == "Pending", "a restored PVC starts Pending", o)
    pvc = eventually(lambda: (lambda o: o if o["status"]["phase"] == "Bound" else None)(
        srv.get("/api/v1/namespaces/immich/persistentvolumeclaims/restore-1")[1]), "the restored PVC is bound", 2)
    pv = srv.ok("GET", f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
    check(pv["spec"]["csi"]["driver"] == "rook-ceph.cephfs.csi.ceph.com" and pv["spec"]["claimRef"]["uid"] == pvc["metadata"]["uid"],
          "the restored PVC's PV", pv)

    o = srv.ok("POST", "/api/v1/namespaces/immich/pods", pod_body("reader-1", "restore-1", labels={"app": "reader"}), 201)
    check(o["status"]["phase"] == "Pending", "a new pod is Pending", o)
    code, st = srv.call("GET", "/api/v1/namespaces/immich/pods/reader-1/exec?command=ls&stdout=true")
    check(code == 400 and st["reason"] == "BadRequest", "an exec into a pod not running yet: 400", code, st)
    eventually(lambda: phase(srv, "immich", "reader-1").get("phase") == "Running", "the pod runs", 2)
    pst = phase(srv, "immich", "reader-1")
    check(pst["containerStatuses"][0]["ready"] and "startedAt" in pst["containerStatuses"][0]["state"]["running"]
          and {"type": "Ready", "status": "True"}.items() <= next(c for c in pst["conditions"] if c["type"] == "Ready").items(),
          "a running pod's status", pst)
    pods = [p["metadata"]["name"] for p in srv.get("/api/v1/namespaces/immich/pods?labelSelector=app%3Dreader")[1]["items"]]
    check(pods == ["reader-1"], "pod list by label", pods)

    r = exec_(srv, "immich", "reader-1", ["sh", "-c", "cd /backuphub/volume && find . | sort"], container="reader")
    check(r["code"] == 101 and r["protocol"] == "v5.channel.k8s.io", "the exec upgrades to v5", r.get("error"))
    check(r["messages"][0] == (1, 1), "the first message is an empty one on stdout, as a kubelet's", r["messages"][:3])
    check([m for m in r["messages"] if m[1] == 1] == [(1, 1)], "only one empty message", r["messages"])
    want = b".\n./a.txt\n./hard1\n./link\n./sub\n./sub/b\n./sub/hard2\n"
    check(r["stdout"] == want, "exec lists the snapshot's files (not those made after it)", r["stdout"])
    check(r["status"] == {"metadata": {}, "status": "Success"} and r["close"] == 1000, "Success, then close 1000", r["status"], r["close"])
    r = exec_(srv, "immich", "reader-1", ["cat", "/backuphub/volume/a.txt"])
    check(r["stdout"] == b"old content\n", "a file changed after the snapshot has its old content there", r["stdout"])
    r = exec_(srv, "immich", "reader-1", ["sh", "-c", 'echo "$PATH" | grep -c busybox; ls /bin/sh >/dev/null; command -v bash || echo no-bash; echo "${LANG-unset} $HOME" && pwd'])
    check(r["stdout"].split(b"\n")[1:4] == [b"no-bash", b"unset /", b"/"], "only busybox, minimal environment, cwd /", r["stdout"])
    r = exec_(srv, "immich", "reader-1", ["sh", "-c", "mktemp -d"])
    check(r["stdout"].startswith(f"{d}/pods/immich/reader-1/tmp/".encode()), "mktemp lands in the pod's /tmp emptyDir", r["stdout"])

    # A non-zero exit: Failure with the exit code, as the kubelet words it.
    r = exec_(srv, "immich", "reader-1", ["sh", "-c", "echo oops >&2; exit 3"])
    check(r["stderr"] == b"oops\n", "stderr arrives", r["stderr"])
    check(r["status"] == {"metadata": {}, "status": "Failure",
                          "message": "command terminated with non-zero exit code: error executing command [sh -c echo oops >&2; exit 3], exit code 3",
                          "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}},
          "a Failure status with the exit code", r["status"])
    r = exec_(srv, "immich", "reader-1", ["bash", "-c", "true"])
    check(r["status"]["reason"] == "InternalError" and "executable file not found" in r["status"]["message"],
          "a command not in the image: InternalError", r["status"])

    # stdin: cat echoes it; fragmented frames, a ping amid them; v5's close of channel 0 ends it.
    data = bytes(range(256)) * 400
    r = exec_(srv, "immich", "reader-1", ["cat"], stdin=data, fragment=True, ping=True)
    check(r["stdout"] == data and r["status"]["status"] == "Success", "stdin round trip (v5)", len(r["stdout"]), r["status"])
    check(r["pongs"] == [b"are you there"], "ping answered by pong", r["pongs"])
    check(all(n <= 32 * 1024 for ch, n in r["messages"]), "messages of at most 32 KiB", max(n for ch, n in r["messages"]))
    r = exec_(srv, "immich", "reader-1", ["cat"], stdin=b"v4 text\n", protocols="v4.channel.k8s.io")
    check(r["protocol"] == "v4.channel.k8s.io" and r["stdout"] == b"v4 text\n" and r["status"]["status"] == "Success",
          "v4: the client's close frame ends stdin, output and status still come", r)
    big = exec_(srv, "immich", "reader-1", ["head", "-c", "1000000", "/dev/zero"])
    check(len(big["stdout"]) == 1000000 and max(n for ch, n in big["messages"]) <= 32 * 1024 and len(big["messages"]) >= 31,
          "a large stdout in messages of at most 32 KiB", len(big["stdout"]), len(big["messages"]))

    # Block: a file stands for the device.
    dev = f"{d}/data/database/data-postgresql-0"
    with open(dev, "r+b") as f:
        f.write(b"PGDATA-1")
    s = ready_snapshot(srv, "database", "snap-db", "data-postgresql-0")
    with open(dev, "r+b") as f:
        f.write(b"PGDATA-2")
    srv.ok("POST", "/api/v1/namespaces/database/persistentvolumeclaims", pvc_body("restore-db", size="64Mi", block=True, snapshot="snap-db", sc="ceph-block"), 201)
    running_pod(srv, "database", "reader-db", "restore-db", block=True)
    r = exec_(srv, "database", "reader-db", ["sh", "-c", "wc -c < /dev/backuphub-volume; head -c 8 /dev/backuphub-volume"])
    check(r["stdout"] == b"67108864\nPGDATA-1", "a block volume restored from its snapshot", r["stdout"], r["stderr"])
    check(os.stat(f"{d}/data/database/restore-db").st_blocks < 1024, "the copies stay sparse")
    snap = srv.get(f"{SNAP}/namespaces/database/volumesnapshots/snap-db")[1]
    check(snap["spec"]["volumeSnapshotClassName"] == "csi-rbdplugin-snapclass" and snap["status"]["restoreSize"] == "64Mi", "RBD default class", snap)

    # Deleting: pod, PVC, snapshot go at once (and the snapshot's copy with it).
    for path in ["/api/v1/namespaces/database/pods/reader-db", "/api/v1/namespaces/database/persistentvolumeclaims/restore-db",
                 f"{SNAP}/namespaces/database/volumesnapshots/snap-db"]:
        srv.ok("DELETE", path)
        check(srv.get(path)[0] == 404, f"DELETE then GET {path}: 404")
    check(not os.path.exists(f"{d}/snapshots/database/snap-db") and not os.path.exists(f"{d}/data/database/restore-db"),
          "deleted snapshot and restored PVC leave no data")
    check(os.path.exists(dev), "a fixture's data stays")


def exec_lifecycle(srv, d):
    # Errors before the upgrade are plain JSON Statuses.
    r = exec_(srv, "immich", "nope", ["ls"])
    check(r["code"] == 404 and r["error"]["message"] == 'pods "nope" not found', "exec into a missing pod: 404", r)
    r = exec_(srv, "immich", "reader-1", ["ls"], container="other")
    check(r["code"] == 400 and r["error"]["reason"] == "BadRequest", "exec into a missing container: 400", r)
    code, st = srv.call("GET", "/api/v1/namespaces/immich/pods/reader-1/exec?command=ls&stdout=true")
    check(code == 400 and st["message"] == "Upgrade request required", "exec without an upgrade: 400", st)

    # A client that disconnects takes its command with it.
    box = {}

    def drop(ws):
        fr = ws.read()  # the empty stdout message
        while True:
            fr = ws.read()
            if fr[2][:1] == b"\x01" and fr[2][1:].strip().isdigit():
                box["pid"] = int(fr[2][1:].strip())
                break
        ws.sock.shutdown(socket.SHUT_RDWR)
        ws.sock.close()

    try:
        exec_(srv, "immich", "reader-1", ["sh", "-c", "echo $$; exec sleep 30"], on_open=drop)
    except (OSError, ValueError):
        pass
    eventually(lambda: not os.path.exists(f"/proc/{box['pid']}") or open(f"/proc/{box['pid']}/stat").read().split()[2] == "Z",
               "a disconnected client's command is killed", 3)

    # A deleted pod's exec ends: its command is killed (exit code 137).
    running_pod(srv, "immich", "doomed", "restore-1")
    res, started = {}, threading.Event()
    t = threading.Thread(target=lambda: res.update(exec_(srv, "immich", "doomed", ["sleep", "30"], on_open=lambda ws: started.set())))
    t.start()
    check(started.wait(5), "the exec in the pod to be deleted started")
    srv.ok("DELETE", "/api/v1/namespaces/immich/pods/doomed")
    t.join(5)
    check(res.get("status", {}).get("details", {}).get("causes") == [{"reason": "ExitCode", "message": "137"}],
          "an exec in a deleted pod ends with 137", res.get("status"))
    eventually(lambda: srv.get("/api/v1/namespaces/immich/pods/doomed")[0] == 404, "a deleted pod is gone", 1)

    # activeDeadlineSeconds: Failed, DeadlineExceeded.
    running_pod(srv, "immich", "short", "restore-1", deadline=2)
    st = eventually(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(phase(srv, "immich", "short")), "deadline", 3)
    check(st["reason"] == "DeadlineExceeded", "a pod past its deadline fails", st)


def faults(srv, d):
    # --never-ready: the snapshot stays not ready, a PVC from it Pending.
    srv.ok("POST", f"{SNAP}/namespaces/immich/volumesnapshots", snap_body("snap-stuck", "stuck"), 201)
    srv.ok("POST", "/api/v1/namespaces/immich/persistentvolumeclaims", pvc_body("from-stuck", snapshot="snap-stuck"), 201)
    time.sleep(1)
    check(srv.get(f"{SNAP}/namespaces/immich/volumesnapshots/snap-stuck")[1]["status"] == {"readyToUse": False}, "--never-ready")
    check(srv.get("/api/v1/namespaces/immich/persistentvolumeclaims/from-stuck")[1]["status"]["phase"] == "Pending",
          "a PVC from an unready snapshot stays Pending")
    # A missing class: an error, never ready.
    srv.ok("POST", f"{SNAP}/namespaces/immich/volumesnapshots", snap_body("snap-x", "library", cls="x"), 201)
    time.sleep(0.5)
    st = srv.get(f"{SNAP}/namespaces/immich/volumesnapshots/snap-x")[1]["status"]
    check(st["readyToUse"] is False and st["error"]["message"] ==
          'Failed to get snapshot class with error volumesnapshotclass.snapshot.storage.k8s.io "x" not found' and st["error"]["time"],
          "a missing snapshot class", st)

    # --unschedulable, a missing claim, an image that does not exist.
    srv.ok("POST", "/api/v1/namespaces/immich/pods", pod_body("far", "faraway"), 201)
    srv.ok("POST", "/api/v1/namespaces/immich/pods", pod_body("orphan", "no-such-claim"), 201)
    srv.ok("POST", "/api/v1/namespaces/immich/pods", pod_body("badimage", "library", image="reg.lan/busybox-does-not-exist:1"), 201)
    def unsched(s):
        c = s.get("conditions") or [{}]
        return s.get("phase") == "Pending" and c == [
            {"type": "PodScheduled", "status": "False", "lastProbeTime": None, "lastTransitionTime": c[0].get("lastTransitionTime"),
             "reason": "Unschedulable", "message": "0/3 nodes are available: 3 node(s) had volume node affinity conflict."}]

    eventually(lambda: unsched(phase(srv, "immich", "far")), "--unschedulable: Pending, Unschedulable", 1)
    ready_snapshot(srv, "immich", "snap-far", "faraway")
    srv.ok("POST", "/api/v1/namespaces/immich/persistentvolumeclaims", pvc_body("from-far", snapshot="snap-far"), 201)
    srv.ok("POST", "/api/v1/namespaces/immich/pods", pod_body("far-restored", "from-far"), 201)
    eventually(lambda: unsched(phase(srv, "immich", "far-restored")), "--unschedulable holds for claims restored from it", 1)
    s = phase(srv, "immich", "orphan")
    check(s["phase"] == "Pending" and not unsched(s), "a pod waits for its claim a while", s)
    st = eventually(lambda: (lambda s: s if s.get("containerStatuses") and "waiting" in s["containerStatuses"][0]["state"]
                             and s["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull" else None)(
        phase(srv, "immich", "badimage")), "ErrImagePull", 2)
    check(st["phase"] == "Pending" and st["containerStatuses"][0]["state"]["waiting"]["message"]
          == 'failed to pull and unpack image "reg.lan/busybox-does-not-exist:1": not found', "ErrImagePull's message", st)
    eventually(lambda: unsched(phase(srv, "immich", "orphan")), "a claim missing for 5 s: Unschedulable", 7)
    time.sleep(0.5)
    check(unsched(phase(srv, "immich", "far")), "Unschedulable stays")
    check(phase(srv, "immich", "badimage")["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull", "ErrImagePull stays")
    r = exec_(srv, "immich", "far", ["ls"])
    check(r["code"] == 400 and r["error"]["message"] == "pod far does not have a host assigned", "exec into an unscheduled pod", r)
    r = exec_(srv, "immich", "badimage", ["ls"])
    check(r["code"] == 400 and r["error"]["message"] == 'container not found ("reader")', "exec into a container not started", r)

    # --cut-stream: the connection just ends after BYTES of stdout, for the live claim and
    # for claims restored from its snapshots; smaller outputs pass.
    flaky = f"{d}/data/immich/flaky"
    with open(f"{flaky}/big", "wb") as f:
        f.write(os.urandom(5000))
    ready_snapshot(srv, "immich", "snap-flaky", "flaky")
    srv.ok("POST", "/api/v1/namespaces/immich/persistentvolumeclaims", pvc_body("from-flaky", snapshot="snap-flaky"), 201)
    running_pod(srv, "immich", "cut-restored", "from-flaky")
    running_pod(srv, "immich", "cut-live", "flaky")
    for pod in ("cut-restored", "cut-live"):
        for _ in range(2):  # every time
            r = exec_(srv, "immich", pod, ["sh", "-c", "cat /backuphub/volume/big; sleep 0.2; echo done >&2"])
            check(len(r["stdout"]) == 1000 and r["eof_without_close"] and r["status"] is None and r["close"] is None,
                  f"--cut-stream cuts after 1000 bytes ({pod})", len(r["stdout"]), r["status"], r["close"])
        r = exec_(srv, "immich", pod, ["head", "-c", "1000", "/backuphub/volume/big"])
        check(len(r["stdout"]) == 1000 and r["status"]["status"] == "Success", "an output of BYTES passes", r["status"])
    r = exec_(srv, "immich", "reader-1", ["head", "-c", "5000", "/dev/zero"])
    check(len(r["stdout"]) == 5000 and r["status"]["status"] == "Success", "other claims are not cut")


def forbidden(d):
    srv = Server("--volumes", d, "--forbid", "volumesnapshots.snapshot.storage.k8s.io", "--forbid", "pods/exec")
    try:
        code, st = srv.call("POST", f"{SNAP}/namespaces/immich/volumesnapshots", snap_body("s", "library"))
        check(code == 403 and st["reason"] == "Forbidden" and st["message"] == FORBID_MSG, "403 on create", st)
        for m, p, verb in [("GET", f"{SNAP}/namespaces/immich/volumesnapshots/s", "get"),
                           ("DELETE", f"{SNAP}/namespaces/immich/volumesnapshots/s", "delete"),
                           ("GET", f"{SNAP}/namespaces/immich/volumesnapshots", "list"), ("GET", f"{SNAP}/volumesnapshots", "list")]:
            code, st = srv.call(m, p)
            check(code == 403 and f'cannot {verb} resource "volumesnapshots"' in st["message"], f"403 on {verb}", st)
        check("at the cluster scope" in srv.get(f"{SNAP}/volumesnapshots")[1]["message"], "cluster-wide list: at the cluster scope")
        running_pod(srv, "immich", "p", "library")
        r = exec_(srv, "immich", "p", ["ls"])
        check(r["code"] == 403 and r["error"]["message"].startswith('pods "p" is forbidden') and '"pods/exec"' in r["error"]["message"],
              "--forbid pods/exec", r)
    finally:
        srv.stop()


def main():
    with tempfile.TemporaryDirectory(prefix="fake-kube-selftest-") as tmp:
        unchanged_without_volumes(tmp)
        d = os.path.join(tmp, "vol")
        os.makedirs(f"{d}/data/immich/library/sub")
        for n in ("stuck", "faraway", "flaky"):
            os.makedirs(f"{d}/data/immich/{n}")
        os.makedirs(f"{d}/data/database")
        with open(f"{d}/volumes.json", "w") as f:
            json.dump(FIXTURE, f)
        lib = f"{d}/data/immich/library"
        with open(f"{lib}/a.txt", "w") as f:
            f.write("old content\n")
        with open(f"{lib}/sub/b", "w") as f:
            f.write("b\n")
        os.utime(f"{lib}/sub/b", (1_600_000_000, 1_600_000_000))
        os.symlink("a.txt", f"{lib}/link")
        with open(f"{lib}/hard1", "w") as f:
            f.write("linked\n")
        os.link(f"{lib}/hard1", f"{lib}/sub/hard2")
        with open(f"{d}/data/database/data-postgresql-0", "wb") as f:
            f.truncate(64 * 2**20)

        log = os.path.join(tmp, "requests.log")
        srv = Server("--volumes", d, "--log", log, "--never-ready", "immich/stuck", "--unschedulable", "immich/faraway",
                     "--cut-stream", "immich/flaky:1000")
        plain = Server()
        try:
            discovery(srv, plain)
            objects(srv, d)
            snapshot_restore_exec(srv, d)
            exec_lifecycle(srv, d)
            faults(srv, d)
            # Nothing left behind by the execs: the server is back to its few threads.
            tasks = lambda: len(os.listdir(f"/proc/{srv.proc.pid}/task"))
            eventually(lambda: tasks() <= 2, "no threads leak (server threads)", 5)
            lines = open(log).read().splitlines()
            check("POST /apis/snapshot.storage.k8s.io/v1/namespaces/immich/volumesnapshots 201" in lines, "POSTs are logged", lines[:5])
            check(any(l.startswith("GET /api/v1/namespaces/immich/pods/reader-1/exec?") and l.endswith(" 101") for l in lines),
                  "execs are logged with 101")
            check(any(l.startswith("DELETE ") and l.endswith(" 404") for l in lines), "DELETEs are logged")
        finally:
            srv.stop()
            plain.stop()
        forbidden(d)
    print(f"selftest_volume: {checks} checks passed")


if __name__ == "__main__":
    main()
