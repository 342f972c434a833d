"""The things the relay benchmark measures, each started as a subprocess on 127.0.0.1.

- ``direct``: the fake cloud itself (no relay; the floor);
- ``minimal``: ``bench.minimal_relay`` (what any Python relay costs);
- ``sansio``: ``bench.fast_relay`` (a Python relay with no task per frame; not in the defaults);
- ``nginx``: nginx as a WebSocket reverse proxy (the best transparent relay), one worker process
  so that it gets the same single core a Python event loop can use;
- ``gateway``: ``flipturn-gateway --config <tmp toml> run`` with its upstream at the fake cloud;
- ``gateway-site``: the same with the site power guard on (``mode = "always"``, a limit below the
  chargers' maxima, so it is engaged and capping from the start; not in the defaults).

Every target exposes ``url`` (chargers connect to ``{url}/{chargerId}``) and ``pid`` (the process
whose tree the runner samples; ``None`` for ``direct``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

__all__ = [
    "DirectTarget",
    "GatewayTarget",
    "MinimalRelayTarget",
    "NginxTarget",
    "SansIoRelayTarget",
    "Target",
    "TargetUnavailable",
    "free_port",
    "start_listening_process",
]

HOST = "127.0.0.1"


class TargetUnavailable(Exception):
    """The target cannot run on this machine; the message says why (it is skipped, with a note)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TargetUnavailable(f"exited with code {proc.returncode} during start-up")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TargetUnavailable(f"port {port} not listening after {timeout_s:.0f} s")


def start_listening_process(args: list[str], log: IO[bytes]) -> tuple[subprocess.Popen[bytes], int]:
    """Start a bench process that prints ``LISTENING <port>`` first; return it and the port."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, cwd=_repo_root())
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().split()
    if len(line) != 2 or line[0] != "LISTENING":
        proc.kill()
        raise TargetUnavailable(f"{args[2]} did not start: {line!r}")
    return proc, int(line[1])


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class Target:
    name = "target"
    url = ""
    pid: int | None = None
    _proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class DirectTarget(Target):
    name = "direct"

    def __init__(self, cloud_port: int, workdir: Path) -> None:
        self.url = f"ws://{HOST}:{cloud_port}/ocpp"


class MinimalRelayTarget(Target):
    name = "minimal"
    module = "bench.minimal_relay"

    def __init__(self, cloud_port: int, workdir: Path) -> None:
        log = (workdir / f"{self.name}.log").open("wb")
        args = [sys.executable, "-m", self.module, "--target", f"ws://{HOST}:{cloud_port}"]
        self._proc, port = start_listening_process(args, log)
        self.pid = self._proc.pid
        self.url = f"ws://{HOST}:{port}/ocpp"


class SansIoRelayTarget(MinimalRelayTarget):
    name = "sansio"
    module = "bench.fast_relay"


_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://{host}:{cloud_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            tcp_nodelay on;
        }}
    }}
}}
"""


def find_nginx(install: bool) -> str:
    """The nginx binary; with ``install``, try ``apt-get install -y nginx`` if it is missing."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if install and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "nginx"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=600,
            check=False,
        )
        if os.access("/usr/sbin/nginx", os.X_OK):
            return "/usr/sbin/nginx"
    raise TargetUnavailable("not installed (apt-get install -y nginx needs root and a mirror)")


class NginxTarget(Target):
    name = "nginx"

    def __init__(self, cloud_port: int, workdir: Path, install: bool = True) -> None:
        binary = find_nginx(install)
        port = free_port()
        conf = workdir / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(
            _NGINX_CONF.format(tmp=workdir, host=HOST, port=port, cloud_port=cloud_port, user=user)
        )
        log = (workdir / "nginx.out").open("wb")
        self._proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(workdir)], stdout=log, stderr=log
        )
        self.pid = self._proc.pid
        try:
            wait_for_port(port, self._proc, 10)
        except TargetUnavailable as exc:
            raise TargetUnavailable(f"nginx: {exc}: {_tail(workdir / 'nginx.out')}") from exc
        self.url = f"ws://{HOST}:{port}/ocpp"


_GATEWAY_TOML = """\
[chargers]
host = "{host}"
port = {port}

[upstream]
url = "ws://{host}:{cloud_port}/ocpp"

[api]
host = "{host}"
port = {api_port}

[store]
path = "{db}"
"""

# The guard engaged from the start: 50 chargers x 32 A (charger_max_current_a) = 1600 A > 200 A.
_SITE_TOML = """
[site]
max_current_a = 200
mode = "always"
"""


class GatewayTarget(Target):
    """``flipturn-gateway run`` of this tree; or, with ``source``, of the ``gateway`` package in
    that directory (an earlier version, for before/after runs side by side)."""

    name = "gateway"

    def __init__(
        self, cloud_port: int, workdir: Path, *, source: Path | None = None, site: bool = False
    ) -> None:
        if source is not None:
            self.name = "baseline"
        elif site:
            self.name = "gateway-site"
        port, api_port = free_port(), free_port()
        gw_dir = workdir / self.name
        gw_dir.mkdir(exist_ok=True)
        config = gw_dir / "config.toml"
        config.write_text(
            _GATEWAY_TOML.format(
                host=HOST, port=port, api_port=api_port, cloud_port=cloud_port, db=gw_dir / "gw.db"
            )
            + (_SITE_TOML if site else "")
        )
        script = Path(sys.executable).parent / "flipturn-gateway"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
        log_path = gw_dir / "gateway.log"
        log = log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPTURN_GATEWAY_")}
        if source is not None:
            env["PYTHONPATH"] = str(source)  # found before the installed (editable) package
        self._proc = subprocess.Popen(
            [*command, "--config", str(config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=gw_dir,
            env=env,
        )
        self.pid = self._proc.pid
        try:
            wait_for_port(port, self._proc, 20)
        except TargetUnavailable as exc:
            self.stop()
            raise TargetUnavailable(f"flipturn-gateway run: {exc}: {_tail(log_path)}") from exc
        self.url = f"ws://{HOST}:{port}/ocpp"
        self.api_url = f"http://{HOST}:{api_port}"
