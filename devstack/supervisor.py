"""Process supervision for the embedded defaults: start, wait until ready, restart, stop, and a lock.

Every process runs in its own process group (so stopping it stops whatever it started), logs to a file, and
is recorded in a registry file (`processes.json`: name, pid, command) the moment it starts, so that whatever
happens to the supervisor, what it started can be found and stopped. Processes started by a supervised
process (the predictors of the KServe stand-in) are recorded in pid files under `extra_pid_dirs`; the
final sweep stops them too, after checking the pid still runs the expected command.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devstack.stack import ManagedProcess, port_in_use


class StartError(RuntimeError):
    """A service did not come up; the message says which, why, and where its log is."""


class AlreadyRunning(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------ lock
def default_lock_path() -> Path:
    return Path(tempfile.gettempdir()) / f"kanari-demo-{os.getuid()}.lock"


class DemoLock:
    """One demo per user and machine: an flock, released by the kernel even if the process is killed."""

    def __init__(self, path: Path | None = None):
        self.path = path or default_lock_path()
        self._fh: IO[str] | None = None

    def acquire(self, description: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise AlreadyRunning(
                f"another Kanari demo is already running ({holder}); stop it first (Ctrl-C in its terminal, "
                f"or kill its pid), or wait for it to finish. Lock file: {self.path}"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, {description}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.seek(0)
                self._fh.truncate()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


# ------------------------------------------------------------------------------------------- processes
def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return 200 <= resp.status < 300
        except OSError:
            return False

    return check


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; only its parent has not collected it yet.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Service:
    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log: Path
    url: str = ""
    ready: Callable[[], bool] | None = None
    ports: tuple[int, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    logdir: Path
    registry: Path
    extra_pid_dirs: list[Path] = field(default_factory=list)
    # Commands a pid from extra_pid_dirs must be running for the sweep to stop it (guards against pid reuse).
    extra_commands: tuple[str, ...] = ("devstack.predictor",)
    services: dict[str, Service] = field(default_factory=dict)
    adopted: dict[str, ManagedProcess] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    tracked: dict[int, str] = field(default_factory=dict)  # pid -> what its command line must contain

    def _record(self, name: str, pid: int, argv: Iterable[str]) -> None:
        self.history.append({"name": name, "pid": pid, "argv": list(argv), "started": time.time()})
        self.registry.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.registry.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": self.history}, indent=1))
        tmp.replace(self.registry)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        url: str = "",
        ready: Callable[[], bool] | None = None,
        ports: Iterable[int] = (),
        timeout: float = 60.0,
    ) -> Service:
        ports = tuple(ports)
        busy = [p for p in ports if port_in_use(p)]
        if busy:
            raise StartError(f"{name}: port {', '.join(map(str, busy))} on 127.0.0.1 is in use by another program")
        self.logdir.mkdir(parents=True, exist_ok=True)
        svc = Service(name, list(argv), dict(env or os.environ), self.logdir / f"{name}.log", url, ready, ports)
        self.services[name] = svc
        self._spawn(svc)
        self.wait_ready(svc, timeout)
        return svc

    def _spawn(self, svc: Service) -> None:
        with svc.log.open("ab") as out:
            try:
                svc.proc = subprocess.Popen(
                    svc.argv, env=svc.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise StartError(f"{svc.name}: {svc.argv[0]} not found; is it installed and on PATH?") from None
        self._record(svc.name, svc.proc.pid, svc.argv)

    def wait_ready(self, svc: Service, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert svc.proc is not None
            if svc.proc.poll() is not None:
                raise StartError(f"{svc.name} exited with code {svc.proc.returncode} while starting:\n"
                                 f"{tail(svc.log)}\n(full log: {svc.log})")
            if svc.ready is None or svc.ready():
                return
            if time.monotonic() > deadline:
                raise StartError(f"{svc.name} not ready after {timeout:.0f}s (log: {svc.log}):\n{tail(svc.log)}")
            time.sleep(0.1)

    def adopt(self, proc: ManagedProcess) -> None:
        """A process started elsewhere (devstack.stack) that this supervisor now stops."""
        self.adopted[proc.name] = proc
        self._record(proc.name, proc.proc.pid, [str(a) for a in proc.proc.args])  # type: ignore[union-attr]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        svc = self.services[name]
        if svc.running():
            assert svc.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(svc.proc.pid, sig)
            svc.proc.wait()

    def restart(self, name: str, timeout: float = 60.0) -> Service:
        svc = self.services[name]
        self.kill(name, signal.SIGTERM)
        svc.restarts += 1
        self._spawn(svc)
        self.wait_ready(svc, timeout)
        return svc

    def stop_all(self, timeout: float = 10.0) -> list[str]:
        """Stop everything, newest first; returns what had to be killed after SIGTERM."""
        killed: list[str] = []
        for name in reversed(list(self.services)):
            svc = self.services[name]
            proc = svc.proc
            if proc is not None and proc.poll() is None:
                if not _terminate_group(proc.pid, functools.partial(_exited, proc), timeout):
                    killed.append(name)
                proc.wait()
        for name in reversed(list(self.adopted)):
            self.adopted[name].stop(timeout)
        for pid in self.stray_pids():
            if not _terminate_group(pid, functools.partial(_gone, pid), timeout):
                killed.append(f"pid {pid}")
        return killed

    def track(self, pid: int, command: str) -> None:
        """A process some supervised process started in its own session (stopped with everything else)."""
        self.tracked[pid] = command
        self._record(f"tracked:{command}", pid, _cmdline(pid).split())

    def stray_pids(self) -> list[int]:
        """Pids recorded by supervised processes that still run what was recorded."""
        out = [pid for pid, command in self.tracked.items() if pid_alive(pid) and command in _cmdline(pid)]
        for d in self.extra_pid_dirs:
            for f in sorted(d.glob("*.pid")) if d.is_dir() else []:
                with contextlib.suppress(ValueError, OSError):
                    pid = int(f.read_text().strip())
                    if pid not in out and pid_alive(pid) and any(c in _cmdline(pid) for c in self.extra_commands):
                        out.append(pid)
        return out

    def alive(self) -> list[int]:
        """Every pid this supervisor ever started (or that its children recorded) that is still running."""
        return [h["pid"] for h in self.history if still_running(h["pid"], h["argv"])] + self.stray_pids()


def descendants(root: int | None = None) -> list[int]:
    """Every live process below `root` (default: this one), from /proc."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return [p for p in out if pid_alive(p)]


def stop_pids(pids: Iterable[int], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is still there after `timeout`."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def still_running(pid: int, argv: Sequence[str]) -> bool:
    """The pid is alive and still runs the recorded command (not a reused pid)."""
    return pid_alive(pid) and bool(argv) and _cmdline(pid).startswith(str(argv[0]))


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None


def _gone(pid: int) -> bool:
    return not pid_alive(pid)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return out


def _terminate_group(pid: int, gone: Callable[[], bool], timeout: float) -> bool:
    """SIGTERM the process group led by `pid`; SIGKILL it if anything in it outlives `timeout`.

    True when everything left after SIGTERM."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone() and not group_members(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
