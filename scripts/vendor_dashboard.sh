#!/usr/bin/env bash
# Fetch the dashboard's vendored front-end files from the npm registry, with their licence.
# The tarball's integrity is checked by npm against the registry's record.
set -euo pipefail
version=1.6.32
here="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$here/src/coserve/server/dashboard_static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$version" >/dev/null && tar xzf "uplot-$version.tgz")
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$vendor/"
cp "$work/package/LICENSE" "$vendor/uPlot.LICENSE"
echo "uplot $version vendored into $vendor"
