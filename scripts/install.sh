#!/bin/sh
# Install or upgrade the gateway on a Debian device: `sudo make install` runs this from a checkout
# or an unpacked sdist (optionally with DIST, the directory `make dist` wrote the wheel to).
# docs/deployment.md describes every step.
#
#   /opt/flipturn-gateway/releases/<version>/   one virtualenv per version (the lock's exact pins)
#   /opt/flipturn-gateway/.venv -> releases/<version>   what the unit runs; switched atomically
#   /etc/flipturn-gateway/config.toml           created from config.example.toml once, then kept
#   /etc/systemd/system/flipturn-gateway.service
#
# An upgrade builds the new release beside the running one, checks the kept config with it, backs
# up the store, then switches the link and restarts: a failed step leaves the old release running.
# DESTDIR=/dir puts everything under /dir and skips the user, ownership and systemctl steps.
set -eu

dist=${1:-dist}
here=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
prefix="$DESTDIR/opt/flipturn-gateway"
etc="$DESTDIR/etc/flipturn-gateway"
unitdir="$DESTDIR/etc/systemd/system"
state="$DESTDIR/var/lib/flipturn-gateway"
user=flipturn-gateway

say() { echo "install: $*"; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    echo "install: run as root (sudo make install), or set DESTDIR to try it elsewhere" >&2
    exit 1
fi

# The wheel `make dist` built for this source tree's version, else the source tree itself (on a
# device: an unpacked sdist or a checkout; pip then builds the package).
version=$(sed -n 's/^__version__ = "\([^"]*\)".*/\1/p' "$here/gateway/__init__.py")
package="$dist/flipturn_gateway-$version-py3-none-any.whl"
[ -f "$package" ] || package="$here"
release="$prefix/releases/$version"
say "flipturn-gateway $version from $package"

# 1. The service user (a static system user: the store needs one stable owner).
if [ -z "$DESTDIR" ] && ! getent passwd "$user" >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/flipturn-gateway \
        --shell /usr/sbin/nologin "$user"
    say "created user $user"
fi

# 2. The release: a fresh virtualenv with exactly the locked, hash-checked dependencies.
current=""
if [ -L "$prefix/.venv" ]; then
    current=$(readlink "$prefix/.venv")
fi
if [ "$current" = "releases/$version" ]; then
    say "reinstalling $version in place"
else
    rm -rf "$release"
fi
mkdir -p "$prefix/releases"
[ -x "$release/bin/python" ] || "$PYTHON" -m venv "$release"
"$release/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
    -r "$here/requirements.lock"
"$release/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall \
    "$package"
mkdir -p "$prefix/docs"
cp "$here"/docs/*.md "$prefix/docs/"
cp "$here/config.example.toml" "$here/LICENSE" "$prefix/"

# 3. The configuration: created once, never overwritten (an upgrade keeps the operator's).
mkdir -p "$etc" "$unitdir"
if [ -e "$etc/config.toml" ]; then
    say "kept $etc/config.toml"
    grep -q '^[[:space:]]*path[[:space:]]*=' "$etc/config.toml" || say "note: $etc/config.toml" \
        "sets no [store] path; the service uses /var/lib/flipturn-gateway/gateway.db" \
        "(its working directory), operator commands need --config and [store] path"
else
    install -m 0640 "$here/config.example.toml" "$etc/config.toml"
    say "created $etc/config.toml from config.example.toml: edit it, then restart"
fi
if [ -z "$DESTDIR" ]; then
    chown root:"$user" "$etc" "$etc/config.toml"
    chmod 0750 "$etc"
fi

# 4. The new release must accept the configuration before it replaces the running one.
check="$release/bin/flipturn-gateway --config $etc/config.toml check-config"
if [ -z "$DESTDIR" ]; then
    runuser -u "$user" -- $check >/dev/null
else
    FLIPTURN_GATEWAY_STORE__PATH="$state/gateway.db" $check >/dev/null
fi
say "configuration accepted by $version"

# 5. A consistent copy of the store before an upgrade (the schema only ever moves forward:
#    going back to an older release means restoring this copy).
if [ -n "$current" ] && [ "$current" != "releases/$version" ] && [ -f "$state/gateway.db" ]; then
    backup="$state/gateway.db.before-$version"
    "$release/bin/python" - "$state/gateway.db" "$backup" <<'PY'
import sqlite3, sys
source = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
target = sqlite3.connect(sys.argv[2])
source.backup(target)
target.close()
source.close()
PY
    if [ -z "$DESTDIR" ]; then
        chown "$user:$user" "$backup"
        chmod 0640 "$backup"
    fi
    say "store backed up to $backup"
fi

# 6. Switch: one rename, so the unit always finds a whole release.
if [ -d "$prefix/.venv" ] && [ ! -L "$prefix/.venv" ]; then
    mv "$prefix/.venv" "$prefix/.venv.before-releases"
    say "moved the old virtualenv aside to $prefix/.venv.before-releases"
fi
ln -sfn "releases/$version" "$prefix/.venv.new"
mv -T "$prefix/.venv.new" "$prefix/.venv"
if [ -n "$current" ] && [ "$current" != "releases/$version" ]; then
    echo "$current" >"$prefix/previous"  # docs/deployment.md "Rollback"
fi
install -m 0644 "$here/systemd/flipturn-gateway.service" "$unitdir/flipturn-gateway.service"
say "$prefix/.venv -> releases/$version${current:+ (was $current)}"

# 7. systemd: (re)start on the new release.
if [ -n "$DESTDIR" ]; then
    say "DESTDIR set: not touching systemd"
elif [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable flipturn-gateway >/dev/null 2>&1
    systemctl restart flipturn-gateway
    say "flipturn-gateway restarted: systemctl status flipturn-gateway"
else
    say "systemd is not running: start flipturn-gateway yourself"
fi
