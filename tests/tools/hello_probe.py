#!/usr/bin/env python3
"""hello_probe SOCKET - one HELLO on the agent's local socket, as a fresh
process would send it, and what came back: prints one JSON line with
"connected", "type", "status" and "fd" (whether a descriptor came, and
what it is: /dev/userfaultfd or another). Never attaches."""
import json
import os
import socket
import struct
import sys

FMT = "<IHHiIQQQ"
MAGIC, VERSION, HELLO = 0x636B736D, 1, 1

out = {"connected": False, "type": None, "status": None, "fd": None}
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
try:
    s.connect(sys.argv[1])
except OSError as e:
    out["error"] = e.strerror
    print(json.dumps(out))
    sys.exit(0)
out["connected"] = True
# The beacon's address: any page-aligned address passes the agent's check.
s.send(struct.pack(FMT, MAGIC, VERSION, HELLO, 0, 0, 0x7F0000000000, 0, 1 << 20))
s.settimeout(5)
try:
    msg, fds, _, _ = socket.recv_fds(s, 64, 4)
except (OSError, socket.timeout) as e:
    out["error"] = str(e)
    print(json.dumps(out))
    sys.exit(0)
if len(msg) >= struct.calcsize(FMT):
    _, _, out["type"], out["status"], *_ = struct.unpack(FMT, msg[: struct.calcsize(FMT)])
if fds:
    out["fd"] = os.readlink(f"/proc/self/fd/{fds[0]}")
    for fd in fds:
        os.close(fd)
print(json.dumps(out))
