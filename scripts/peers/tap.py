#!/usr/bin/env python3
"""A TCP tap: listens on 127.0.0.1:LISTEN_PORT, forwards every connection to
127.0.0.1:TARGET_PORT, and logs each chunk read in either direction, in the order read, to
LOGFILE (one line per chunk: monotonic time, connection number, direction, Python repr of the
bytes; a side that closes logs b'<closed>').

It shows what an SMTP client really sends after the final dot: "C>S b'.\\r\\nQUIT\\r\\n'" in
one chunk, before the "S>C b'250 ...'" reply to the dot, is a client pipelining QUIT after the
data (RFC 2920); the same with MAIL is the next transaction pipelined.

    tap.py LISTEN_PORT TARGET_PORT LOGFILE

Runs until killed (SIGTERM).
"""

import socket
import sys
import threading
import time

lock = threading.Lock()


def log(out, conn, direction, data):
    with lock:
        out.write(f"{time.monotonic():.6f} {conn} {direction} {data!r}\n")
        out.flush()


def pump(src, dst, out, conn, direction):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                log(out, conn, direction, b"<closed>")
                break
            log(out, conn, direction, data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        # Half-close so the other side sees this side's end, as it would without the tap.
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: tap.py LISTEN_PORT TARGET_PORT LOGFILE")
    listen_port, target_port, logfile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    out = open(logfile, "a", buffering=1)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(128)
    conn = 0
    while True:
        client, _ = server.accept()
        conn += 1
        upstream = socket.create_connection(("127.0.0.1", target_port))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log(out, conn, "open", b"")
        threading.Thread(target=pump, args=(client, upstream, out, conn, "C>S"), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, out, conn, "S>C"), daemon=True).start()


if __name__ == "__main__":
    main()
