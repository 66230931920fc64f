#!/usr/bin/env python3
"""Creates and 4 KiB stores per second through a mount, to a 1-replica
volume against a 3-replica one in the same run (a ratio: machines are
shared and noisy). Usage: replica-bench.py ONE_DIR REP_DIR [N]
(ONE_DIR, REP_DIR: directories in the two volumes, e.g. mount points made
with `cfs makemount`)."""
import os, sys, time

def run(d, n):
    os.makedirs(d, exist_ok=True)
    t = time.time()
    for i in range(n):
        open(f"{d}/c{i}", "w").close()
    creates = n / (time.time() - t)
    data = os.urandom(4096)
    t = time.time()
    for i in range(n):
        with open(f"{d}/c{i}", "wb") as f:
            f.write(data)
    return creates, n / (time.time() - t)

one, rep = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
for rnd in range(2):
    c1, s1 = run(f"{one}/r{rnd}", n)
    c3, s3 = run(f"{rep}/r{rnd}", n)
    print(f"round {rnd}: creates/s 1-replica {c1:.0f} 3-replica {c3:.0f} ratio {c3/c1:.2f}; "
          f"4KiB stores/s 1-replica {s1:.0f} 3-replica {s3:.0f} ratio {s3/s1:.2f}")
