#!/usr/bin/env python3
"""An SMTP upstream that ends each connection at its second MAIL, as an MTA does with a session
that sat idle too long: MODE "close" drops it silently, MODE "421" answers 421 first.

    drops_second_mail.py PORT MODE LOGFILE

LOGFILE gets one line per event: "session" (at EHLO), "queued", "dropped".
"""
import socket
import sys
import threading

port, mode, logfile = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()


def log(event):
    with lock, open(logfile, "a") as f:
        f.write(event + "\n")


def serve(conn):
    f = conn.makefile("rb")
    send = lambda text: conn.sendall(text.encode())
    send("220 drops.test ESMTP\r\n")
    mails = 0
    while True:
        line = f.readline()
        if not line:
            return
        verb = line.decode("latin-1").strip().split(" ")[0].upper()
        if verb in ("EHLO", "HELO"):
            log("session")
            send("250-drops.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        elif verb == "MAIL":
            mails += 1
            if mails == 2:
                log("dropped")
                if mode == "421":
                    send("421 4.4.2 drops.test Error: timeout exceeded\r\n")
                conn.close()
                return
            send("250 2.1.0 Ok\r\n")
        elif verb == "DATA":
            send("354 go ahead\r\n")
            while f.readline() not in (b".\r\n", b""):
                pass
            log("queued")
            send("250 2.0.0 Ok: queued\r\n")
        elif verb == "QUIT":
            send("221 2.0.0 Bye\r\n")
            conn.close()
            return
        else:
            send("250 2.0.0 Ok\r\n")


server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(16)
while True:
    c, _ = server.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
