//! Every reply the proxy writes itself, in one table (codes per RFC 5321 and RFC 3463).

pub const SERVICE_UNAVAILABLE: &str = "421 4.3.2 Service shutting down, try again later\r\n";
pub const TOO_MANY_CONNECTIONS: &str = "421 4.7.0 Too many connections, try again later\r\n";
pub const TOO_MANY_CONNECTIONS_FROM_CLIENT: &str =
    "421 4.7.0 Too many connections from your host, try again later\r\n";
pub const UPSTREAM_UNAVAILABLE: &str =
    "421 4.4.1 Upstream mail server unavailable, try again later\r\n";
pub const TIMEOUT: &str = "421 4.4.2 Timeout waiting for input, closing connection\r\n";
pub const TOO_MANY_ERRORS: &str = "421 4.7.0 Too many errors, closing connection\r\n";
pub const UPSTREAM_FAILED: &str =
    "451 4.4.2 Upstream connection lost, message not accepted, try again later\r\n";
pub const UPSTREAM_BAD_REPLY: &str =
    "451 4.3.0 Unexpected reply from upstream, message not accepted, try again later\r\n";
/// A message the policy would hold where it cannot be held (no quarantine): deferred, the
/// same reply from the proxy and the milter.
pub const CANNOT_HOLD: &str =
    "451 4.3.0 Message cannot be held for review now, try again later\r\n";
pub const LOCAL_ERROR: &str = "451 4.3.0 Local error, message not accepted, try again later\r\n";
pub const OK: &str = "250 2.0.0 OK\r\n";
pub const RESET: &str = "250 2.0.0 Reset state\r\n";
pub const BYE: &str = "221 2.0.0 Bye\r\n";
pub const START_DATA: &str = "354 Start mail input; end with <CRLF>.<CRLF>\r\n";
pub const NOT_IMPLEMENTED: &str = "502 5.5.1 Command not implemented\r\n";
pub const VRFY_DISABLED: &str =
    "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n";
pub const EXPN_DISABLED: &str = "502 5.5.1 EXPN not available\r\n";
pub const SYNTAX_ERROR: &str = "500 5.5.2 Syntax error, command unrecognized\r\n";
pub const LINE_TOO_LONG: &str = "500 5.5.2 Line too long\r\n";
pub const PARAM_ERROR: &str = "501 5.5.4 Syntax error in parameters or arguments\r\n";
pub const NEED_HELO: &str = "503 5.5.1 Send EHLO or HELO first\r\n";
pub const NESTED_MAIL: &str = "503 5.5.1 Sender already specified\r\n";
pub const NEED_MAIL: &str = "503 5.5.1 Need MAIL before RCPT\r\n";
pub const UPSTREAM_UNAVAILABLE_MAIL: &str =
    "451 4.4.1 Upstream mail server unavailable, try again later\r\n";
pub const HELP: &str = "214 2.0.0 See RFC 5321\r\n";
pub const BAD_SENDER: &str = "501 5.1.7 Bad sender address syntax\r\n";
pub const BAD_RECIPIENT: &str = "501 5.1.3 Bad recipient address syntax\r\n";
pub const AUTH_NEEDS_TLS: &str =
    "538 5.7.11 Encryption required for requested authentication mechanism\r\n";
pub const AUTH_ALREADY: &str = "503 5.5.1 Already authenticated\r\n";
pub const AUTH_IN_TRANSACTION: &str = "503 5.5.1 AUTH not permitted during a mail transaction\r\n";
pub const AUTH_MECHANISM_UNKNOWN: &str = "504 5.5.4 Unrecognized authentication type\r\n";
pub const AUTH_LOST: &str = "421 4.7.0 Authentication not carried over to the mail server, reconnect and authenticate again\r\n";
pub const NEED_MAIL_BEFORE_DATA: &str = "503 5.5.1 Need MAIL before DATA\r\n";
pub const BAD_HELO: &str = "501 5.5.4 Invalid EHLO/HELO argument\r\n";
pub const NEED_RCPT: &str = "503 5.5.1 Need RCPT before DATA\r\n";
pub const NO_VALID_RCPT: &str = "554 5.5.1 No valid recipients\r\n";
pub const TOO_MANY_RCPTS: &str = "452 4.5.3 Too many recipients\r\n";
pub const SIZE_EXCEEDED_MAIL: &str =
    "552 5.3.4 Message size exceeds fixed maximum message size\r\n";
pub const SIZE_EXCEEDED: &str = "552 5.3.4 Message too big for system\r\n";
pub const DATA_LINE_TOO_LONG: &str =
    "550 5.5.2 Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)\r\n";
pub const BARE_NEWLINE: &str =
    "550 5.5.2 Message contains bare CR or LF, line ends must be CRLF (RFC 5321 2.3.8)\r\n";
pub const BDAT_UNSUPPORTED: &str = "502 5.5.1 CHUNKING not offered\r\n";
pub const STARTTLS_UNSUPPORTED: &str = "502 5.5.1 STARTTLS not offered\r\n";
pub const TLS_READY: &str = "220 2.0.0 Ready to start TLS\r\n";
pub const TLS_ALREADY_ACTIVE: &str = "503 5.5.1 TLS already active\r\n";
pub const TLS_IN_TRANSACTION: &str = "503 5.5.1 STARTTLS not allowed in a mail transaction\r\n";
pub const AUTH_UNSUPPORTED: &str = "502 5.5.1 AUTH not offered\r\n";
pub const SMTPUTF8_UNSUPPORTED: &str = "555 5.5.4 SMTPUTF8 not offered by the upstream\r\n";
pub const POLICY_TEMPFAIL: &str = "451 4.7.1";
pub const POLICY_REJECT: &str = "550 5.7.1";
