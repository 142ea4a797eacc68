"""A Unix-socket forwarder standing between llem and the Docker engine, for the fault
suite: killing it makes the engine unreachable to llem, for real, without touching
dockerd (which other work on this machine uses). Not a fake: every byte goes to the
real engine while it runs.

    python tests/support/docker_proxy.py LISTEN_SOCKET [TARGET_SOCKET]
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> None:
    listen = sys.argv[1]
    target = sys.argv[2] if len(sys.argv) > 2 else "/var/run/docker.sock"
    if os.path.exists(listen):
        os.unlink(listen)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listen)
    server.listen(64)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(target)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    main()
