"""Packaging: the lock files, ``make dist`` and ``make install`` (into a DESTDIR, then an upgrade)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def locked(path: Path) -> dict[str, list[str]]:
    """name → its hashes, from a ``--generate-hashes`` lock file."""
    pins: dict[str, list[str]] = {}
    name = ""
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==\S+", line):
            name = match[1].lower().replace("_", "-")
            pins[name] = []
        elif "--hash=sha256:" in line and name:
            pins[name].append(line.strip())
    return pins


def test_lock_files_pin_every_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [*project["dependencies"], *project["optional-dependencies"]["fast"]]
    dev = [*runtime, *project["optional-dependencies"]["test"]]
    for lock, wanted in (("requirements.lock", runtime), ("requirements-dev.lock", dev)):
        pins = locked(ROOT / lock)
        for spec in wanted:
            name = requirement_name(spec)
            assert name in pins, f"{name} is not in {lock}: run `make lock`"
        assert all(pins.values()), f"{lock} has a pin without hashes: run `make lock`"


@contextlib.contextmanager
def built_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """A directory for ``name`` shared by this run's xdist workers (their base temporary
    directory's parent is the run's own), held under a file lock: ``(path, True)`` once a worker
    has filled it and returned from this block, ``(path, False)`` to the first one, which fills it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    directory = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = directory / ".done"
        directory.mkdir(exist_ok=True)
        yield directory, done.exists()
        done.touch()


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pip's environment for the builds and installs below: the locked dependencies (hashes
    checked) and the build backend downloaded once into a directory, then found there without an
    index. Each install still runs ``pip install --require-hashes -r requirements.lock`` and each
    build its isolated environment; they no longer ask the index for the same files every time."""
    with built_once(tmp_path_factory, "wheels") as (wheels, ready):
        backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
        locked_wheels = ["--require-hashes", "-r", str(ROOT / "requirements.lock")]
        for what in [] if ready else [locked_wheels, backend]:
            got = subprocess.run(
                [*pip, "--dest", str(wheels), *what], capture_output=True, text=True, timeout=600
            )
            assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    return {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory, wheelhouse: dict[str, str]) -> Path:
    """``make dist`` once per run (xdist workers share it)."""
    with built_once(tmp_path_factory, "dist") as (out, ready):
        if not ready:
            result = subprocess.run(
                ["make", "-C", str(ROOT), "dist", f"DIST={out}"],
                capture_output=True,
                text=True,
                timeout=600,
                env=wheelhouse,
            )
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_make_dist_builds_a_wheel_and_an_sdist(dist: Path) -> None:
    (wheel,) = dist.glob("flipturn_gateway-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next(zf.read(n).decode() for n in names if n.endswith("/METADATA"))
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"gateway/cli.py", "gateway/net/session.py", "gateway/store/engine.py"} <= names
    # Every package of the layout, and the dashboard's files as package data of gateway.api.
    packages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gateway").rglob("__init__.py")}
    assert packages <= names
    static = {
        f"gateway/api/static/{n}" for n in ("dashboard.html", "dashboard.css", "dashboard.js")
    }
    assert static <= names
    assert "License-Expression: LicenseRef-Proprietary" in metadata
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "flipturn-gateway = gateway.cli:main" in entry_points
    (sdist,) = dist.glob("flipturn_gateway-*.tar.gz")
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    for needed in (
        "LICENSE",
        "requirements.lock",
        "requirements-dev.lock",
        "config.example.toml",
        "systemd/flipturn-gateway.service",
        "scripts/install.sh",
        "docs/deployment.md",
        "docs/fleet.md",
        "contrib/prometheus/alerts.yml",
        "contrib/prometheus/agent.yml",
        "gateway/cli.py",
    ):
        assert needed in members, needed


def install(
    source: Path, dist_dir: Path, destdir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``make install`` of ``source`` into ``destdir``."""
    return subprocess.run(
        ["make", "-C", str(source), "install", f"DESTDIR={destdir}", f"DIST={dist_dir}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.first  # the longest test: it builds the shared wheel, then installs twice
def test_install_then_upgrade_keeps_the_config_and_backs_up_the_store(
    dist: Path, wheelhouse: dict[str, str], tmp_path: Path
) -> None:
    import sqlite3

    from gateway import __version__

    dest = tmp_path / "root"
    first = install(ROOT, dist, dest, wheelhouse)
    assert first.returncode == 0, first.stdout + first.stderr
    prefix = dest / "opt" / "flipturn-gateway"
    assert (prefix / ".venv").readlink() == Path("releases") / __version__
    executable = prefix / ".venv" / "bin" / "flipturn-gateway"
    shown = subprocess.run([str(executable), "--version"], capture_output=True, text=True)
    assert shown.returncode == 0 and __version__ in shown.stdout
    config = dest / "etc" / "flipturn-gateway" / "config.toml"
    assert config.read_text() == (ROOT / "config.example.toml").read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    unit = dest / "etc" / "systemd" / "system" / "flipturn-gateway.service"
    assert unit.read_text() == (ROOT / "systemd" / "flipturn-gateway.service").read_text()
    assert (prefix / "docs" / "deployment.md").is_file()

    # The operator's edits and the store exist; an upgrade to a newer version keeps the one and
    # backs up the other before switching.
    config.write_text(
        config.read_text().replace('unknown_tags = "reject"', 'unknown_tags = "accept"')
    )
    state = dest / "var" / "lib" / "flipturn-gateway"
    state.mkdir(parents=True)
    with sqlite3.connect(state / "gateway.db") as db:
        db.execute("CREATE TABLE marker (x)")
        db.execute("INSERT INTO marker VALUES (42)")
    newer = tmp_path / "newer"
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (newer / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, newer / name)
    init = newer / "gateway" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"', '"99.0.0"'))
    second = install(
        newer, tmp_path / "no-wheel", dest, wheelhouse
    )  # from the source tree this time
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept" in second.stdout
    assert 'unknown_tags = "accept"' in config.read_text()
    assert (prefix / ".venv").readlink() == Path("releases") / "99.0.0"
    assert (prefix / "previous").read_text().strip() == f"releases/{__version__}"
    assert (prefix / "releases" / __version__ / "bin" / "flipturn-gateway").is_file()  # rollback
    shown = subprocess.run([str(executable), "--version"], capture_output=True, text=True)
    assert "99.0.0" in shown.stdout
    with sqlite3.connect(state / "gateway.db.before-99.0.0") as db:
        assert db.execute("SELECT x FROM marker").fetchall() == [(42,)]
