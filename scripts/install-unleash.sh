#!/usr/bin/env bash
# Installs a pinned Unleash server (npm package `unleash-server`, 6.x line: runs on
# Node.js 18/20) into .tools/unleash for the unleash target tests and demos.
# Idempotent and quiet: does nothing when the pinned version is already installed.
#   UNLEASH_VERSION=6.10.1 bash scripts/install-unleash.sh
set -euo pipefail
VERSION="${UNLEASH_VERSION:-6.10.1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.tools/unleash"
PKG="$DEST/node_modules/unleash-server/package.json"

if [ -f "$PKG" ] && grep -q "\"version\": \"$VERSION\"" "$PKG"; then
  exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install-unleash: node and npm are needed (Node.js 18 or 20 for unleash-server $VERSION)" >&2
  exit 1
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 18 ] || [ "$major" -gt 20 ]; then
  echo "install-unleash: unleash-server $VERSION needs Node.js 18 or 20, found $(node --version)" >&2
  exit 1
fi
mkdir -p "$DEST"
if [ ! -f "$DEST/package.json" ]; then
  printf '{\n  "name": "rollout-unleash-tools",\n  "private": true\n}\n' >"$DEST/package.json"
fi
cat >"$DEST/start.js" <<'JS'
// Starts Unleash with its settings from the environment (DATABASE_URL, PORT,
// INIT_ADMIN_API_TOKENS, ...). Used by the tests and the demo.
const unleash = require('unleash-server');
unleash
  .start({
    server: { port: Number(process.env.PORT || 4242) },
    logLevel: process.env.LOG_LEVEL || 'warn',
  })
  .catch((err) => {
    console.error(err);
    process.exit(1);
  });
JS
echo "install-unleash: installing unleash-server $VERSION into .tools/unleash" >&2
npm install --prefix "$DEST" --no-audit --no-fund --loglevel=error --save-exact \
  "unleash-server@$VERSION" >/dev/null
test -f "$PKG"
