#!/usr/bin/env bash
# Makes sure a `haproxy` binary is available for the demo and the tests (and `socat` with --socat,
# for the benchmarks; with --browser, what the rest of the suite uses: Chromium and its WebDriver
# for the console's browser tests, man to render the man pages, systemd-analyze to verify the unit,
# lintian to check the Debian package, promtool to check the alert rules, and PostgreSQL's server
# for the tests of the shared store: a test helper runs it in a temp dir). As root it installs the distribution's packages with apt-get; otherwise it
# prints the exact command to run and fails.
set -euo pipefail

need=()
find_bin() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]; }
if [ -n "${HAPROXY:-}" ]; then
  [ -x "$HAPROXY" ] || { echo "HAPROXY=$HAPROXY is not an executable" >&2; exit 1; }
else
  find_bin haproxy || need+=(haproxy)
fi
for arg in "$@"; do
  case "$arg" in
    --socat) find_bin socat || need+=(socat) ;;
    --browser)
      [ -x /usr/bin/chromium ] || need+=(chromium)
      [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
      find_bin man || need+=(man-db)
      find_bin systemd-analyze || need+=(systemd)
      find_bin lintian || need+=(lintian)
      find_bin promtool || need+=(prometheus)
      ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
      ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${need[*]} from the distribution's packages..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  exit 0
fi
echo "missing: ${need[*]}. Install with:" >&2
echo "    sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
exit 1
