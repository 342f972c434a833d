"""CPU time and memory of a process and its descendants, read from /proc (Linux only).

CPU is ``utime + stime`` from ``/proc/<pid>/stat`` (all threads of the process, in clock ticks,
usually 10 ms); memory is ``VmRSS`` / ``VmHWM`` from ``/proc/<pid>/status``. Summing over the
process tree covers nginx's worker beside its master.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Memory", "cpu_seconds", "memory", "process_tree", "reset_peak_rss", "write_bytes"]

_PROC = Path("/proc")
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rfind(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its descendants."""
    ticks = 0
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return ticks / _TICKS_PER_S


def write_bytes(pid: int) -> int | None:
    """Bytes ``pid`` and its descendants caused to be written to storage (/proc/PID/io)."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/io") as f:
                fields = dict(line.split(":", 1) for line in f)
        except OSError:
            return None
        total += int(fields["write_bytes"])
    return total


@dataclass(frozen=True, slots=True)
class Memory:
    rss_kb: int  # VmRSS now
    hwm_kb: int  # VmHWM: peak RSS since start or since the last reset_peak_rss


def memory(pid: int) -> Memory:
    """Resident memory of ``pid`` and its descendants (sums; the peak is a sum of peaks)."""
    rss = hwm = 0
    for member in process_tree(pid):
        try:
            lines = (_PROC / str(member) / "status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return Memory(rss_kb=rss, hwm_kb=hwm)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``clear_refs`` value 5, Linux >= 4.0); False if refused."""
    ok = True
    for member in process_tree(pid):
        try:
            (_PROC / str(member) / "clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok
