#!/usr/bin/env python3
"""holdslots SOCKET SECS - keeps 70 connections to the agent's local
socket open and silent (never a HELLO), opening a new one as soon as the
agent closes one, for SECS seconds. Prints {"opened": N}."""
import json
import select
import socket
import sys
import time

path, secs = sys.argv[1], float(sys.argv[2])
conns, opened = [], 0
end = time.time() + secs
while time.time() < end:
    while len(conns) < 70:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(path)
        except OSError:
            s.close()
            break
        conns.append(s)
        opened += 1
    r, _, _ = select.select(conns, [], [], 0.01)
    for s in r:
        try:
            d = s.recv(64)
        except OSError:
            d = b""
        if not d:
            conns.remove(s)
            s.close()
print(json.dumps({"opened": opened}))
