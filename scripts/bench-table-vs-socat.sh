#!/usr/bin/env bash
# Side by side, in one go: `stickwarden table NAME --json > /dev/null` against the raw socat dump
# `echo 'show table NAME' | socat ... > /dev/null`, on a real HAProxy holding a 1,048,576-entry
# table. Prints both medians and their ratio (target: 1.05 or less). See docs/BENCHMARKS.md.
#
#   scripts/bench-table-vs-socat.sh [ENTRIES] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
entries=${1:-1048576}
runs=${2:-7}
haproxy=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}

cargo build --release -q
bin=target/release/stickwarden
dir=$(mktemp -d)
trap 'kill $(cat "$dir/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$dir"' EXIT
sock=$dir/admin.sock
cat > "$dir/haproxy.cfg" <<CFG
global
    stats socket $sock mode 600 level admin
    stats timeout 2m
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
backend ft_web
    stick-table type ip size $entries expire 1h store gpt0,conn_cur,http_req_rate(10s)
CFG
"$haproxy" -D -p "$dir/pid" -f "$dir/haproxy.cfg"
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

echo "filling ft_web with $entries entries (one prompt-mode connection)..." >&2
{
  echo prompt
  awk -v n="$entries" 'BEGIN { for (i = 0; i < n; i++) {
      a = 10 + int(i / 16777216); b = int(i / 65536) % 256; c = int(i / 256) % 256; d = i % 256;
      printf "set table ft_web key %d.%d.%d.%d data.gpt0 %d data.http_req_rate %d\n", a, b, c, d, (i % 100 == 0), i % 1000 } }'
  echo quit
} | socat -t 120 - "UNIX-CONNECT:$sock" > /dev/null
used=$(echo "show table" | socat -t 10 - "UNIX-CONNECT:$sock" | sed -n 's/^# table: ft_web,.*used:\([0-9]*\)$/\1/p')
echo "ft_web holds $used entries" >&2
[ "$used" = "$entries" ] || { echo "fill failed: $used of $entries entries" >&2; exit 1; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f\n", b - a }'; }
time_socat() { local t0; t0=$(now); echo "show table ft_web" | socat -t 60 - "UNIX-CONNECT:$sock" > /dev/null; elapsed "$t0"; }
time_ours() { local t0; t0=$(now); "$bin" table --haproxy "unix:$sock" ft_web --json > /dev/null; elapsed "$t0"; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

bytes_socat=$(echo "show table ft_web" | socat -t 60 - "UNIX-CONNECT:$sock" | wc -c)
bytes_ours=$("$bin" table --haproxy "unix:$sock" ft_web --json | wc -c)
lines_ours=$("$bin" table --haproxy "unix:$sock" ft_web --json | wc -l)
[ "$lines_ours" = "$entries" ] || { echo "stickwarden printed $lines_ours entries, expected $entries" >&2; exit 1; }

s=(); o=()
for _ in $(seq "$runs"); do   # alternate, so that both see the same machine state
  s+=("$(time_socat)"); o+=("$(time_ours)")
done
ms=$(printf '%s\n' "${s[@]}" | median); mo=$(printf '%s\n' "${o[@]}" | median)
echo "entries:             $entries"
echo "socat dump:          median ${ms}s over $runs runs ($bytes_socat bytes of text)  runs: ${s[*]}"
echo "stickwarden --json:  median ${mo}s over $runs runs ($bytes_ours bytes of JSON)  runs: ${o[*]}"
echo "ratio:               $(awk -v a="$mo" -v b="$ms" 'BEGIN { printf "%.3f", a / b }')  (target <= 1.05)"

# Server-side filter: only the 1% of tagged entries travel.
t0=$(now); n=$("$bin" table --haproxy "unix:$sock" ft_web --where 'data.gpt0 gt 0' --json | wc -l)
echo "filtered (gpt0 gt 0): $n entries in $(elapsed "$t0")s"
