#!/usr/bin/env bash
# System packages the end-to-end tests need: Prometheus and Alertmanager (Debian),
# Chromium and chromium-driver (Debian) for the inbox browser test,
# and Unleash (npm, into .tools/unleash) for the unleash target tests.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# the approval inbox's browser test: Debian's headless Chromium and its WebDriver
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The Debian packages start their services; the tests run their own instances.
  $SUDO systemctl stop prometheus prometheus-alertmanager prometheus-node-exporter >/dev/null 2>&1 || true
fi
if [ -x scripts/install-unleash.sh ]; then
  bash scripts/install-unleash.sh
fi
