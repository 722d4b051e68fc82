"""The history checker of the fault harness.

Input: the JSON-lines events written by workload.py and harness.py (see workload.py's
docstring).  ``check(events)`` returns a Report whose ``counts`` hold every anomaly kind:

    lost            an acknowledged write (or a record a group member read) that the final
                    read_committed read of its partition does not have
    duplicated      one value at two offsets
    reordered       one producer's records of one partition in another order than sent
                    (per producer instance: values are NAME.INSTANCE.SEQ)
    offset_reused   one offset holding different values (ack vs read vs final read)
    aborted_read    a read_committed read (during the run or the final one) of a value whose
                    transaction never reached commit (aborted, or killed before committing)
    eos             after the processor caught up: an input record whose output is missing
                    or present more than once (exactly-once read-process-write)
    commit_backwards a group's committed offset seen lower than one acknowledged or observed
                    by an earlier, finished operation
    double_owner    two members of one group owning one partition at once, both committing
                    it successfully while they overlap
    topics          a created topic missing at the end, or a deleted one still there
    incomplete      the final read could not reach a partition's end, or the processor
                    never caught up
    crash           a broker process that exited without the harness killing it, or a
                    broker log with "panicked"

Not an anomaly but reported with the faults: "processor hangs", the transactional
processor making no progress for a minute while every node was up (the harness then dumps
its stack into txn.out and kills it).  Seen with librdkafka 2.16: a
send_offsets_to_transaction caught by a broker restart gets AddOffsetsToTxn through but
never sends its TxnOffsetCommit and ignores its own timeout (librdkafka issues 5456 and
5511: coordinator requests never time out; a cached group coordinator that is down is
not looked up again).

Usage: python checker.py HISTORY_DIR_OR_FILE...   (prints the summary, exit 1 on anomalies)
"""

from __future__ import annotations

import heapq
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ["lost", "duplicated", "reordered", "offset_reused", "aborted_read", "eos",
         "commit_backwards", "double_owner", "topics", "incomplete", "crash"]
ORDERED_TOPICS = ("queue", "txn-in")
TXN_OUT = "txn-out"
FAULT_ORDER = ["kill", "partition", "isolate", "split", "one_way", "pause", "delay", "skew",
               "disk_full", "fsync_fail", "processor_kill", "processor_hang", "not_healed"]
FAULT_NAMES = {"kill": "kills", "partition": "partitions", "pause": "pauses", "delay": "delays",
               "skew": "clock skews", "disk_full": "full disks", "fsync_fail": "failed fsyncs",
               "processor_kill": "processor kills", "processor_hang": "processor hangs",
               "isolate": "isolations", "split": "splits", "one_way": "one-way drops",
               "not_healed": "heal timeouts"}


@dataclass
class Report:
    counts: dict = field(default_factory=lambda: {k: 0 for k in KINDS})
    examples: dict = field(default_factory=lambda: defaultdict(list))
    acked: int = 0
    indeterminate: int = 0
    read: int = 0
    final_records: int = 0
    faults: dict = field(default_factory=dict)

    def flag(self, kind: str, detail, n: int = 1) -> None:
        self.counts[kind] += n
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(detail)

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def summary(self, seed, nodes: int) -> str:
        c = self.counts
        extra = [f"{c[k]} {k.replace('_', ' ')}" for k in KINDS[4:] if k != "aborted_read"]
        faults = ", ".join(f"{self.faults[k]} {FAULT_NAMES.get(k, k)}"
                           for k in FAULT_ORDER + sorted(set(self.faults) - set(FAULT_ORDER))
                           if self.faults.get(k))
        return (f"seed {seed}: {nodes} nodes, {self.acked} acked, {c['lost']} lost, "
                f"{c['duplicated']} duplicated, {c['reordered']} reordered, "
                f"{c['aborted_read']} aborted reads, {c['offset_reused']} offsets reused, "
                + ", ".join(extra)
                + f"; faults: {faults or 'none'}")

    def details(self) -> str:
        lines = []
        for k in KINDS:
            for ex in self.examples.get(k, []):
                lines.append(f"  {k}: {ex}")
        return "\n".join(lines)


def load(paths) -> list[dict]:
    events = []
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    for f in files:
        with open(f) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # the torn last line of a process killed with -9
    return events


def _split_value(v: str):
    """NAME.INSTANCE.SEQ -> ((NAME, INSTANCE), SEQ) or None."""
    parts = v.split(".")
    if len(parts) != 3:
        return None
    try:
        return (parts[0], parts[1]), int(parts[2])
    except ValueError:
        return None


def _txn_of(v: str):
    """The transaction id that wrote a txn-out value: o.<input>.<x> or a.<x>.<j>."""
    if v.startswith("o."):
        return v.rsplit(".", 1)[1], v[2:].rsplit(".", 1)[0]
    if v.startswith("a."):
        return v.split(".")[1], None
    return None, None


