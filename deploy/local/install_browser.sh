#!/bin/sh
# Debian's Chromium for the dashboard's browser test (tests/browser): installed
# from apt, never downloaded by a test tool. A no-op when it is already there.
set -eu
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium
