"""Who owns an in-flight request: each gateway process registers an instance in the
ledger (its host, pid and the pid's start time) and renews a lease while it lives.

A gateway is dead when its process is gone from this host (checked at once: a restart
recovers its predecessor's rows within seconds) or, on another host, when its lease has
expired. A live gateway's rows are never recovered, whatever their age.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

LEASE_S = 30.0  # a gateway renews its lease every LEASE_S / 3


def host_id() -> str:
    """This machine and boot: pids are comparable only within one."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "noboot"
    return f"{socket.gethostname()[:180]}/{boot}"


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with
    the pid, it tells a live gateway from a new process that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int, started: str | None) -> bool:
    """Is the process that registered as (pid, started) still running on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    now = process_start(pid)
    return started is None or now is None or now == started