def check(events: list[dict]) -> Report:
    r = Report()
    by_kind: dict[str, list] = defaultdict(list)
    for e in events:
        by_kind[e["k"]].append(e)

    for e in by_kind["fault"]:
        if e["kind"] == "unexpected_exit":
            r.flag("crash", f"node {e.get('node')} exited by itself at {e.get('t')}")
        elif e["kind"] == "panic":
            r.flag("crash", f"node {e.get('node')} log has {e.get('count')} panics")
        elif e["kind"] in FAULT_NAMES:
            r.faults[e["kind"]] = r.faults.get(e["kind"], 0) + 1

    # ---- what was written and acknowledged ---------------------------------------------
    acked: dict[str, tuple] = {}
    at: dict[tuple, str] = {}  # (tp, p, o) -> value, from acks and reads

    def place(key, v, source):
        old = at.get(key)
        if old is None:
            at[key] = v
        elif old != v:
            r.flag("offset_reused", f"{key}: {old!r} vs {v!r} ({source})")

    for e in by_kind["ack"]:
        key = (e["tp"], e["p"], e["o"])
        if e["v"] in acked and acked[e["v"]] != key:
            r.flag("duplicated", f"{e['v']!r} acked at {acked[e['v']]} and {key}")
        acked[e["v"]] = key
        place(key, e["v"], "ack")
    r.acked = len(acked)
    r.indeterminate = len({e["v"] for e in by_kind["nack"]} - set(acked))

    # ---- the final read -----------------------------------------------------------------
    final: dict[tuple, list] = defaultdict(list)
    for e in by_kind["final"]:
        final[(e["tp"], e["p"])].extend(e["rs"])
    final_ends = {(e["tp"], e["p"]): e for e in by_kind["final_end"]}
    for key, e in final_ends.items():
        if not e.get("done", True):
            r.flag("incomplete", f"final read of {key} did not reach {e.get('hw')}")
    final_at: dict[tuple, str] = {}
    final_pos: dict[str, list] = defaultdict(list)
    for (tp, p), rs in final.items():
        rs.sort()
        for o, v in rs:
            key = (tp, p, o)
            if key in final_at and final_at[key] != v:
                r.flag("offset_reused", f"{key}: {final_at[key]!r} vs {v!r} (final)")
            final_at[key] = v
            final_pos[v].append(key)
            place(key, v, "final")
        r.final_records += len(rs)

    for v, keys in final_pos.items():
        if len(set(keys)) > 1:
            r.flag("duplicated", f"{v!r} at {sorted(set(keys))}", len(set(keys)) - 1)

    have_final = bool(by_kind["final_end"])
    # Every partition that took an acknowledged write must have been read to its end: a
    # final read that never ran (or skipped a partition) would hide every loss in it.
    unread = sorted({(tp, p) for tp, p, _ in acked.values()} - set(final_ends))
    if unread:
        r.flag("incomplete", f"no final read of {len(unread)} partition(s) with acknowledged "
                             f"writes, e.g. {unread[:3]}", len(unread))
    if have_final:
        for v, key in acked.items():
            if v not in final_pos:
                r.flag("lost", f"acked {v!r} at {key} missing from the final read")

    # ---- order per producer instance and partition ----------------------------------------
    for (tp, p), rs in final.items():
        if tp not in ORDERED_TOPICS:
            continue
        last: dict[tuple, int] = {}
        for o, v in rs:
            sv = _split_value(v)
            if sv is None:
                continue
            who, seq = sv
            if who in last and seq < last[who]:
                r.flag("reordered", f"{tp}/{p}@{o}: {v!r} after seq {last[who]}")
            last[who] = max(seq, last.get(who, seq))

    # ---- transactions ---------------------------------------------------------------------
    txn_states: dict[str, set] = defaultdict(set)
    for e in by_kind["txn"]:
        txn_states[e["x"]].add(e["st"])

    def committed_txn(x) -> bool:
        st = txn_states.get(x, set())
        return "commit_start" in st and "abort" not in st

    seen_aborted: set = set()

    def check_txn_value(v, where):
        x, _ = _txn_of(v)
        if x is None or not committed_txn(x):
            if (v, where[0]) not in seen_aborted:
                seen_aborted.add((v, where[0]))
                r.flag("aborted_read", f"{v!r} at {where} (txn {x}: "
                                        f"{sorted(txn_states.get(x, []))})")

    for (tp, p), rs in final.items():
        if tp == TXN_OUT:
            for o, v in rs:
                check_txn_value(v, ("final", tp, p, o))

    # ---- reads during the run ---------------------------------------------------------------
    read_vals: dict[str, tuple] = {}
    for e in by_kind["read"]:
        for o, v in e["rs"]:
            r.read += 1
            key = (e["tp"], e["p"], o)
            place(key, v, f"read by {e['m']}")
            if e["tp"] == TXN_OUT:
                check_txn_value(v, ("read", e["tp"], e["p"], o))
            else:
                read_vals[v] = key
    if have_final:
        for v, key in read_vals.items():
            if v not in final_pos and v not in acked:
                r.flag("lost", f"read {v!r} at {key} missing from the final read")

    # ---- exactly-once: every input once in the output -----------------------------------------
    caught = by_kind["txn_caught_up"]
    if caught:
        if not caught[-1].get("ok"):
            r.flag("incomplete", f"transactional processor did not catch up: {caught[-1]}")
        else:
            outs: dict[str, int] = defaultdict(int)
            for (tp, p), rs in final.items():
                if tp == TXN_OUT:
                    for o, v in rs:
                        _, inp = _txn_of(v)
                        if inp is not None:
                            outs[inp] += 1
            for (tp, p), rs in final.items():
                if tp == "txn-in":
                    for o, v in rs:
                        if outs.get(v, 0) != 1:
                            r.flag("eos", f"input {v!r} ({tp}/{p}@{o}) output "
                                          f"{outs.get(v, 0)} times")

    # ---- committed offsets never move backwards ----------------------------------------------
    ops = defaultdict(list)  # (g, tp, p) -> [(ts, te, off, what)]
    for e in by_kind["commit"]:
        if e.get("ok"):
            for p, o in e["offs"].items():
                ops[(e["g"], e["tp"], int(p))].append((e["ts"], e["te"], o, f"commit by {e['m']}"))
    for e in by_kind["committed"]:
        for p, o in e["offs"].items():
            ops[(e["g"], e["tp"], int(p))].append((e["ts"], e["te"], o, "observed"))
    for key, lst in ops.items():
        lst.sort()
        heap: list = []
        floor, floor_what = -1, None
        for ts, te, off, what in lst:
            while heap and heap[0][0] < ts:
                _, o2, w2 = heapq.heappop(heap)
                if o2 > floor:
                    floor, floor_what = o2, w2
            if off < floor:
                r.flag("commit_backwards", f"{key}: {what} {off} at {ts:.3f} after {floor_what} "
                                           f"{floor}")
            heapq.heappush(heap, (te, off, what))

    # ---- two owners of one partition at once --------------------------------------------------
    intervals = defaultdict(list)  # (g, tp, p) -> [(start, end, member)]
    open_: dict[tuple, float] = {}  # (g, member, tp, p) -> start
    for e in sorted(by_kind["assign"] + by_kind["revoke"] + by_kind["left"],
                    key=lambda e: e["t"]):
        if e["k"] == "assign":
            for tp, p in e["ps"]:
                open_.setdefault((e["g"], e["m"], tp, p), e["t"])
        else:
            ps = e.get("ps")
            for (g, m, tp, p), start in list(open_.items()):
                if g == e["g"] and m == e["m"] and (ps is None or [tp, p] in ps):
                    intervals[(g, tp, p)].append((start, e["t"], m))
                    del open_[(g, m, tp, p)]
    for (g, m, tp, p), start in open_.items():
        intervals[(g, tp, p)].append((start, float("inf"), m))
    commits_by = defaultdict(list)  # (g, tp, p, member) -> [te]
    for e in by_kind["commit"]:
        if e.get("ok"):
            for p in e["offs"]:
                commits_by[(e["g"], e["tp"], int(p), e["m"])].append(e["te"])
    for (g, tp, p), ivs in intervals.items():
        ivs.sort()
        for i, (s1, e1, m1) in enumerate(ivs):
            for s2, e2, m2 in ivs[i + 1:]:
                if s2 >= e1:
                    break
                if m1 == m2:
                    continue
                lo, hi = max(s1, s2), min(e1, e2)
                c1 = any(lo <= t <= hi for t in commits_by[(g, tp, p, m1)])
                c2 = any(lo <= t <= hi for t in commits_by[(g, tp, p, m2)])
                if c1 and c2:
                    r.flag("double_owner", f"{g} {tp}/{p}: {m1} and {m2} both committed while "
                                           f"owning it in [{lo:.3f}, {hi:.3f}]")

    # ---- admin: created topics exist, deleted ones are gone --------------------------------------
    finals = by_kind["adm_final"]
    if finals:
        present = set(finals[-1]["tps"])
        created, delete_tried, deleted = set(), set(), set()
        for e in by_kind["adm"]:
            if e["op"] == "create" and e.get("ok"):
                created.add(e["tp"])
            if e["op"] == "delete":
                delete_tried.add(e["tp"])
                if e.get("ok"):
                    deleted.add(e["tp"])
        for t in sorted(created - delete_tried - present):
            r.flag("topics", f"created topic {t} missing at the end")
        for t in sorted(deleted & present):
            r.flag("topics", f"deleted topic {t} still present at the end")
    return r


def main(argv: list[str]) -> int:
    seed = "?"
    nodes = 1
    args = []
    i = 0
    while i < len(argv):
        if argv[i] == "--seed":
            seed = argv[i + 1]
            i += 2
        elif argv[i] == "--nodes":
            nodes = int(argv[i + 1])
            i += 2
        else:
            args.append(argv[i])
            i += 1
    report = check(load(args))
    if not report.ok:
        print(report.details())
    print(report.summary(seed, nodes))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
