"""One SMTP session with Python's smtplib, for tests/it/support/clients.rs (`smtplib`).

    smtplib_session.py PORT < MAILS.json

MAILS is a list of {"from", "to": [...], "data", "rset"}; each is sent in turn in the same
session (with "rset", MAIL and RCPT are followed by RSET instead of DATA). Prints a JSON list
with one {"stage", "code", "text"} per mail: where it ended and what the server said there.
"""
import json
import smtplib
import sys

port = int(sys.argv[1])
mails = json.load(sys.stdin)
out = []
try:
    s = smtplib.SMTP("127.0.0.1", port, timeout=120)
    s.ehlo("client.corp.test")
except smtplib.SMTPConnectError as e:
    print(json.dumps([{"stage": "connect", "code": e.smtp_code, "text": str(e.smtp_error)}] * len(mails)))
    sys.exit(0)
for m in mails:
    code, text = s.mail(m["from"])
    if code != 250:
        out.append({"stage": "mail", "code": code, "text": text.decode(errors="replace")})
        s.rset()
        continue
    bad = None
    for r in m["to"]:
        c, t = s.rcpt(r)
        if c not in (250, 251) and bad is None:
            bad = (c, t)
    if bad:
        out.append({"stage": "rcpt", "code": bad[0], "text": bad[1].decode(errors="replace")})
        s.rset()
        continue
    if m["rset"]:
        code, text = s.rset()
        out.append({"stage": "rset", "code": code, "text": text.decode(errors="replace")})
        continue
    try:
        code, text = s.data(m["data"].encode())
    except smtplib.SMTPDataError as e:
        code, text = e.smtp_code, e.smtp_error
    out.append({"stage": "data", "code": code, "text": text.decode(errors="replace")})
s.quit()
print(json.dumps(out))
