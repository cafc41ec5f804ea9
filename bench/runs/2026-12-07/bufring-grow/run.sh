#!/bin/bash
# The record's runs. BASE: the build before the change, GROW: with it.
# 1. ring-size.sh: the last "buffer ring now uses N" line (RUST_LOG=cport=debug) per cell;
# 2. rss.sh: the server's VmRSS / VmHWM after 3 s of load, base and grow alternating, 2 rounds;
# 3. ab4.sh (bench/runs/2026-12-06/leader-submits): CPU µs and io_uring requests per message, pinned, 5 alternating rounds.
set -u
BASE=${BASE:-/tmp/new-bin/cport}
GROW=${GROW:-/tmp/grow-bin/cport}
D=$(dirname "$0")
shards() { echo "$1 serve --port 0 --no-udp --shards 1 --backend uring"; }
pool() { echo "$1 serve --port 0 --no-udp --backend uring"; }
CELLS=("50 128 1" "500 128 1" "500 4096 16" "50 65536 4")
echo "## ring size (grow build)"
for cell in "${CELLS[@]}"; do
  for s in shards pool; do
    echo "$s, cell $cell: $(bash "$D/ring-size.sh" "$($s "$GROW")" $cell | tail -1 | sed 's/.*DEBUG //')"
  done
done
echo "## rss"
for cell in "${CELLS[@]}"; do
  for r in 1 2; do
    for s in shards pool; do
      for b in base grow; do
        bin=$BASE; [ $b = grow ] && bin=$GROW
        echo "$s-$b, cell $cell, round $r: $(bash "$D/rss.sh" "$($s "$bin")" $cell | head -1)"
      done
    done
  done
done
echo "## time and requests"
for cell in "50 128 1" "500 128 1"; do
  echo "# cell $cell"
  PIN=1 bash "$D/../../2026-12-06/leader-submits/ab4.sh" 5 $cell shards-base="$(shards "$BASE")" shards-grow="$(shards "$GROW")" \
    pool-base="$(pool "$BASE")" pool-grow="$(pool "$GROW")"
done
