"""TCP_NODELAY for the CRT's sockets, which awscrt gives no option for.

With Nagle's algorithm on, a stream's first audio write after its setup events
waits for the server's delayed ACK, about 40 ms (bench.nova_overhead: a stream's
first chunk p50 42-52 ms with it, 2-4 ms without). awscrt 0.32's ``SocketOptions``
has no TCP_NODELAY, so once a stream is up its socket is found among the process's
descriptors by the peer's port and the option is set through a duplicate: the
option belongs to the socket, not the descriptor. Linux only, like the rest.
"""

from __future__ import annotations

import os
import socket

FDS = "/proc/self/fd"

# Sockets already settled ("socket:[inode]"): set, or not to ``port``. A connected
# socket's peer never changes, so each is inspected once; a scan then costs a readlink
# per descriptor, not a duplicate and a system call or two per socket.
_settled: set[str] = set()


def disable_nagle(port: int) -> int:
    """Set TCP_NODELAY on this process's TCP connections to ``port`` that lack it;
    returns how many were set."""
    open_now = set()
    count = 0
    for fd in os.listdir(FDS):
        try:
            target = os.readlink(f"{FDS}/{fd}")
        except OSError:  # closed meanwhile, or the listing's own descriptor
            continue
        if not target.startswith("socket:"):
            continue
        open_now.add(target)
        if target in _settled:
            continue
        match _set_if_peer(int(fd), port):
            case True:
                count += 1
                _settled.add(target)
            case False:
                _settled.add(target)
    _settled.intersection_update(open_now)  # inodes of closed sockets may come again
    return count


def _set_if_peer(fd: int, port: int) -> bool | None:
    """True: set; False: not a TCP connection to ``port``; None: not yet known (not
    connected, or gone)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with sock:
        if sock.type != socket.SOCK_STREAM or sock.family not in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            return False
        try:
            if sock.getpeername()[1] != port:
                return False
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not connected (a listener, or connecting), or gone
            return None
        return True
