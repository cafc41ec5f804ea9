#!/bin/bash
# The record's runs: enters.sh for each cell, alternating the build before
# the change (BASE), after it (NEW) and uring-echo, two rounds.
set -u
BASE=${BASE:-/tmp/base-bin/cport}
NEW=${NEW:-/tmp/new-bin/cport}
PEER=/work/main/target/release/uring-echo
D=$(dirname "$0")
for cell in "50 65536 4" "500 4096 16" "50 128 1"; do
  for r in 1 2; do
    for s in base new uring-echo; do
      case $s in
        base) cmd="$BASE serve --port 0 --no-udp --shards 1 --backend uring" ;;
        new) cmd="$NEW serve --port 0 --no-udp --shards 1 --backend uring" ;;
        uring-echo) cmd="$PEER --port 0" ;;
      esac
      echo "== $s, cell $cell, round $r"
      bash "$D/enters.sh" "$cmd" $cell
    done
  done
done
