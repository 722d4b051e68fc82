"""The history checker flags each anomaly kind when fed a hand-made history that has it,
and nothing in a clean one."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import checker  # noqa: E402


def ack(v, p, o, tp="queue"):
    return {"k": "ack", "tp": tp, "v": v, "p": p, "o": o, "t": 1.0}


def final(tp, p, rs):
    return [{"k": "final", "tp": tp, "p": p, "rs": rs},
            {"k": "final_end", "tp": tp, "p": p, "hw": (rs[-1][0] + 1) if rs else 0, "done": True}]


def txn(x, *states):
    return [{"k": "txn", "x": x, "st": st, "t": 1.0} for st in states]


def clean_history():
    ev = [ack("p0.1.1", 0, 0), ack("p0.1.2", 0, 1), ack("p1.1.1", 0, 2), ack("i0.1.1", 0, 0,
                                                                             "txn-in")]
    ev += final("queue", 0, [[0, "p0.1.1"], [1, "p0.1.2"], [2, "p1.1.1"]])
    ev += final("txn-in", 0, [[0, "i0.1.1"]])
    ev += txn("9-1", "vals", "commit_start", "commit_ok")
    ev += txn("9-2", "vals", "abort")
    ev += final("txn-out", 0, [[0, "o.i0.1.1.9-1"]])
    ev += [{"k": "txn_caught_up", "ok": True}]
    ev += [{"k": "read", "m": "c0.1", "g": "gq", "tp": "queue", "p": 0,
            "rs": [[0, "p0.1.1"], [1, "p0.1.2"]], "t": 2.0}]
    ev += [{"k": "commit", "m": "c0.1", "g": "gq", "tp": "queue", "offs": {"0": 2}, "ts": 2.0,
            "te": 2.1, "ok": True, "t": 2.1},
           {"k": "committed", "g": "gq", "tp": "queue", "offs": {"0": 2}, "ts": 3.0, "te": 3.1,
            "t": 3.1}]
    ev += [{"k": "assign", "m": "c0.1", "g": "gq", "ps": [["queue", 0]], "t": 1.5},
           {"k": "revoke", "m": "c0.1", "g": "gq", "ps": [["queue", 0]], "lost": False, "t": 4.0},
           {"k": "assign", "m": "c1.1", "g": "gq", "ps": [["queue", 0]], "t": 4.5},
           {"k": "commit", "m": "c1.1", "g": "gq", "tp": "queue", "offs": {"0": 3}, "ts": 5.0,
            "te": 5.1, "ok": True, "t": 5.1}]
    ev += [{"k": "adm", "op": "create", "tp": "adm-1", "ok": True},
           {"k": "adm", "op": "create", "tp": "adm-2", "ok": True},
           {"k": "adm", "op": "delete", "tp": "adm-2", "ok": True},
           {"k": "adm_final", "tps": ["adm-1", "queue"]}]
    ev += [{"k": "fault", "kind": "kill"}, {"k": "fault", "kind": "kill"},
           {"k": "fault", "kind": "pause"}]
    return ev


def flagged(events):
    r = checker.check(events)
    return {k: n for k, n in r.counts.items() if n}


def test_clean_history_has_no_anomaly():
    r = checker.check(clean_history())
    assert r.ok, r.details()
    assert r.acked == 4
    line = r.summary(1234, 1)
    assert line.startswith("seed 1234: 1 nodes, 4 acked, 0 lost, 0 duplicated, 0 reordered, "
                           "0 aborted reads")
    assert line.endswith("; faults: 2 kills, 1 pauses")


def test_lost_acked_write():
    ev = clean_history() + [ack("p0.1.3", 0, 3)]
    assert flagged(ev) == {"lost": 1}


def test_no_final_read_of_an_acked_partition_is_incomplete():
    """A final read that never ran (seen: init_transactions failing in it) must not pass as
    "0 lost": the partitions with acknowledged writes were never read."""
    ev = [e for e in clean_history() if e["k"] not in ("final", "final_end")]
    assert flagged(ev).get("incomplete") == 2  # queue/0 and txn-in/0
    ev = clean_history() + [ack("p0.1.9", 2, 0)]  # a partition the final read skipped
    assert flagged(ev) == {"incomplete": 1, "lost": 1}


def test_read_value_missing_from_final_is_lost():
    ev = clean_history() + [{"k": "read", "m": "c0.1", "g": "gq", "tp": "queue", "p": 1,
                             "rs": [[0, "p9.1.1"]], "t": 2.0}]
    assert flagged(ev) == {"lost": 1}


def test_duplicate():
    ev = clean_history() + final("queue", 1, [[0, "p0.1.2"]])
    assert flagged(ev) == {"duplicated": 1}


def test_reordered_within_a_partition():
    ev = [e for e in clean_history() if not (e["k"].startswith("final") and e["tp"] == "queue")]
    ev += final("queue", 0, [[0, "p0.1.2"], [1, "p0.1.1"], [2, "p1.1.1"]])
    got = flagged(ev)
    # The swap also moves each acked value to another offset.
    assert got["reordered"] == 1
    assert set(got) == {"reordered", "offset_reused"}


def test_offset_reused_for_another_value():
    ev = clean_history() + [{"k": "read", "m": "c2.1", "g": "gq", "tp": "queue", "p": 0,
                             "rs": [[1, "p0.1.1"]], "t": 2.0}]
    assert flagged(ev) == {"offset_reused": 1}


def test_aborted_read_under_read_committed():
    ev = clean_history() + final("txn-out", 1, [[0, "a.9-2.0"]])
    assert flagged(ev) == {"aborted_read": 1}


def test_never_committed_read_under_read_committed():
    # The processor was killed before it asked to commit.
    ev = clean_history() + txn("9-3", "vals") + [
        {"k": "read", "m": "rc", "g": "", "tp": "txn-out", "p": 2, "rs": [[0, "o.x.1.1.9-3"]],
         "t": 2.0}]
    assert flagged(ev) == {"aborted_read": 1}


def test_commit_in_doubt_may_be_read():
    ev = clean_history() + txn("9-4", "vals", "commit_start") + final(
        "txn-out", 2, [[0, "o.i0.1.1.9-4"]])
    # Readable, but now the input was processed twice.
    assert flagged(ev) == {"eos": 1}


def test_exactly_once_missing_output():
    ev = [e for e in clean_history() if not (e["k"].startswith("final") and e["tp"] == "txn-out")]
    ev += final("txn-out", 0, [])
    assert flagged(ev) == {"eos": 1}


def test_committed_offset_moving_backwards():
    ev = clean_history() + [{"k": "committed", "g": "gq", "tp": "queue", "offs": {"0": 1},
                             "ts": 6.0, "te": 6.1, "t": 6.1}]
    assert flagged(ev) == {"commit_backwards": 1}


def test_overlapping_operations_are_not_ordered():
    # An observation that started before the commit finished may see the older offset.
    ev = clean_history() + [{"k": "committed", "g": "gq", "tp": "queue", "offs": {"0": 2},
                             "ts": 5.05, "te": 5.2, "t": 5.2}]
    assert flagged(ev) == {}


def test_two_members_owning_one_partition():
    ev = clean_history() + [
        {"k": "assign", "m": "c2.1", "g": "gq", "ps": [["queue", 0]], "t": 3.0},
        {"k": "commit", "m": "c2.1", "g": "gq", "tp": "queue", "offs": {"0": 2}, "ts": 3.2,
         "te": 3.3, "ok": True, "t": 3.3},
        {"k": "commit", "m": "c0.1", "g": "gq", "tp": "queue", "offs": {"0": 2}, "ts": 3.4,
         "te": 3.5, "ok": True, "t": 3.5}]
    assert flagged(ev) == {"double_owner": 1}


def test_zombie_whose_commit_is_refused_is_not_a_double_owner():
    ev = clean_history() + [
        {"k": "assign", "m": "c2.1", "g": "gq", "ps": [["queue", 0]], "t": 3.0},
        {"k": "commit", "m": "c2.1", "g": "gq", "tp": "queue", "offs": {"0": 2}, "ts": 3.2,
         "te": 3.3, "ok": False, "t": 3.3}]
    assert flagged(ev) == {}


def test_topics_lost_or_undeleted():
    ev = clean_history() + [{"k": "adm", "op": "create", "tp": "adm-3", "ok": True},
                            {"k": "adm", "op": "create", "tp": "adm-4", "ok": True},
                            {"k": "adm", "op": "delete", "tp": "adm-4", "ok": True},
                            {"k": "adm_final", "tps": ["adm-1", "adm-4", "queue"]}]
    assert flagged(ev) == {"topics": 2}


def test_incomplete_final_read():
    ev = clean_history() + [{"k": "final_end", "tp": "queue", "p": 1, "hw": 10, "done": False}]
    assert flagged(ev) == {"incomplete": 1}


def test_hung_processor_is_reported_not_flagged():
    ev = clean_history() + [{"k": "fault", "kind": "processor_hang"}]
    assert flagged(ev) == {}
    assert checker.check(ev).summary(1, 1).endswith("; faults: 2 kills, 1 pauses, "
                                                    "1 processor hangs")


def test_broker_exit_is_reported():
    ev = clean_history() + [{"k": "fault", "kind": "unexpected_exit", "node": 0},
                            {"k": "fault", "kind": "panic", "node": 0, "count": 2}]
    assert flagged(ev) == {"crash": 2}


def test_load_skips_a_torn_last_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"k": "ack", "tp": "queue", "v": "p0.1.1", "p": 0, "o": 0}\n{"k": "ac')
    assert [e["k"] for e in checker.load([tmp_path])] == ["ack"]
