"""``flipturn-gateway support-bundle PATH``: what support needs to look at a depot, in one file.

One ``.tar.gz`` with a top directory ``flipturn-gateway-support-<UTC time>/`` holding:

- ``README.txt``: what the bundle is, when and where it was made, whether the gateway answered;
- ``config.json``: the effective settings with every secret redacted (``check-config``'s
  redaction, which covers the password of a URL too);
- ``api/health.json``, ``api/metrics.txt``, ``api/chargers.json``, ``api/site.json``: the running
  gateway's local API (``api.host``/``api.port``, with ``api.token`` if set), and
  ``api/answers.json``: what each request answered (status, or why there was no answer);
- ``journal.txt``: ``journalctl -u flipturn-gateway -n 2000 --no-pager``, or a note that there
  is no journalctl;
- ``store-check.txt``: SQLite's integrity check of the store (as ``store check``);
- ``versions.json``: Python, the platform and every installed distribution.

Never a secret: the settings are redacted, no file the config names (TLS keys) is read, the
environment is not copied, and every text is scrubbed of every secret value the settings hold
(``flipturn.api_key``, ``api.token``, charger passwords, the password of a URL) before it is
written, in case a log line or an answer carried one.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from gateway import __version__
from gateway.config import Settings, redacted
from gateway.errors import GatewayError, SupportBundleError

__all__ = ["API_PATHS", "JOURNAL_COMMAND", "Bundle", "SupportBundleError", "write_bundle"]

JOURNAL_COMMAND = ("journalctl", "-u", "flipturn-gateway", "-n", "2000", "--no-pager")
# Bundle file → API path. /api/site exists once the site power guard does; until then (or on a
# gateway without it) its 404 is recorded like any other answer.
API_PATHS = {
    "health.json": "/health",
    "metrics.txt": "/metrics",
    "chargers.json": "/api/chargers",
    "site.json": "/api/site",
}
API_TIMEOUT_S = 5.0
JOURNAL_TIMEOUT_S = 30.0
MIN_SCRUBBED = 4  # shorter secret values are not scrubbed from texts (they would mangle them)
REDACTED = "***"


@dataclass
class Bundle:
    """The bundle's files (name → text) before they are packed; secrets scrubbed on the way in."""

    secrets: list[str]
    files: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, text: str) -> None:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        self.files[name] = text


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold, longest first (so no secret is left half-replaced)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.add(value.get_secret_value())
        elif hasattr(type(value), "model_fields"):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(settings)
    for url in (settings.upstream.url, settings.flipturn.api_url):
        password = urlsplit(url).password if url else None
        if password:
            found.add(password)
    return sorted((s for s in found if len(s) >= MIN_SCRUBBED), key=len, reverse=True)


def api_base(settings: Settings) -> str | None:
    """The local API's URL as seen from this host; None when ``api.port`` is 0 (ephemeral)."""
    if settings.api.port == 0:
        return None
    host = settings.api.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api.port}"


def fetch_api(bundle: Bundle, settings: Settings) -> bool:
    """Add the API's answers; True if the gateway answered at all."""
    import httpx  # only this command pays for it

    answers: dict[str, Any] = {}
    base = api_base(settings)
    token = settings.api.token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    running = False
    if base is None:
        answers["error"] = "api.port is 0 (an ephemeral port): the gateway's API cannot be found"
    else:
        with httpx.Client(base_url=base, headers=headers, timeout=API_TIMEOUT_S) as client:
            for name, path in API_PATHS.items():
                try:
                    response = client.get(path)
                except httpx.HTTPError as exc:
                    answers[path] = {"error": f"no answer from {base}{path}: {exc or type(exc)}"}
                    continue
                running = True
                answers[path] = {"status": response.status_code}
                bundle.add(f"api/{name}", response.text)
    answers["gatewayRunning"] = running
    if not running:
        answers["note"] = (
            "The gateway did not answer on its local API: it is not running (or not on"
            f" {base or 'a known port'}). The rest of the bundle was still collected."
        )
    bundle.add("api/answers.json", json.dumps(answers, indent=2) + "\n")
    return running


def journal(bundle: Bundle) -> None:
    if shutil.which(JOURNAL_COMMAND[0]) is None:
        bundle.add(
            "journal.txt",
            "journalctl is not available on this host: no log lines in this bundle.\n"
            "Where the gateway logs to a terminal or a file, attach those lines instead.\n",
        )
        return
    try:
        done = subprocess.run(
            JOURNAL_COMMAND, capture_output=True, text=True, timeout=JOURNAL_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        bundle.add("journal.txt", f"$ {' '.join(JOURNAL_COMMAND)}\nfailed: {exc}\n")
        return
    text = f"$ {' '.join(JOURNAL_COMMAND)}\n(exit {done.returncode})\n{done.stdout}"
    if done.stderr:
        text += f"\n--- stderr ---\n{done.stderr}"
    bundle.add("journal.txt", text)


def store_check(bundle: Bundle, settings: Settings) -> None:
    from gateway.store.engine import check_file

    path = settings.store.path
    try:
        problems = check_file(path)
    except GatewayError as exc:
        text = f"store {path}: not checked: {exc}\n"
    else:
        text = (
            f"store {path}: integrity_check ok\n"
            if not problems
            else f"store {path} failed PRAGMA integrity_check:\n"
            + "".join(f"  {line}\n" for line in problems)
        )
    bundle.add("store-check.txt", text)


def versions() -> dict[str, Any]:
    distributions = {
        dist.metadata["Name"]: dist.version
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"]
    }
    return {
        "gateway": __version__,
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "distributions": dict(sorted(distributions.items(), key=lambda kv: kv[0].lower())),
    }


def collect(settings: Settings, config_path: Path | None) -> tuple[Bundle, bool]:
    bundle = Bundle(secret_values(settings))
    bundle.add("config.json", json.dumps(redacted(settings), indent=2) + "\n")
    running = fetch_api(bundle, settings)
    journal(bundle)
    store_check(bundle, settings)
    bundle.add("versions.json", json.dumps(versions(), indent=2) + "\n")
    made = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    readme = (
        f"Flipturn Edge Gateway support bundle\n\n"
        f"made: {made} on {platform.node()} by flipturn-gateway {__version__}\n"
        f"config: {config_path or 'built-in defaults'} (config.json: effective, secrets redacted)\n"
        f"gateway: {'answered on its local API' if running else 'NOT RUNNING (no API answer)'}\n"
        "\nfiles:\n" + "".join(f"  {name}\n" for name in sorted(bundle.files))
    )
    bundle.add("README.txt", readme)
    return bundle, running


def pack(bundle: Bundle, path: Path, top: str) -> int:
    """Write the files as one .tar.gz at ``path`` (beside it first, renamed when complete)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        # 0600: it describes the depot, not for every local user.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            now = time.time()
            for name in sorted(bundle.files):
                data = bundle.files[name].encode()
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mtime, info.mode = len(data), now, 0o600
                tar.addfile(info, io.BytesIO(data))
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise SupportBundleError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path.stat().st_size


def write_bundle(settings: Settings, path: Path, config_path: Path | None) -> dict[str, Any]:
    """Collect and write the bundle; what was written (for the command's output)."""
    if path.is_dir():
        raise SupportBundleError(f"{path} is a directory; give the bundle's file name")
    if not path.parent.is_dir():
        raise SupportBundleError(f"cannot write {path}: {path.parent} is not a directory")
    bundle, running = collect(settings, config_path)
    top = "flipturn-gateway-support-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    size = pack(bundle, path, top)
    return {
        "path": str(path),
        "bytes": size,
        "gatewayRunning": running,
        "files": sorted(bundle.files),
    }
