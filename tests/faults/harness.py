"""The fault-injection harness: N ``gregor serve`` nodes, each in its own network namespace,
real clients (workload.py) in another, faults on a schedule drawn from a seed, then a
final read_committed read of everything and the history checker.

    python tests/faults/harness.py --seed SEED --minutes M [--nodes N] [--drop-one-acked]

Prints the checker's summary line last; exit 0 when no anomaly, 1 on any anomaly, 2 on a
harness error.  On failure the history and broker logs are kept in target/faults/SEED/.
Needs root (namespaces, tmpfs mounts), iproute2, nftables; faketime and a C compiler for
the clock-skew and failed-fsync faults (skipped with a note when missing).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import checker  # noqa: E402
from netns import CLIENT_IP, Network, node_ip, sweep_leftovers  # noqa: E402
from node import REPO_ROOT, Node, build_failfsync, faketime_lib, voters_of  # noqa: E402

PARTITIONS = 3
TXN_ID = "gf-txn"
HANG_SECONDS = 60
# A cluster's topics: every partition on every node, acks=all needs two of them.
CLUSTER_RF = 3
CLUSTER_MIN_INSYNC = 2
# Before each fault of a cluster schedule the previous one must have healed (every partition
# led, full ISR), so at most one node is ever down and the quorum and min.insync hold.
HEAL_TIMEOUT = 90


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Harness:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.rng = random.Random(args.seed)
        # The sweep finds a dead run's mounts by this name (pid of the harness).
        self.work = Path(args.workdir or tempfile.gettempdir()) / f"gregor-faults-{os.getpid()}"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.hist = self.work / "history"
        self.hist.mkdir()
        self.net = Network(args.nodes)
        self.nodes: list[Node] = []
        self.procs: list[subprocess.Popen] = []
        self.fault_log = open(self.hist / "faults.jsonl", "a", buffering=1)
        self.txn_proc: subprocess.Popen | None = None
        self.txn_lock = threading.Lock()
        self.txn_stop = threading.Event()
        self.txn_starts = 0
        self.cleaned = False
        self.python = args.python
        self.cluster = args.nodes > 1
        # The transactional workload on a cluster: off unless --txn, so that CI's short
        # 3-node schedule stays a queue workload; transactions across brokers (markers to
        # other leaders, a coordinator that follows `__transaction_state`) are there, and
        # the long documented run uses --txn.
        self.txn = not self.cluster or args.txn
        self.unhealed = 0

    # ---- bookkeeping ---------------------------------------------------------------------

    def record(self, kind: str, **kw) -> None:
        kw.update(k="fault", kind=kind, t=round(time.time(), 4))
        self.fault_log.write(json.dumps(kw) + "\n")

    def bootstrap(self) -> str:
        return ",".join(n.addr for n in self.nodes)

    def client(self, *args: str, out: str) -> subprocess.Popen:
        f = open(self.work / out, "ab")
        p = subprocess.Popen(self.net.exec_prefix(self.net.client_ns)
                             + [self.python, str(HERE / "workload.py"), *args],
                             stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        f.close()
        self.procs.append(p)
        return p

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        self.txn_stop.set()
        for p in self.procs + ([self.txn_proc] if self.txn_proc else []):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                    p.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        for n in self.nodes:
            try:
                n.resume()
                n.kill9()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
        self.net.destroy()
        for n in self.nodes:
            n.unmount()

    # ---- setup ---------------------------------------------------------------------------

    def start(self) -> None:
        sweep_leftovers()
        atexit.register(self.cleanup)
        self.net.create()
        self.failfsync = build_failfsync(self.work)
        self.faketime = faketime_lib()
        for i in range(self.args.nodes):
            n = Node(self.net, i, self.args.binary, self.work, self.args.disk_mb, self.failfsync,
                     voters_of(self.args.nodes))
            n.mount()
            self.nodes.append(n)
            # Every node is spawned before any is awaited: a voter may wait for the quorum.
            n.spawn()
        for n in self.nodes:
            n.await_ready()
        log(f"{len(self.nodes)} node(s) up at {self.bootstrap()} (prefix {self.net.prefix}, "
            f"delay via {'netem' if self.net.has_netem else 'tbf'}, "
            f"faketime {'yes' if self.faketime else 'no'}, "
            f"failfsync {'yes' if self.failfsync else 'no'})")
        rf = [str(CLUSTER_RF), str(CLUSTER_MIN_INSYNC)] if self.cluster else []
        setup = self.client("setup", self.bootstrap(), str(self.hist / "setup.jsonl"),
                            str(PARTITIONS), *rf, out="setup.out")
        if setup.wait(120) != 0:
            raise RuntimeError("topic setup failed; see setup.out")
        if self.cluster and not self.wait_healthy("after setup"):
            raise RuntimeError("the cluster never formed fully; see healthy.out")

    def wait_healthy(self, why: str) -> bool:
        """Cluster: waits (up to HEAL_TIMEOUT) until every broker is listed and every
        partition is led with its full ISR.  False (logged, counted) if it never is."""
        if not self.cluster:
            return True
        t0 = time.monotonic()
        p = self.client("healthy", self.bootstrap(), str(self.args.nodes), str(HEAL_TIMEOUT),
                        out="healthy.out")
        ok = p.wait() == 0
        self.procs.remove(p)
        took = time.monotonic() - t0
        if not ok:
            self.unhealed += 1
            log(f"cluster not healed {why} after {took:.1f}s (see healthy.out); going on")
            self.record("not_healed", why=why)
        elif took > 10:
            log(f"cluster healed {why} after {took:.1f}s")
        return ok

    def start_workloads(self) -> None:
        self.queue = self.client("queue", self.bootstrap(), str(self.hist / "queue.jsonl"),
                                 str(PARTITIONS), str(self.args.rate), str(self.seed),
                                 out="queue.out")
        self.admin = self.client("admin", self.bootstrap(), str(self.hist / "admin.jsonl"),
                                 str(self.seed), str(min(CLUSTER_RF, self.args.nodes)),
                                 out="admin.out")
        if self.txn:
            self.txn_thread = threading.Thread(target=self.txn_supervisor, daemon=True)
            self.txn_thread.start()

    def txn_supervisor(self) -> None:
        """Keeps one transactional processor running; restarts it whenever it exits."""
        while not self.txn_stop.is_set():
            with self.txn_lock:
                if self.txn_stop.is_set():
                    return
                self.txn_starts += 1
                f = open(self.work / "txn.out", "ab")
                self.txn_proc = subprocess.Popen(
                    self.net.exec_prefix(self.net.client_ns)
                    + [self.python, str(HERE / "workload.py"), "txn", self.bootstrap(),
                       str(self.hist / f"txn-{self.txn_starts}.jsonl"), str(PARTITIONS), TXN_ID,
                       str(self.seed * 1000 + self.txn_starts)],
                    stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                f.close()
            self.watch_processor(self.txn_proc, self.hist / f"txn-{self.txn_starts}.jsonl")
            self.txn_stop.wait(1.0)

    def watch_processor(self, proc: subprocess.Popen, hist: Path) -> None:
        """Waits for the processor to exit; one that writes no history for HANG_SECONDS while
        every node is up is asked for its Python stack (SIGUSR1, into txn.out), killed and
        recorded as a hang (the checker reports hangs)."""
        last_size, last_change = -1, time.monotonic()
        while proc.poll() is None:
            time.sleep(1.0)
            size = hist.stat().st_size if hist.exists() else 0
            healthy = all(n.alive() and not n.paused for n in self.nodes)
            if size != last_size or not healthy or self.txn_stop.is_set():
                last_size, last_change = size, time.monotonic()
            elif time.monotonic() - last_change > HANG_SECONDS:
                log(f"processor {proc.pid} made no progress for {HANG_SECONDS}s; dumping its "
                    "stack to txn.out and killing it")
                proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                proc.kill()
                self.record("processor_hang", pid=proc.pid)
                proc.wait()

    def kill_processor(self) -> None:
        with self.txn_lock:
            if self.txn_proc is not None and self.txn_proc.poll() is None:
                self.txn_proc.kill()
                self.record("processor_kill")

    # ---- faults --------------------------------------------------------------------------

    def schedule(self):
        """The fault schedule, drawn from the seed before anything runs."""
        kinds = ["kill", "pause", "partition", "delay", "disk_full"]
        if self.txn:
            kinds.append("processor_kill")
        if self.faketime:
            kinds.append("skew")
        if self.failfsync:
            kinds.append("fsync_fail")
        if self.args.nodes > 1:
            # Faults between nodes: one node cut off from everyone, a minority/majority
            # split (clients still reach every node), a one-way drop between two nodes.
            # One fault at a time, each healed before the next (wait_healthy): at most one
            # node is ever down, so a majority of voters and min.insync.replicas remain.
            kinds += ["isolate", "split", "one_way"]
        if self.args.only:
            kinds = [k for k in kinds if k in self.args.only.split(",")]
        kinds = [k for k in kinds if k not in self.args.skip.split(",")]
        end = self.args.minutes * 60
        t = self.rng.uniform(3, 6)
        plan = []
        while t < end - 10:
            kind = self.rng.choice(kinds)
            node = self.rng.randrange(self.args.nodes)
            dur = round(self.rng.uniform(1, 6), 2)
            plan.append((round(t, 2), kind, node, dur, self.rng.random()))
            t += dur + self.rng.uniform(3, 10)
        return plan

    def note_exit(self, n: Node) -> None:
        """Records a node that died without the harness killing it (a crash)."""
        if n.check_exit():
            log(f"node {n.i} had exited by itself")
            self.record("unexpected_exit", node=n.i)

    def ensure_up(self, n: Node) -> None:
        self.note_exit(n)
        if n.proc is None:
            n.start()

    def restart(self, n: Node, skew: str | None) -> None:
        self.note_exit(n)
        n.kill9()
        n.start(skew=skew)

    def apply(self, kind: str, n: Node, dur: float, x: float) -> None:
        if kind == "kill":
            self.note_exit(n)
            n.kill9()
            time.sleep(x * 2)
            n.start(skew=n.skew)
        elif kind == "pause":
            n.pause()
            time.sleep(dur)
            n.resume()
        elif kind == "partition":
            self.net.isolate_from_clients(n.i)
            time.sleep(dur)
            self.net.heal(n.i)
        elif kind == "delay":
            how = self.net.delay(n.i, int(50 + x * 400))
            self.record("delay_how", how=how)
            time.sleep(dur)
            self.net.undelay(n.i)
        elif kind == "skew":
            hours = (x - 0.5) * 4  # -2h .. +2h of wall clock
            skew = f"{'+' if hours >= 0 else '-'}{abs(int(hours * 3600))}s"
            self.restart(n, skew)
            time.sleep(dur * 2)
            self.restart(n, None)
        elif kind == "disk_full":
            size = n.fill_disk()
            self.record("ballast", node=n.i, bytes=size)
            time.sleep(dur)
            n.free_disk()
            # A log that hit ENOSPC may be offline until restart: the restart is part of
            # the heal (as an operator would do), and is counted with the fault.
            self.restart(n, n.skew)
        elif kind == "fsync_fail":
            n.fail_fsync(True)
            time.sleep(dur)
            n.fail_fsync(False)
            # After a failed fsync the log is offline by design; restart to recover.
            self.restart(n, n.skew)
        elif kind in ("isolate", "split", "one_way"):
            n_all = self.args.nodes
            others = [j for j in range(n_all) if j != n.i]
            if kind == "isolate":
                cut = {n.i: [node_ip(j) for j in others] + [CLIENT_IP]}
            elif kind == "split":
                size = max(1, (n_all - 1) // 2)
                minority = [n.i] + random.Random(x).sample(others, size - 1)
                majority = [j for j in range(n_all) if j not in minority]
                cut = {m: [node_ip(j) for j in majority] for m in minority}
            else:
                cut = {n.i: [node_ip(others[int(x * len(others)) % len(others)])]}
            for m, ips in cut.items():
                self.net.block(m, ips, "in" if kind == "one_way" else "both")
            time.sleep(dur)
            for m in cut:
                self.net.heal(m)
        elif kind == "processor_kill":
            self.kill_processor()
            return
        self.record(kind, node=n.i, dur=dur)

    def run_schedule(self) -> None:
        plan = self.schedule()
        t0 = time.monotonic()
        end = t0 + self.args.minutes * 60
        skipped = 0
        for at, kind, node, dur, x in plan:
            if self.cluster and time.monotonic() > end:
                # Waiting for heals can push the schedule past its end: the rest is skipped.
                skipped += 1
                continue
            while time.monotonic() < t0 + at:
                for n in self.nodes:
                    self.ensure_up(n)
                if self.queue.poll() is not None:
                    raise RuntimeError("queue workload exited early; see queue.out")
                time.sleep(0.2)
            n = self.nodes[node]
            for m in self.nodes:
                self.ensure_up(m)
            self.wait_healthy(f"before {kind} on node {node}")
            log(f"fault {kind} on node {node} ({dur}s)")
            self.apply(kind, n, dur, x)
        if skipped:
            log(f"{skipped} fault(s) of the schedule skipped: past the end after heal waits")
        while time.monotonic() < end:
            for n in self.nodes:
                self.ensure_up(n)
            time.sleep(0.5)

    def heal_all(self) -> None:
        self.net.heal_all()
        for n in self.nodes:
            n.resume()
            n.fail_fsync(False)
            n.free_disk()
            self.ensure_up(n)
            if n.skew:
                self.restart(n, None)

    # ---- the end -------------------------------------------------------------------------

    def finish(self) -> int:
        log("schedule done; healing and draining")
        self.heal_all()
        for p in (self.queue, self.admin):
            p.send_signal(signal.SIGTERM)
        for p in (self.queue, self.admin):
            try:
                p.wait(240)
            except subprocess.TimeoutExpired:
                log("a workload did not stop in time; killing it")
                p.kill()
        if self.cluster and not self.wait_healthy("before the final read"):
            log("reading anyway: the final read waits for each partition's high watermark")
        if self.txn:
            catch = self.client("catchup", self.bootstrap(), str(self.hist / "catchup.jsonl"),
                                str(PARTITIONS), "180", out="catchup.out")
            catch.wait()
        self.txn_stop.set()
        with self.txn_lock:
            if self.txn_proc is not None and self.txn_proc.poll() is None:
                self.txn_proc.kill()
                self.txn_proc.wait()
        fin_args = ["final", self.bootstrap(), str(self.hist / "final.jsonl"),
                    TXN_ID if self.txn else "-"]
        if self.args.drop_one_acked:
            fin_args.append("--drop-one-acked")
        fin = self.client(*fin_args, out="final.out")
        fin.wait()
        for n in self.nodes:
            self.note_exit(n)
        # SIGTERM to every node at once: one by one, the last would lose its quorum while
        # moving its leaderships away (controlled shutdown) and wait out its timeout.
        for n in self.nodes:
            if n.proc is not None:
                n.resume()
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            n.stop_gracefully(signalled=True)
        for n in self.nodes:
            panics = n.log_path.read_bytes().count(b"panicked")
            if panics:
                self.record("panic", node=n.i, count=panics)
        report = checker.check(checker.load([self.hist]))
        exits = sum(n.unexpected_exits for n in self.nodes)
        line = report.summary(self.seed, len(self.nodes))
        log(f"{report.final_records} records in the final read, {report.read} read during the "
            f"run, {report.indeterminate} sends of unknown outcome, {self.txn_starts} processor "
            f"starts, {exits} broker exits not caused by the harness"
            + (f", transactional workload {'on' if self.txn else 'off'}, {self.unhealed} "
               f"heal waits timed out" if self.cluster else ""))
        if not report.ok:
            print(report.details(), flush=True)
        if not report.ok or self.args.keep:
            self.save()
        self.summary = line
        return 0 if report.ok else 1

    def save(self) -> None:
        """Copies the history, broker logs and client outputs to target/faults/SEED/."""
        out = REPO_ROOT / "target" / "faults" / str(self.seed)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        shutil.copytree(self.hist, out / "history")
        for n in self.nodes:
            if n.log_path.exists():
                shutil.copy(n.log_path, out / f"broker-n{n.i}.log")
        for f in self.work.glob("*.out"):
            shutil.copy(f, out / f.name)
        extra = "".join(f" --{k} {getattr(self.args, k)}" for k in ("only", "skip")
                        if getattr(self.args, k))
        extra = f'FAULTS_ARGS="{extra.strip()}" ' if extra else ""
        log(f"history and broker logs in {out} (replay: {extra}./scripts/faults.sh --seed "
            f"{self.seed} --minutes {self.args.minutes:g} --nodes {self.args.nodes})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--rate", type=float, default=100.0,
                    help="records per second per queue producer (two producers)")
    ap.add_argument("--disk-mb", type=int, default=256, help="tmpfs size of each node's disk")
    ap.add_argument("--binary", type=Path, default=REPO_ROOT / "target" / "release" / "gregor")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--workdir", default=None, help="parent of the run's temp dir")
    ap.add_argument("--drop-one-acked", action="store_true",
                    help="broken mode: the final read drops one acked record (checker test)")
    ap.add_argument("--only", default="",
                    help="comma-separated fault kinds to draw from (default: all), e.g. "
                         "kill,pause,partition,delay,skew,disk_full,fsync_fail,processor_kill")
    ap.add_argument("--skip", default="", help="comma-separated fault kinds never to draw")
    ap.add_argument("--keep", action="store_true", help="keep the history even when it passes")
    ap.add_argument("--txn", action="store_true",
                    help="run the transactional workload on a cluster too (off by default "
                         "for --nodes > 1)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("the fault harness needs root (network namespaces, tmpfs)", file=sys.stderr)
        return 2
    h = Harness(args)
    h.summary = None

    def on_signal(sig, _frm):
        raise KeyboardInterrupt(f"signal {sig}")

    signal.signal(signal.SIGTERM, on_signal)
    rc = 2
    try:
        h.start()
        h.start_workloads()
        h.run_schedule()
        rc = h.finish()
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        rc = 130
    except Exception as e:  # noqa: BLE001 - report, clean up, exit 2
        log(f"harness error: {e!r}")
        import traceback
        traceback.print_exc()
        rc = 2
    finally:
        h.cleanup()
        if rc not in (0, 1):
            try:
                h.save()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(h.work, ignore_errors=True)
    if h.summary:
        print(h.summary, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
