#!/usr/bin/env python3
"""Blob counts and bytes per kind from a backuphub repository's pack headers (stdlib only).

  packstat.py REPO            -> one JSON object on stdout

Reads only each pack's trailer and plaintext header (no key needed), for both formats:
  format 1 "BHPACK1\\n": header = n x (kind u8, id [32], offset u64, length u32)
  format 2 "BHPACK2\\n": header = key_count u16, key_count x (len u16, wrapped key),
                         then n x (kind u8, id [32], offset u64, length u32, key u16)
both followed by header_len u32 | BLAKE3(header) [32] | "BHPKEND\\n".
Kinds: 0 data, 1 tree, 2 refs, 3 root. A pack that does not parse is counted in
"unparsed" and left out of the per-kind figures.
"""

import json
import os
import struct
import sys

KINDS = {0: "data", 1: "tree", 2: "refs", 3: "root"}
TRAILER = 4 + 32 + 8


def entries(path):
    """[(kind, length)] of one pack, or None if it is not a pack this reader knows."""
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic not in (b"BHPACK1\n", b"BHPACK2\n"):
            return None
        f.seek(0, 2)
        size = f.tell()
        if size < 8 + TRAILER:
            return None
        f.seek(size - TRAILER)
        tail = f.read(TRAILER)
        if tail[-8:] != b"BHPKEND\n":
            return None
        hlen = struct.unpack("<I", tail[:4])[0]
        if hlen > size - 8 - TRAILER:
            return None
        f.seek(size - TRAILER - hlen)
        h = f.read(hlen)
    off, width = 0, 45
    if magic == b"BHPACK2\n":
        width = 47
        if len(h) < 2:
            return None
        keys = struct.unpack_from("<H", h, 0)[0]
        off = 2
        for _ in range(keys):
            if off + 2 > len(h):
                return None
            off += 2 + struct.unpack_from("<H", h, off)[0]
    if off > len(h) or (len(h) - off) % width:
        return None
    return [(h[e], struct.unpack_from("<I", h, e + 41)[0]) for e in range(off, len(h), width)]


def stat(repo):
    out = {"packs": 0, "pack_bytes": 0, "unparsed": 0}
    for k in KINDS.values():
        out[f"{k}_blobs"] = out[f"{k}_bytes"] = 0
    for d, _, fs in os.walk(os.path.join(repo, "packs")):
        for name in fs:
            p = os.path.join(d, name)
            out["packs"] += 1
            try:
                out["pack_bytes"] += os.path.getsize(p)
                es = entries(p)
            except (OSError, struct.error):
                es = None
            if es is None:
                out["unparsed"] += 1
                continue
            for kind, length in es:
                k = KINDS.get(kind, f"kind{kind}")
                out[f"{k}_blobs"] = out.get(f"{k}_blobs", 0) + 1
                out[f"{k}_bytes"] = out.get(f"{k}_bytes", 0) + length
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: packstat.py REPO")
    print(json.dumps(stat(sys.argv[1])))
