#!/bin/sh
# Debian's tools the tests and the local run use, from apt only (never
# downloaded by a test tool): Chromium for the browser tests (tests/browser,
# the operations view), promtool (package prometheus) for the alert rules'
# unit tests, tmux for the Ctrl-C test under a pseudo-terminal. A no-op for
# what is already there.
set -eu
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
[ -n "$missing" ] || exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
# shellcheck disable=SC2086  # one word per package
$SUDO apt-get install -y -qq --no-install-recommends $missing
