"""CPU time and memory of a process and its descendants, from /proc (Linux).

Ray starts its GCS, raylet, workers and Serve replicas as descendants of the process
that called `ray.init()`, so a benchmark that starts its own Ray sees all of its work
here, and everything else on the machine is "foreign".
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stats() -> dict[int, list[str]]:
    """`/proc/<pid>/stat` fields after the command name, per live process."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        stats[int(stat.parent.name)] = text[text.rindex(")") + 2 :].split()
    return stats


def _tree(root: int, stats: dict[int, list[str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    tree, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds of `root` (default: this process) and its descendants: user + system
    time of the live ones, plus what exited children left in their parents' counters
    (a Ray worker that finished is reaped by the raylet and counted there)."""
    stats = _stats()
    tree = _tree(root or os.getpid(), stats)
    return sum(sum(int(v) for v in stats[p][11:15]) / CLOCK_TICKS for p in tree if p in stats)


def cpu_seconds_by_pid() -> dict[int, float]:
    """CPU seconds of every live process, counted as `tree_cpu_seconds` counts them."""
    return {pid: sum(int(v) for v in f[11:15]) / CLOCK_TICKS for pid, f in _stats().items()}


def title(pid: int) -> str:
    """A process's title (Ray names its actors `ray::<class>[.<method>]`); '' if gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode("utf-8", "replace")
    except OSError:
        return ""


def tree_pss(root: int | None = None) -> tuple[int, int]:
    """PSS (KiB) of `root` (default: this process) and its live descendants, and how many
    they are. PSS splits shared pages (Ray's object store) among the processes mapping
    them, so the sum is the tree's real footprint."""
    by_pid = tree_pss_by_pid(root)
    return sum(by_pid.values()), len(by_pid)


def tree_pss_by_pid(root: int | None = None) -> dict[int, int]:
    """PSS (KiB) of each live process of the tree under `root` (default: this process)."""
    pss = {}
    for pid in _tree(root or os.getpid(), _stats()):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:  # exited meanwhile
            continue
        pss[pid] = next(int(x.split()[1]) for x in rollup.splitlines() if x.startswith("Pss:"))
    return pss


def role(pid: int) -> str:
    """What a process is, for grouping memory: its title less the method Ray appends
    (`ray::TrainWorker.train_fn` -> `ray::TrainWorker`), the driver as `driver`."""
    name = title(pid)
    if pid == os.getpid():
        return "driver"
    if name.startswith("ray::"):
        return name.split(".")[0].split()[0]
    return Path(name).name or "?"


def machine_busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class TreeMonitor:
    """Samples the process tree every `interval_s` in a thread while it is entered:
    `peak_mib` (PSS), `peak_by_role` (what each kind of process held when the tree
    peaked, `role`), and `cpu_seconds`, the CPU its processes used meanwhile (by role:
    `cpu_by_role`).

    CPU is summed per process from samples (the last one seen, less what it had used
    at entry) because Ray's raylet does not leave its exited workers' time in its own
    counters: a snapshot at exit would miss every worker that finished in between. A
    process that lives less than `interval_s` can be missed.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self.peak_by_role: dict[str, float] = {}
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._roles: dict[int, str] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_role.values())

    @property
    def cpu_by_role(self) -> dict[str, float]:
        by_role: dict[str, float] = {}
        for pid, cpu in self._last.items():
            name = self._roles.get(pid, "?")
            by_role[name] = by_role.get(name, 0.0) + cpu - self._start.get(pid, 0.0)
        return by_role

    def __enter__(self) -> TreeMonitor:
        self._start = self._tree_cpu()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._thread.join()
        self._last.update(self._tree_cpu())

    def _tree_cpu(self) -> dict[int, float]:
        stats = _stats()
        return {
            pid: (int(stats[pid][11]) + int(stats[pid][12])) / CLOCK_TICKS
            for pid in _tree(os.getpid(), stats)
            if pid in stats
        }

    def _sample(self) -> None:
        while not self._stopped.is_set():
            cpu = self._tree_cpu()
            self._last.update(cpu)
            by_pid = tree_pss_by_pid()
            for pid in cpu.keys() | by_pid.keys():
                name = role(pid)  # Ray workers retitle as they take tasks; idle says least
                if name not in ("?", "ray::IDLE") or pid not in self._roles:
                    self._roles[pid] = name
            total = sum(by_pid.values()) / 1024
            if total > self.peak_mib:
                self.peak_mib = total
                by_role: dict[str, float] = {}
                for pid, kib in by_pid.items():
                    name = self._roles[pid]
                    by_role[name] = by_role.get(name, 0.0) + kib / 1024
                self.peak_by_role = by_role
            self._stopped.wait(self.interval_s)
