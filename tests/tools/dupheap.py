# dupheap.py MB WAIT ROUNDS - a Python heap of duplicates, as a program's
# own objects are: MB MiB of bytes and bytearray objects (in the heap and
# in mmap'd chunks) made of 16 page-sized patterns, the same in every
# run (so processes on two nodes hold the same contents). Each round it waits
# WAIT seconds (the agent evicts the copies), then reads every object
# back, checks it, and changes a few bytearrays. Prints one JSON line,
# {"objects":N,"bad":N}; exit 1 when an object read back wrong.
import hashlib
import json
import random
import sys
import time

mb, wait, rounds = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
patterns = [bytes([i]) * 4096 + rng.randbytes(4096) for i in range(16)]
objs, sums, total = [], [], 0
while total < mb << 20:
    size = rng.choice((65536, 200000, 1 << 20))
    p = rng.choice(patterns)
    o = (p * (size // len(p) + 1))[:size]
    if rng.random() < 0.3:
        o = bytearray(o)
    objs.append(o)
    sums.append(hashlib.sha1(o).digest())
    total += size
bad = 0
for r in range(rounds):
    time.sleep(wait)
    bad += sum(hashlib.sha1(o).digest() != s for o, s in zip(objs, sums))
    for i, o in enumerate(objs):
        if isinstance(o, bytearray) and rng.random() < 0.2:
            k = rng.randrange(len(o))
            o[k] = (o[k] + 1) & 255
            sums[i] = hashlib.sha1(o).digest()
print(json.dumps({"objects": len(objs), "bad": bad}), flush=True)
sys.exit(1 if bad else 0)
