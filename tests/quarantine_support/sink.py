"""A recording SMTP sink for the quarantine tests.

Usage: sink.py PORT DIR

Each accepted transaction is written as DIR/NNNN.eml (the message bytes exactly as received, after
dot-unstuffing) and DIR/NNNN.json (mail_from and rcpts with their full argument strings). Behaviour
is steered by files in DIR, read at each command, so a test can change it while the sink runs:
  DIR/defer-rcpts   one address per line: RCPT TO for these gets 451 4.2.0
  DIR/drop-after-dot  the message is recorded, then the connection is closed with no reply
Advertises 8BITMIME, DSN, ENHANCEDSTATUSCODES and SMTPUTF8 (no PIPELINING: strict lock step).
"""

import json
import os
import socket
import sys
import threading

PORT = int(sys.argv[1])
DIR = sys.argv[2]
counter = [0]
lock = threading.Lock()


def flag(name):
    return os.path.exists(os.path.join(DIR, name))


def deferred():
    try:
        with open(os.path.join(DIR, "defer-rcpts")) as f:
            return {line.strip().lower() for line in f if line.strip()}
    except FileNotFoundError:
        return set()


def address(arg):
    start, end = arg.find("<"), arg.find(">")
    return arg[start + 1 : end] if start >= 0 and end > start else arg.split()[0]


def session(conn):
    f = conn.makefile("rb")

    def reply(text):
        conn.sendall(text.encode() + b"\r\n")

    reply("220 sink.test ESMTP recording sink")
    mail_from, rcpts = None, []
    while True:
        line = f.readline()
        if not line:
            return
        cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
        verb = cmd[:4].upper()
        if verb in ("EHLO", "HELO"):
            reply("250-sink.test\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES")
        elif cmd.upper().startswith("MAIL FROM:"):
            mail_from, rcpts = cmd[10:].strip(), []
            reply("250 2.1.0 ok")
        elif cmd.upper().startswith("RCPT TO:"):
            arg = cmd[8:].strip()
            if address(arg).lower() in deferred():
                reply("451 4.2.0 <%s> deferred by test" % address(arg))
            else:
                rcpts.append(arg)
                reply("250 2.1.5 ok")
        elif verb == "DATA":
            if mail_from is None or not rcpts:
                reply("503 5.5.1 no valid recipients")
                continue
            reply("354 go ahead")
            body = bytearray()
            while True:
                data = f.readline()
                if not data:
                    return
                if data == b".\r\n":
                    break
                if data.startswith(b"."):
                    data = data[1:]
                body += data
            with lock:
                counter[0] += 1
                n = counter[0]
            base = os.path.join(DIR, "%04d" % n)
            with open(base + ".eml.tmp", "wb") as out:
                out.write(body)
            with open(base + ".json.tmp", "w") as out:
                json.dump({"mail_from": mail_from, "rcpts": rcpts}, out)
            os.rename(base + ".json.tmp", base + ".json")
            os.rename(base + ".eml.tmp", base + ".eml")
            if flag("drop-after-dot"):
                conn.close()
                return
            reply("250 2.0.0 queued as sink-%04d" % n)
            mail_from, rcpts = None, []
        elif verb == "RSET":
            mail_from, rcpts = None, []
            reply("250 2.0.0 ok")
        elif verb == "NOOP":
            reply("250 2.0.0 ok")
        elif verb == "QUIT":
            reply("221 2.0.0 bye")
            conn.close()
            return
        else:
            reply("502 5.5.2 not implemented")


def main():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", PORT))
    server.listen(50)
    open(os.path.join(DIR, "ready"), "w").close()
    while True:
        conn, _ = server.accept()
        threading.Thread(target=lambda c=conn: safe(c), daemon=True).start()


def safe(conn):
    try:
        session(conn)
    except OSError:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


main()
