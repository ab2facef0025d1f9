#!/usr/bin/env python3
"""Format bench/run.sh results: tables on stdout and the same as markdown (stdlib only).

Every series is repeated (BENCH_REPEAT) with fresh repositories; figures are medians over the
repetitions, with min-max ranges where they matter.
"""

import argparse
import csv
import json
import statistics

MIB = 1 << 20
TOOLS = ("backuphub", "restic", "borg")
# "zstd" is a reference measurement in the full series (day 1 only), not a backup tool.
ALL_TOOLS = TOOLS + ("zstd",)
SERIES = ("full", "bin", "half", "small")
TEXT_COLS = ("tool", "series", "day", "ratio")


def load(tsv):
    """runs[(series, tool)][rep][day] = measurement"""
    runs = {}
    with open(tsv, newline="") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            m = {"wall": float(r["wall_s"]), "cpu": float(r["cpu_s"]), "rss": int(r["rss_kib"]) / 1024,
                 "repo": int(r["repo_bytes"]) / MIB, "cache": int(r["cache_bytes"]) / MIB,
                 "load": float(r["load1"])}
            runs.setdefault((r["series"], r["tool"]), {}).setdefault(int(r["rep"]), {})[int(r["day"])] = m
    return runs


def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def fmt_range(vals, nd=1):
    if not vals:
        return "–"
    med = fmt(statistics.median(vals), nd)
    if len(vals) == 1 or min(vals) == max(vals):
        return med
    return f"{med} ({min(vals):.{nd}f}–{max(vals):.{nd}f})"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(headers, body, md):
    if md:
        out = ["| " + " | ".join(headers) + " |",
               "|" + "|".join("---" if h in TEXT_COLS else "---:" for h in headers) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(out)
    w = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]

    def line(r):
        return "  ".join(c.ljust(w[i]) if headers[i] in TEXT_COLS else c.rjust(w[i]) for i, c in enumerate(r))
    return "\n".join([line(headers), line(["-" * x for x in w])] + [line(r) for r in body])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tsv", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--md", required=True)
    a = ap.parse_args()
    runs = load(a.tsv)
    with open(a.meta) as f:
        meta = json.load(f)
    tools = [t for t in TOOLS if any(k[1] == t for k in runs)]
    all_tools = [t for t in ALL_TOOLS if any(k[1] == t for k in runs)]

    def vals(series, tool, day, key):
        reps = runs.get((series, tool), {})
        return [r[day][key] for r in reps.values() if day in r]

    def med(series, tool, day, key):
        v = vals(series, tool, day, key)
        return statistics.median(v) if v else None

    def growths(series, tool):
        reps = runs.get((series, tool), {})
        return [r[2]["repo"] - r[1]["repo"] for r in reps.values() if 1 in r and 2 in r]

    def gmed(series, tool):
        g = growths(series, tool)
        return statistics.median(g) if g else None

    # --- all measurements
    hdr = ["tool", "series", "day", "wall s", "CPU s", "peak RSS MiB", "repo MiB", "day-2 growth MiB",
           "cache/state MiB"]
    body = []
    for s in SERIES:
        for t in all_tools:
            for d in (1, 2):
                if not vals(s, t, d, "wall"):
                    continue
                body.append([t, s, str(d), fmt_range(vals(s, t, d, "wall"), 2), fmt_range(vals(s, t, d, "cpu"), 2),
                             fmt_range(vals(s, t, d, "rss")), fmt_range(vals(s, t, d, "repo")),
                             fmt_range(growths(s, t)) if d == 2 else "", fmt(med(s, t, d, "cache"))])

    # --- per-tool summary (medians)
    shdr = ["tool", "wall d1 s", "wall d2 s", "CPU d1 s", "CPU d2 s", "peak RSS MiB", "repo d2 MiB",
            "growth all MiB", "growth bin MiB", "growth sql MiB", "RSS half / full MiB"]
    sbody, summ = [], {}
    for t in tools:
        if not vals("full", t, 1, "wall"):
            continue
        rss = vals("full", t, 1, "rss") + vals("full", t, 2, "rss")
        g_all, g_bin = gmed("full", t), gmed("bin", t)
        g_sql = None if g_all is None or g_bin is None else g_all - g_bin
        rh, rf = med("half", t, 1, "rss"), med("full", t, 1, "rss")
        summ[t] = {"wall1": med("full", t, 1, "wall"), "wall2": med("full", t, 2, "wall"),
                   "cpu1": med("full", t, 1, "cpu"), "cpu2": med("full", t, 2, "cpu"),
                   "rss": max(rss) if rss else None, "repo": med("full", t, 2, "repo"),
                   "g_all": g_all, "g_bin": g_bin, "g_sql": g_sql, "rss_half": rh, "rss_full": rf}
        x = summ[t]
        sbody.append([t, fmt(x["wall1"], 2), fmt(x["wall2"], 2), fmt(x["cpu1"], 2), fmt(x["cpu2"], 2),
                      fmt(x["rss"]), fmt(x["repo"]), fmt(g_all), fmt(g_bin), fmt(g_sql),
                      f"{fmt(rh)} / {fmt(rf)}"])

    # --- ratios
    rhdr = ["ratio", "wall d1", "wall d2", "CPU d1", "CPU d2", "peak RSS", "repo d2", "growth all", "growth bin"]
    keys = ("wall1", "wall2", "cpu1", "cpu2", "rss", "repo", "g_all", "g_bin")
    rbody = [[f"{x}/{y}"] + [fmt(ratio(summ[x][k], summ[y][k]), 2) for k in keys]
             for x, y in (("backuphub", "restic"), ("backuphub", "borg")) if x in summ and y in summ]

    targets = []
    if "backuphub" in summ and "restic" in summ:
        b, r = summ["backuphub"], summ["restic"]

        def chk(name, x, y, f):
            ok = None if x is None or y is None else f(x, y)
            targets.append(f"{'n/a ' if ok is None else 'PASS' if ok else 'FAIL'}  {name}")
        chk("day-1 wall time <= 1/2 restic", b["wall1"], r["wall1"], lambda x, y: x <= y / 2)
        chk("day-2 wall time <= 1/2 restic", b["wall2"], r["wall2"], lambda x, y: x <= y / 2)
        chk("peak RSS < restic", b["rss"], r["rss"], lambda x, y: x < y)
        chk("peak RSS does not grow with input (day-1 full <= 1.2 x half)", b["rss_full"], b["rss_half"],
            lambda x, y: x <= 1.2 * y)
        chk("repository size after day 2 <= restic", b["repo"], r["repo"], lambda x, y: x <= y)
        chk("day-2 growth of the binary < restic", b["g_bin"], r["g_bin"], lambda x, y: x < y)

    # --- small files (issue 8)
    smhdr = ["tool", "wall d1 s", "wall d2 s", "CPU d1 s", "CPU d2 s", "peak RSS MiB", "repo d2 MiB",
             "cache/state MiB"]
    smbody, small = [], {}
    for t in tools:
        if not vals("small", t, 1, "wall"):
            continue
        rss = vals("small", t, 1, "rss") + vals("small", t, 2, "rss")
        small[t] = {"wall1": med("small", t, 1, "wall"), "wall2": med("small", t, 2, "wall"),
                    "cpu1": med("small", t, 1, "cpu"), "cpu2": med("small", t, 2, "cpu"),
                    "rss": max(rss) if rss else None, "repo": med("small", t, 2, "repo"),
                    "cache": med("small", t, 2, "cache")}
        x = small[t]
        smbody.append([t, fmt(x["wall1"], 2), fmt(x["wall2"], 2), fmt(x["cpu1"], 2), fmt(x["cpu2"], 2),
                       fmt(x["rss"]), fmt(x["repo"]), fmt(x["cache"])])
    smrhdr = ["ratio", "wall d1", "wall d2", "CPU d1", "CPU d2", "peak RSS", "repo d2"]
    smrbody = [[f"{x}/{y}"] + [fmt(ratio(small[x][k], small[y][k]), 2)
                               for k in ("wall1", "wall2", "cpu1", "cpu2", "rss", "repo")]
               for x, y in (("backuphub", "restic"), ("backuphub", "borg")) if x in small and y in small]

    # --- issue 8 targets
    zstd_wall = med("full", "zstd", 1, "wall")
    targets8 = []

    def chk8(name, x, y, limit):
        q = ratio(x, y)
        verdict = "n/a " if q is None else "PASS" if q <= limit else "FAIL"
        targets8.append(f"{verdict}  {name}: {fmt(q, 2)} (target <= {limit})")
    if "backuphub" in small and "restic" in small:
        b, r = small["backuphub"], small["restic"]
        chk8("small files: wall day 1 / restic", b["wall1"], r["wall1"], 0.5)
        chk8("small files: peak RSS / restic", b["rss"], r["rss"], 0.75)
        chk8("small files: repository after day 2 / restic", b["repo"], r["repo"], 1.0)
        chk8("small files: unchanged second run wall / restic", b["wall2"], r["wall2"], 0.5)
    if "backuphub" in summ and "restic" in summ:
        b, r = summ["backuphub"], summ["restic"]
        chk8("large streams: wall day 1 / restic", b["wall1"], r["wall1"], 0.25)
        chk8("large streams: wall day 2 / restic", b["wall2"], r["wall2"], 0.25)
        chk8(f"large streams: wall day 1 / zstd -T2 -{meta.get('zstd_level', '?')} on the same files",
             b["wall1"], zstd_wall, 1.2)
        chk8("large streams: peak RSS / restic", b["rss"], r["rss"], 0.5)
        chk8("binary day-2 growth / restic", b["g_bin"], r["g_bin"], 0.5)

    loads = [m["load"] for reps in runs.values() for r in reps.values() for m in r.values()]
    v = meta.get("versions", {})
    sq, bi = meta.get("sql_stats", {}), meta.get("bin_stats", {})
    desc = [
        f"Machine: {meta.get('cpu')}, {meta.get('cores')} cores, {meta.get('ram_gib')} GiB RAM, "
        f"Linux {meta.get('kernel')}, {meta.get('fs')}; {meta.get('date')}.",
        f"Tools: {v.get('backuphub') if 'backuphub' in tools else 'backuphub not run'}; "
        f"{v.get('restic')}; {v.get('borg')} (--compression {meta.get('borg_compression')}). "
        "Encryption on for all three.",
    ]
    sm = meta.get("small_stats")
    if sm:
        desc.append(f"Small files: {sm.get('files')} Kubernetes-manifest-like YAML files, "
                    f"{sm.get('bytes', 0) / MIB:.1f} MiB in {sm.get('dirs')} directories; day 2 = the same "
                    "files untouched (same inodes).")
    if meta.get("bh_init_args"):
        desc.append(f"backuphub init arguments: `{meta['bh_init_args']}`.")
    if sq:
        desc.append(
            f"Data (seed {meta.get('seed')}): SQL dump {sq.get('bytes_day1', 0) / 1e6:.0f} MB day 1 / "
            f"{sq.get('bytes_day2', 0) / 1e6:.0f} MB day 2 ({sq.get('rows_day1')} rows; day 2: "
            f"{sq.get('pct_rows_updated')} % updated, {sq.get('rows_deleted')} deleted, "
            f"{sq.get('rows_inserted')} inserted); binary {bi.get('bytes_day1', 0) / MIB:.0f} MiB random, "
            f"day 2 with {bi.get('insertion_count')} insertions totalling "
            f"{bi.get('inserted_bytes', 0) / 1024:.1f} KiB.")
    desc.append(f"{meta.get('repeat')} repetition(s) per series, fresh repositories each; medians, "
                f"(min–max) where they differ. 1-min load average: {meta.get('loadavg', '?').split()[0]} "
                f"at start, {max(loads) if loads else '?'} at most before a measured run.")
    notes = [
        "Series: *full* = SQL dump + binary in one repository per tool; *bin* = the binary alone in its "
        "own repository (its day-2 growth is the cost of the 40 small insertions); *half* = day 1 on a "
        "half-size data set (peak-RSS scaling). `growth sql` = growth all − growth bin (medians).",
        "Day 2 replaces the files at the same path (new inodes); each tool keeps its own cache/state "
        "from day 1.",
        "Wall time, CPU time (user+sys) and peak RSS: GNU `/usr/bin/time -f '%e %M %U %S'`; sizes: "
        "`du -sb` (MiB = 2^20 bytes). Data warm in the page cache, `sync` before each run. "
        "cache/state = the tool's local cache (restic cache, borg cache+keys, backuphub state dir), "
        "not counted in the repository size. The per-tool *peak RSS* is the maximum over all full-size "
        "runs; everything else there is a median.",
        "restic and borg choose a random chunker (polynomial / seed) per repository, so their day-2 "
        "growth varies between fresh repositories; hence the repetitions.",
        "CPU time is the steadier figure when the machine is shared; wall time is what the targets use.",
        "Issue 8 targets: *small* medians (peak RSS: maximum over its runs) vs restic; large streams = "
        "the *full* series; the zstd reference compresses the same day-1 files in one `zstd -T2` process.",
    ]

    text = ["", "== all runs ==", table(hdr, body, False), "", "== per tool (medians) ==",
            table(shdr, sbody, False), ""]
    text += (["== ratios (< 1: backuphub smaller/faster) ==", table(rhdr, rbody, False), ""] if rbody
             else ["(no ratios: backuphub was not run)", ""])
    if smbody:
        text += ["== small files (medians) ==", table(smhdr, smbody, False), ""]
        if smrbody:
            text += [table(smrhdr, smrbody, False), ""]
    if zstd_wall is not None:
        text += [f"zstd -T2 -{meta.get('zstd_level', '?')} on the day-1 files of the full series: "
                 f"{fmt(zstd_wall, 2)} s wall (median)", ""]
    if targets8:
        text += ["== targets (issue 8) =="] + targets8 + [""]
    if targets:
        text += ["== targets (issue 2) =="] + targets + [""]
    text += desc
    print("\n".join(text))

    md = ["# backuphub benchmark results", "", "Generated by `bench/run.sh`; do not edit by hand.", ""]
    md += [d + "  " for d in desc] + ["", "## Per tool (medians)", "", table(shdr, sbody, True), "", "## Ratios", ""]
    md += (["Below 1 means backuphub is faster / smaller.", "", table(rhdr, rbody, True), ""] if rbody
           else ["backuphub was not run (binary missing or left out of BENCH_TOOLS), so there are no ratios.", ""])
    if targets8:
        md += ["## Targets (issue 8)", ""] + [f"- {t}" for t in targets8] + [""]
    if smbody:
        md += ["## Small files (medians)", "", table(smhdr, smbody, True), ""]
        if smrbody:
            md += ["Below 1 means backuphub is faster / smaller.", "", table(smrhdr, smrbody, True), ""]
    if zstd_wall is not None:
        md += [f"Large-stream reference: `zstd -q -T2 -{meta.get('zstd_level', '?')} -c dump.sql blob.bin "
               f">/dev/null` on the day-1 files: {fmt(zstd_wall, 2)} s wall (median).", ""]
    if targets:
        md += ["## Targets (issue 2)", ""] + [f"- {t}" for t in targets] + [""]
    md += ["## All runs", "", table(hdr, body, True), "", "## Method", ""] + [f"- {n}" for n in notes] + [""]
    with open(a.md, "w") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    main()
