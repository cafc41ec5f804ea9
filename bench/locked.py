#!/usr/bin/env python3
"""Locked instructions in a callgrind dump: how many times the program ran
an atomic read-modify-write (an x86-64 instruction with the `lock` prefix,
or `xchg` with a memory operand, which is locked without it).

Each is a full barrier that costs far more than its one count in the
instruction total (about 5 ns each, uncontended, on the machines of
bench/runs/), so bench/instructions.sh reports them beside it.

  bench/locked.py DUMP BINARY [--top N]

DUMP is a callgrind output file made with --dump-instr=yes; BINARY the
program it ran (its executable, at the addresses the dump names: callgrind
writes a position-independent executable's addresses as in the file).
Prints the total, then the top N (default 0) functions with their
instruction and count. Shared libraries are not counted: their addresses
in the dump are the run's, not the file's (glibc's locks are malloc's, which
serve.sh --costs counts by its own probe).
"""
import argparse
import collections
import os
import re
import subprocess
import sys


def self_costs(dump, binary):
    """Self Ir per instruction address of BINARY's object in DUMP."""
    objs = {}
    cost = collections.Counter()
    current = None
    last = 0
    skip = False
    with open(dump) as f:
        for line in f:
            if line.startswith(("ob=", "cob=")):
                m = re.match(r"c?ob=\((\d+)\)\s*(.*)", line.strip())
                if m.group(2):
                    objs[m.group(1)] = m.group(2)
                if line.startswith("ob="):
                    current = m.group(1)
                continue
            if line.startswith("calls="):
                # The next cost line is the call's inclusive cost.
                skip = True
                continue
            if not line[:1] or line[0] not in "0123456789+-*":
                continue
            parts = line.split()
            if len(parts) < 3:
                continue
            a = parts[0]
            # Positions are compressed: absolute, relative (+n, -n) or
            # the same as the previous line's (*).
            if a.startswith("0x"):
                addr = int(a, 16)
            elif a == "*":
                addr = last
            else:
                addr = last + int(a)
            last = addr
            if skip:
                skip = False
                continue
            cost[(current, addr)] += int(parts[2])
    want = os.path.realpath(binary)
    ids = {i for i, name in objs.items() if os.path.realpath(name) == want}
    return {a: n for (o, a), n in cost.items() if o in ids}


def locked(binary, costs):
    """(function, instruction) -> executions, for BINARY's locked ones."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", binary],
        capture_output=True, text=True, check=True,
    ).stdout
    counts = collections.Counter()
    fn = "?"
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            fn = m.group(1)
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(\S*)", line)
        if not m:
            continue
        op, arg = m.group(2), m.group(3)
        if op == "lock" or (op.startswith("xchg") and "(" in arg):
            n = costs.get(int(m.group(1), 16), 0)
            if n:
                name = f"{op} {arg.split(',')[0]}" if op == "lock" else op
                counts[(fn, name)] += n
    return counts


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dump")
    p.add_argument("binary")
    p.add_argument("--top", type=int, default=0)
    args = p.parse_args()
    counts = locked(args.binary, self_costs(args.dump, args.binary))
    print(sum(counts.values()))
    for (fn, ins), n in counts.most_common(args.top):
        print(f"{n:>14,}  {ins:<14} {fn[:120]}")


if __name__ == "__main__":
    sys.exit(main())
