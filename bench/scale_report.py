#!/usr/bin/env python3
"""Format bench/scale.sh results as markdown (stdlib only). Machine and run parameters come
from M_* environment variables set by scale.sh."""

import argparse
import csv
import os
import statistics

MIB = 1 << 20
RSS_LIMIT_MIB = 256
RSS_GROWTH_LIMIT = 1.5
META_LIMIT = 0.05
DAEMON = ("daemon start to status", "daemon run (trigger to status)", "daemon run itself (start to end)",
          "daemon refresh after the run (end to status)", "daemon peak RSS (VmHWM)")


def load(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def table(hdr, body, left=1):
    out = ["| " + " | ".join(hdr) + " |", "|" + "---|" * left + "---:|" * (len(hdr) - left)]
    return out + ["| " + " | ".join(r) + " |" for r in body]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tsv", required=True)
    ap.add_argument("--sizes", required=True)
    ap.add_argument("--md", required=True)
    a = ap.parse_args()
    rows, sizes = load(a.tsv), load(a.sizes)
    ns = sorted({int(r["n"]) for r in rows})
    e = os.environ

    def sel(n, cmd, rounds=None):
        return [r for r in rows if int(r["n"]) == n and r["cmd"] == cmd
                and (rounds is None or rounds(int(r["round"])))]

    # (label, selector) -> per N: wall (median), wall max, CPU median, peak RSS max (MiB)
    groups = [("backup #1 (initial)", lambda n: sel(n, "backup", lambda k: k == 1)),
              ("backup #2.. (1 % churn each)", lambda n: sel(n, "backup", lambda k: k > 1)),
              ("forget", lambda n: sel(n, "forget")), ("prune", lambda n: sel(n, "prune")),
              ("check", lambda n: sel(n, "check"))]
    groups += [(d, (lambda d: lambda n: sel(n, d))(d)) for d in DAEMON]
    stats = {}
    for label, f in groups:
        for n in ns:
            rs = f(n)
            if not rs:
                continue
            walls = [float(r["wall_s"]) for r in rs]
            rss = [int(r["rss_kib"]) / 1024 for r in rs if int(r["rss_kib"]) > 0]
            stats[(label, n)] = {"runs": len(rs), "wall": statistics.median(walls), "wall_max": max(walls),
                                 "cpu": statistics.median(float(r["cpu_s"]) for r in rs),
                                 "rss": max(rss) if rss else None}

    hdr = ["command"]
    for n in ns:
        hdr += [f"N={n:,} runs", "wall s (median / max)", "peak RSS MiB"]
    body = []
    for label, _ in groups:
        if not any((label, n) in stats for n in ns):
            continue
        line = [label]
        for n in ns:
            s = stats.get((label, n))
            if s is None:
                line += ["", "–", "–"]
                continue
            timed = label != "daemon peak RSS (VmHWM)"
            wall = (f"{fmt(s['wall'], 2)}" + (f" / {fmt(s['wall_max'], 2)}" if s["runs"] > 1 else "")
                    if timed else "")
            line += [str(s["runs"]), wall, fmt(s["rss"])]
        body.append(line)

    shdr = ["N", "phase", "snapshots", "packs MiB", "data blobs MiB", "tree blobs MiB", "refs+root blobs MiB",
            "snapshots/ MiB", "refs/ MiB", "metadata / packs", "state MiB"]
    sbody, meta_ratio = [], {}
    for r in sizes:
        packs = int(r["packs_bytes"])
        meta = int(r["snapshots_bytes"]) + int(r["refs_dir_bytes"]) + int(r["refs_blob_bytes"]) + \
            int(r["root_blob_bytes"])
        q = meta / packs if packs else None
        meta_ratio.setdefault(int(r["n"]), []).append((r["phase"], q))
        parsed = int(r["packs"]) - int(r["packs_unparsed"])
        blob = (lambda k: fmt(int(r[k]) / MIB, 2)) if parsed else (lambda k: "–")
        sbody.append([f"{int(r['n']):,}", r["phase"], r["snapshots"], fmt(packs / MIB, 1), blob("data_blob_bytes"),
                      blob("tree_blob_bytes"),
                      fmt((int(r["refs_blob_bytes"]) + int(r["root_blob_bytes"])) / MIB, 2) if parsed else "–",
                      fmt(int(r["snapshots_bytes"]) / MIB, 2), fmt(int(r["refs_dir_bytes"]) / MIB, 2),
                      "–" if q is None else f"{100 * q:.2f} %", fmt(int(r["state_bytes"]) / MIB, 1)])
    unparsed = sum(int(r["packs_unparsed"]) for r in sizes)

    targets = []

    def verdict(ok):
        return "n/a " if ok is None else "PASS" if ok else "FAIL"
    for n in ns:
        rss = [s["rss"] for (lab, m), s in stats.items() if m == n and s["rss"] is not None]
        worst = max(rss) if rss else None
        who = next((lab for (lab, m), s in stats.items() if m == n and s["rss"] == worst), "?")
        targets.append(f"{verdict(None if worst is None else worst <= RSS_LIMIT_MIB)}  N={n:,}: peak RSS of "
                       f"every command <= {RSS_LIMIT_MIB} MiB: max {fmt(worst)} MiB ({who})")
    if len(ns) > 1:
        lo, hi = ns[0], ns[-1]
        growth = []
        for label, _ in groups:
            s0, s1 = stats.get((label, lo)), stats.get((label, hi))
            if s0 and s1 and s0["rss"] and s1["rss"]:
                growth.append((s1["rss"] / s0["rss"], label))
        if growth:
            q, label = max(growth)
            targets.append(f"{verdict(q <= RSS_GROWTH_LIMIT)}  peak RSS N={hi:,} / N={lo:,} <= {RSS_GROWTH_LIMIT}x "
                           f"for every command: worst {q:.2f}x ({label})")
        r0 = stats.get(("daemon refresh after the run (end to status)", lo))
        r1 = stats.get(("daemon refresh after the run (end to status)", hi))
        if r0 and r1 and r0["wall"] > 0:
            targets.append(f"info  daemon refresh after a run that changed {e.get('M_DAEMON_CHANGE', '?')} "
                           f"files, N={hi:,} / N={lo:,}: {r1['wall'] / r0['wall']:.2f}x ({fmt(r0['wall'], 3)} s -> "
                           f"{fmt(r1['wall'], 3)} s; proportional to the repository would be ~{hi / lo:.0f}x, "
                           "to what changed ~1x)")
    for n in ns:
        worst = max(((q, ph) for ph, q in meta_ratio.get(n, []) if q is not None), default=None)
        if worst:
            targets.append(f"{verdict(worst[0] <= META_LIMIT)}  N={n:,}: refs + manifests <= "
                           f"{100 * META_LIMIT:.0f} % of pack bytes: worst {100 * worst[0]:.2f} % ({worst[1]})")

    md = ["# backuphub scale simulation", "", "Generated by `bench/scale.sh`; do not edit by hand.", "",
          f"Machine: {e.get('M_CPU', '?')}, {e.get('M_CORES', '?')} cores, {e.get('M_FS', '?')}; "
          f"{e.get('M_DATE', '?')}; load average at start {e.get('M_LOAD', '?')}.  ",
          f"backuphub: {e.get('M_BH', '?')}; encrypted repository, default init settings.  ",
          f"Per N: a tree of N files (1–4 KiB text, 500 per directory), {e.get('M_SNAPS', '?')} snapshots "
          f"(`backuphub backup`), {e.get('M_CHURN', '?')} % of the files rewritten and {e.get('M_ADDDEL', '?')} "
          f"added and deleted before each after the first; then `forget --keep-last {e.get('M_KEEP', '?')}`, "
          f"`prune`, `{' '.join(['check'] + e.get('M_CHECK_ARGS', '').split())}`, and the daemon on the same repository "
          f"(start → status shows every snapshot; {e.get('M_DAEMON_CHANGE', '?')} files rewritten, a triggered run "
          "→ status shows it).", "",
          "## Targets (issue 8)", ""] + [f"- {t}" for t in targets] + [
          "", "## Commands", "", *table(hdr, body), "",
          "Wall and peak RSS from GNU time (`%e`, `%M`); the daemon's peak RSS is VmHWM from /proc just "
          "before it is stopped, its times are polled every 20 ms (the run's start and end come from its "
          "status).", "", "## Repository composition", "", *table(shdr, sbody, 2), "",
          "metadata = snapshots/ + refs/ + refs and root blobs inside packs (from the pack headers, "
          "`bench/packstat.py`; "
          + (f"{unparsed} pack(s) did not parse, so their blob kinds are not counted)." if unparsed
             else "every pack parsed)."),
          ""]
    with open(a.md, "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
