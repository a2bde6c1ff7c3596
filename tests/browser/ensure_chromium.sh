#!/usr/bin/env bash
# Make sure the browser tests have a Chromium: install Debian's `chromium` when /usr/bin/chromium is
# missing. Installing needs root and apt-get; where that is impossible this script says why and exits
# 0, and the browser tests then skip with the same reason (never silently). Never `playwright install`:
# the tests drive this system Chromium with Playwright's bundled driver.
set -u

if [ -x /usr/bin/chromium ]; then
    echo "ensure_chromium: /usr/bin/chromium present ($(/usr/bin/chromium --version 2>/dev/null | head -n 1))"
    exit 0
fi
if [ -n "${SELAB_CHROMIUM:-}" ] && command -v "$SELAB_CHROMIUM" >/dev/null 2>&1; then
    echo "ensure_chromium: using SELAB_CHROMIUM=$SELAB_CHROMIUM"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_chromium: /usr/bin/chromium missing and not root, so cannot apt-get install chromium;" \
         "the browser tests will skip (install it with: sudo apt-get install -y chromium)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: /usr/bin/chromium missing and no apt-get here; the browser tests will skip"
    exit 0
fi
echo "ensure_chromium: installing Debian's chromium (apt-get, about 500 MB)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq; then
    echo "ensure_chromium: apt-get update failed; trying the install from the current package lists"
fi
if apt-get install -y -qq chromium >/tmp/ensure_chromium.log 2>&1 \
        && [ -x /usr/bin/chromium ]; then
    echo "ensure_chromium: installed $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
else
    echo "ensure_chromium: apt-get install chromium failed; the browser tests will skip. Last lines:"
    tail -n 5 /tmp/ensure_chromium.log
fi
exit 0
