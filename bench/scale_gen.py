#!/usr/bin/env python3
"""Trees of many small files for bench/scale.sh (Python 3 stdlib only, deterministic).

  scale_gen.py init  --root DIR --files N --seed 42
      DIR/tree/dNNN/dNN/fNNNNNNN.txt: N text files of 1-4 KiB (uniform), 500 files per
      directory, 50 directories per parent. A file is a header naming it and its version,
      then a slice of a 1 MiB text pool (deterministic): compressible like text, and unique
      per file and version. DIR/state.json + DIR/live.bin record which files exist.

  scale_gen.py churn --root DIR --round K --pct 1 --add A --delete D --seed 42
      Round K (K >= 1, deterministic per (seed, K)): rewrites PCT % of the live files with
      version K (new content, a new size of 1-4 KiB), deletes D live files, adds A new ones.
      --rewrite COUNT rewrites COUNT files instead of PCT %.

Written for speed (a million files in about a minute): no fsync, one pool sliced per file.
"""

import argparse
import json
import os
import random
import sys
import time

PER_DIR = 500
DIRS_PER_PARENT = 50
SYLL = ["ka", "lo", "mi", "ne", "tor", "sa", "ri", "ven", "da", "po", "lu", "shi", "an", "er",
        "in", "gal", "mor", "te", "qua", "bel", "sto", "fi", "ru", "wen", "ha", "zo", "cre", "pi"]


def pool(seed):
    r = random.Random(seed * 1_000_003 + 5)
    words = ["".join(r.choice(SYLL) for _ in range(r.randint(1, 4))) for _ in range(3000)]
    out, n = [], 0
    while n < (1 << 20) + 8192:
        line = " ".join(r.choices(words, k=r.randint(4, 14))) + ("\n" if r.random() < 0.2 else " ")
        out.append(line)
        n += len(line)
    return "".join(out).encode()


def rel(i):
    leaf = i // PER_DIR
    return f"d{leaf // DIRS_PER_PARENT:03d}/d{leaf % DIRS_PER_PARENT:02d}/f{i:07d}.txt"


class Tree:
    def __init__(self, root, seed):
        self.root, self.seed = root, seed
        self.tree = os.path.join(root, "tree")
        self.pool = pool(seed)
        self.made = set()

    def write(self, i, version, r):
        size = r.randint(1024, 4096)
        off = r.randrange(len(self.pool) - size)
        head = f"# {rel(i)} version {version}\n".encode()
        path = os.path.join(self.tree, rel(i))
        d = os.path.dirname(path)
        if d not in self.made:
            os.makedirs(d, exist_ok=True)
            self.made.add(d)
        with open(path, "wb") as f:
            f.write(head + self.pool[off:off + size - len(head)])

    def load(self):
        with open(os.path.join(self.root, "state.json")) as f:
            st = json.load(f)
        with open(os.path.join(self.root, "live.bin"), "rb") as f:
            live = bytearray(f.read())
        return st, live

    def save(self, st, live):
        with open(os.path.join(self.root, "live.bin"), "wb") as f:
            f.write(live)
        with open(os.path.join(self.root, "state.json"), "w") as f:
            json.dump(st, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("init", "churn"))
    ap.add_argument("--root", required=True)
    ap.add_argument("--files", type=int)
    ap.add_argument("--round", type=int)
    ap.add_argument("--pct", type=float, default=1.0)
    ap.add_argument("--rewrite", type=int, help="churn: rewrite this many files instead of --pct")
    ap.add_argument("--add", type=int, default=0)
    ap.add_argument("--delete", type=int, default=0)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    t = Tree(a.root, a.seed)
    t0 = time.time()
    if a.cmd == "init":
        if not a.files or a.files <= 0:
            ap.error("init needs --files N > 0")
        if os.path.exists(t.tree):
            ap.error(f"{t.tree} exists; remove it first")
        r = random.Random(a.seed * 1_000_003 + 1)
        for i in range(a.files):
            t.write(i, 0, r)
        t.save({"next": a.files, "rounds": 0}, bytearray(b"\x01" * a.files))
        print(f"scale_gen init: {a.files} files in {time.time() - t0:.1f}s", file=sys.stderr)
        return
    if not a.round or a.round < 1:
        ap.error("churn needs --round K >= 1")
    st, live = t.load()
    r = random.Random(a.seed * 1_000_003 + 1000 + a.round)
    alive = [i for i in range(st["next"]) if live[i]]
    n_rw = min(len(alive), a.rewrite if a.rewrite is not None else round(len(alive) * a.pct / 100))
    for i in r.sample(alive, n_rw):
        t.write(i, a.round, r)
    dele = r.sample(alive, min(a.delete, len(alive)))
    for i in dele:
        os.unlink(os.path.join(t.tree, rel(i)))
        live[i] = 0
    for _ in range(a.add):
        i = st["next"]
        t.write(i, a.round, r)
        live.append(1)
        st["next"] = i + 1
    st["rounds"] = a.round
    t.save(st, live)
    print(f"scale_gen churn {a.round}: {n_rw} rewritten, {len(dele)} deleted, {a.add} added "
          f"in {time.time() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
