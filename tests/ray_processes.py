"""Find Ray's processes by the title Ray gives them (`ray::<actor class>[.<method>]`),
so tests can kill a replica, a Train worker or a Train controller by its pid."""

from __future__ import annotations

from pathlib import Path


def processes_titled(prefix: str) -> set[int]:
    """Pids of live processes whose title starts with `prefix` (e.g. `ray::RayTrainWorker`)."""
    pids = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        if title.startswith(prefix):
            pids.add(int(cmdline.parent.name))
    return pids
