"""Real clients for the STARTTLS tests, run by tests/it/proxy_tls.rs.

  starttls.py send PORT SUBJECT      smtplib: EHLO, STARTTLS, EHLO, one message, QUIT
  starttls.py pipelined PORT         raw socket: STARTTLS and NOOP in one write, then TLS
  starttls.py served PORT            SHA-256 of the certificate the server presents
  starttls.py file CERT.pem          SHA-256 of a PEM certificate file

Prints what the server said, one `name: value` per line, for the test to check.
"""
import hashlib
import smtplib
import socket
import ssl
import sys


def unverified():
    # The test certificate is self-signed: encryption is what is tested, not the chain.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send(port, subject):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("tls-client.test")
        print("offered:", s.has_extn("starttls"))
        code, text = s.starttls(context=unverified())
        print("starttls:", code, text.decode())
        print("version:", s.sock.version())
        s.ehlo("tls-client.test")
        print("offered after:", s.has_extn("starttls"))
        refused = s.sendmail(
            "alice@corp.test",
            ["bob@corp.test"],
            f"From: alice@corp.test\r\nTo: bob@corp.test\r\nSubject: {subject}\r\n\r\nsent inside TLS\r\n",
        )
        print("refused:", refused)


def reply(f):
    lines = []
    while True:
        line = f.readline().decode()
        if not line:
            return "".join(lines) or "<closed>"
        lines.append(line)
        if line[3:4] != "-":
            return "".join(lines)


def pipelined(port):
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = raw.makefile("rb")
    print("greeting:", reply(f).strip())
    raw.sendall(b"EHLO plain.test\r\n")
    print("ehlo:", reply(f).replace("\r\n", " | ").strip())
    # CVE-2011-0411: a NOOP injected after STARTTLS in the same packet.
    raw.sendall(b"STARTTLS\r\nNOOP\r\n")
    print("starttls:", reply(f).strip())
    # Anything more in plain text (an answer to the NOOP) would break the handshake.
    tls = unverified().wrap_socket(raw, server_hostname="sb.test")
    print("version:", tls.version())
    t = tls.makefile("rb")
    tls.sendall(b"MAIL FROM:<alice@corp.test>\r\n")
    print("mail before ehlo:", reply(t).strip())
    tls.sendall(b"EHLO tls.test\r\n")
    print("ehlo in tls:", reply(t).replace("\r\n", " | ").strip())
    tls.sendall(b"STARTTLS\r\n")
    print("second starttls:", reply(t).strip())
    tls.sendall(b"QUIT\r\n")
    print("quit:", reply(t).strip())


def served(port):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.starttls(context=unverified())
        der = s.sock.getpeercert(binary_form=True)
        print("sha256:", hashlib.sha256(der).hexdigest())


def certfile(path):
    der = ssl.PEM_cert_to_DER_cert(open(path).read())
    print("sha256:", hashlib.sha256(der).hexdigest())


if __name__ == "__main__":
    mode, arg = sys.argv[1], sys.argv[2]
    if mode == "send":
        send(int(arg), sys.argv[3])
    elif mode == "pipelined":
        pipelined(int(arg))
    elif mode == "served":
        served(int(arg))
    else:
        certfile(arg)
