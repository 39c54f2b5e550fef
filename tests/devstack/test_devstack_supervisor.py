"""Process supervision: one demo at a time, clear start failures, and nothing left running afterwards."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devstack.stack import free_port
from devstack.supervisor import (
    AlreadyRunning,
    DemoLock,
    StartError,
    Supervisor,
    descendants,
    http_ok,
    pid_alive,
    stop_pids,
)

# A service that starts a grandchild (like the cluster stand-in starts model servers) and serves HTTP.
SERVICE = textwrap.dedent("""
    import http.server, subprocess, sys, pathlib
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    pathlib.Path(sys.argv[2]).write_text(str(child.pid))
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def _supervisor(tmp_path: Path) -> Supervisor:
    return Supervisor(logdir=tmp_path / "logs", registry=tmp_path / "processes.json")


def test_a_second_demo_is_refused_with_who_holds_the_lock(tmp_path: Path) -> None:
    lock_path = tmp_path / "demo.lock"
    first = DemoLock(lock_path)
    first.acquire("output ./out/demo")
    with pytest.raises(AlreadyRunning, match=r"already running \(pid \d+, output ./out/demo\)"):
        DemoLock(lock_path).acquire("output elsewhere")
    first.release()
    second = DemoLock(lock_path)
    second.acquire("output elsewhere")
    second.release()


def test_the_lock_of_a_killed_demo_is_free_again(tmp_path: Path) -> None:
    lock_path = tmp_path / "demo.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from devstack.supervisor import DemoLock; "
         f"lock = DemoLock(__import__('pathlib').Path({str(lock_path)!r})); lock.acquire('x'); print('held', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    with pytest.raises(AlreadyRunning):
        DemoLock(lock_path).acquire("y")
    holder.kill()
    holder.wait()
    lock = DemoLock(lock_path)
    lock.acquire("y")
    lock.release()


def test_stopping_stops_the_service_and_what_it_started(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path)
    port = free_port()
    grandchild_file = tmp_path / "grandchild.pid"
    svc = sup.start("svc", [sys.executable, "-c", SERVICE, str(port), str(grandchild_file)],
                    ready=http_ok(f"http://127.0.0.1:{port}/"), ports=[port])
    grandchild = int(grandchild_file.read_text())
    assert svc.running() and pid_alive(grandchild)
    assert sup.stop_all() == []
    assert not pid_alive(svc.pid or 0) and not pid_alive(grandchild)
    assert sup.alive() == []
    assert '"name": "svc"' in (tmp_path / "processes.json").read_text()


def test_a_port_in_use_is_named_and_nothing_is_started(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StartError, match=f"port {port} on 127.0.0.1 is in use"):
            sup.start("svc", [sys.executable, "-c", SERVICE, str(port), str(tmp_path / "g")], ports=[port])
    assert sup.history == []


def test_a_missing_program_and_an_early_exit_are_clear_errors(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path)
    with pytest.raises(StartError, match="no-such-binary-kanari not found"):
        sup.start("ghost", ["no-such-binary-kanari"])
    with pytest.raises(StartError, match=r"(?s)crasher exited with code 3 while starting:.*config is broken"):
        sup.start("crasher", [sys.executable, "-c", "import sys; print('config is broken'); sys.exit(3)"],
                  ready=lambda: False)
    assert sup.alive() == []


def test_restart_replaces_the_process(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path)
    port = free_port()
    svc = sup.start("svc", [sys.executable, "-c", SERVICE, str(port), str(tmp_path / "g")],
                    ready=http_ok(f"http://127.0.0.1:{port}/"))
    first = svc.pid
    sup.kill("svc")
    assert not svc.running()
    sup.restart("svc")
    assert svc.running() and svc.pid != first and svc.restarts == 1
    sup.stop_all()
    assert sup.alive() == []


def test_strays_recorded_by_a_service_are_swept_but_reused_pids_are_left_alone(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "devstack.predictor"],
                             start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    (pids / "rev-1.pid").write_text(str(stray.pid))
    (pids / "rev-2.pid").write_text(str(other.pid))  # not a predictor any more: must survive the sweep
    sup = Supervisor(logdir=tmp_path / "logs", registry=tmp_path / "p.json", extra_pid_dirs=[pids])
    try:
        assert sup.stray_pids() == [stray.pid]
        sup.stop_all(timeout=5)
        stray.wait(5)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_descendants_and_stop_pids() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert child.pid in descendants()
        started = time.monotonic()
        stop_pids([child.pid], timeout=5)
        child.wait(5)
        assert time.monotonic() - started < 5
    finally:
        if child.poll() is None:
            child.kill()
