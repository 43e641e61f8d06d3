#!/usr/bin/env python3
"""One sample of a gateway process for benches/soak.sh (standard library only).

  procstat.py PID GW_PORT ADMIN_PORT UPSTREAM_PORT REDIS_PORT

prints `rss_kib fds clients upstream redis`: resident memory, open
descriptors, and how many of those are TCP connections from clients (to the
main or admin listener), to the upstream and to Redis (from /proc/net/tcp*).
The rest (listeners, the ledger and audit files, epoll, eventfds, pipes) is
what should stay constant.
"""

import os
import sys


def sockets():
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    lport = int(parts[1].rsplit(":", 1)[1], 16)
                    rport = int(parts[2].rsplit(":", 1)[1], 16)
                    table[parts[9]] = (lport, rport, parts[3])
        except OSError:
            pass
    return table


def main():
    pid, gw, admin, up, redis = sys.argv[1:6]
    gw_ports = {int(gw), int(admin)}
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    fds = os.listdir(f"/proc/{pid}/fd")
    table = sockets()
    clients = upstream = red = 0
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if not link.startswith("socket:["):
            continue
        sock = table.get(link[8:-1])
        if sock is None:
            continue
        lport, rport, state = sock
        if state == "0A":  # listening
            continue
        if lport in gw_ports:
            clients += 1
        elif rport == int(up):
            upstream += 1
        elif rport == int(redis):
            red += 1
    print(rss, len(fds), clients, upstream, red)


if __name__ == "__main__":
    main()
