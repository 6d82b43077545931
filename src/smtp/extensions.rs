//! ESMTP extensions: what the upstream offers, and the EHLO reply we give clients.
//!
//! Our EHLO reply is our own: only extensions we carry end to end AND the upstream has, so a
//! client never uses a feature the upstream would refuse after we accepted it.

/// Extensions of an EHLO reply that matter to the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub size: bool,
    /// The SIZE limit announced (0 = none given).
    pub size_limit: usize,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    pub dsn: bool,
    /// XCLIENT attributes offered (Postfix), upper case; empty when not offered.
    pub xclient: Vec<String>,
    /// XFORWARD attributes offered (Postfix), upper case; empty when not offered.
    pub xforward: Vec<String>,
    /// STARTTLS: in the upstream's reply, whether it offers it; in ours, set by the session
    /// when it has a certificate and the client is still in plain text.
    pub starttls: bool,
    /// AUTH mechanisms, upper case: the upstream's; in ours, offered only inside TLS.
    pub auth: Vec<String>,
}

impl Extensions {
    /// Reads the lines of a 250 EHLO reply (`250-KEYWORD params` / `250 KEYWORD`); the first
    /// line is the greeting name and is skipped.
    pub fn from_ehlo_reply(reply: &[u8]) -> Extensions {
        let mut ext = Extensions::default();
        let text = String::from_utf8_lossy(reply);
        for line in text.lines().skip(1) {
            let Some(body) = line.get(4..) else { continue };
            let mut words = body.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let args = || {
                words
                    .clone()
                    .map(|w| w.to_ascii_uppercase())
                    .collect::<Vec<_>>()
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => {
                    ext.size = true;
                    ext.size_limit = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                }
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "DSN" => ext.dsn = true,
                "XCLIENT" => ext.xclient = args(),
                "XFORWARD" => ext.xforward = args(),
                "STARTTLS" => ext.starttls = true,
                "AUTH" => ext.auth = args(),
                _ => {}
            }
        }
        ext
    }

    /// What we offer clients, given what the upstream offers and our own size limit.
    pub fn offered_to_clients(upstream: &Extensions, our_max_size: usize) -> Extensions {
        let size_limit = match upstream.size_limit {
            0 => our_max_size,
            theirs => theirs.min(our_max_size),
        };
        Extensions {
            pipelining: upstream.pipelining,
            // We always enforce a size limit, so SIZE is always ours to offer.
            size: true,
            size_limit,
            eight_bit_mime: upstream.eight_bit_mime,
            smtputf8: upstream.smtputf8,
            // Upstream replies are relayed verbatim, so only where they carry enhanced codes.
            enhanced_status_codes: upstream.enhanced_status_codes,
            dsn: upstream.dsn,
            xclient: Vec::new(),
            xforward: Vec::new(),
            starttls: false,
            // Relayed to the upstream, which checks the credentials; the session offers them
            // only inside TLS.
            auth: upstream.auth.clone(),
        }
    }

    /// Our multi-line 250 reply to EHLO.
    pub fn ehlo_reply(&self, hostname: &str, client_helo: &str) -> String {
        let mut lines = vec![format!("{hostname} Hello {client_helo}")];
        if self.pipelining {
            lines.push("PIPELINING".into());
        }
        lines.push(format!("SIZE {}", self.size_limit));
        if self.eight_bit_mime {
            lines.push("8BITMIME".into());
        }
        if self.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if self.enhanced_status_codes {
            lines.push("ENHANCEDSTATUSCODES".into());
        }
        if self.dsn {
            lines.push("DSN".into());
        }
        if self.starttls {
            lines.push("STARTTLS".into());
        }
        if !self.auth.is_empty() {
            lines.push(format!("AUTH {}", self.auth.join(" ")));
        }
        let last = lines.len() - 1;
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX: &[u8] = b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n\
250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n\
250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n\
250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n250 CHUNKING\r\n";

    #[test]
    fn parses_postfix_ehlo() {
        let e = Extensions::from_ehlo_reply(POSTFIX);
        assert!(e.pipelining && e.size && e.eight_bit_mime && e.dsn && e.smtputf8);
        assert_eq!(e.size_limit, 10_240_000);
        assert!(e.xclient.contains(&"ADDR".to_string()));
        assert!(e.xforward.contains(&"HELO".to_string()));
    }

    #[test]
    fn offer_is_the_intersection_and_never_chunking() {
        let upstream = Extensions::from_ehlo_reply(POSTFIX);
        let ours = Extensions::offered_to_clients(&upstream, 50_000_000);
        assert_eq!(ours.size_limit, 10_240_000);
        let reply = ours.ehlo_reply("sb.test", "client.test");
        assert!(reply.starts_with("250-sb.test Hello client.test\r\n"));
        assert!(reply.contains("250-PIPELINING\r\n"));
        assert!(reply.contains("250-SIZE 10240000\r\n"));
        assert!(!reply.contains("CHUNKING") && !reply.contains("XCLIENT"));
        assert!(!reply.contains("STARTTLS") && !reply.contains("VRFY"));
        assert!(reply.ends_with("250 DSN\r\n"));

        let bare = Extensions::from_ehlo_reply(b"250-sink\r\n250 SIZE\r\n");
        let ours = Extensions::offered_to_clients(&bare, 1000);
        let reply = ours.ehlo_reply("sb.test", "c");
        assert_eq!(reply, "250-sb.test Hello c\r\n250 SIZE 1000\r\n");
    }

    #[test]
    fn auth_mechanisms_are_read_and_offered_as_given() {
        let upstream =
            Extensions::from_ehlo_reply(b"250-mx\r\n250-AUTH PLAIN login\r\n250 STARTTLS\r\n");
        assert_eq!(upstream.auth, ["PLAIN", "LOGIN"]);
        assert!(upstream.starttls);
        let ours = Extensions::offered_to_clients(&upstream, 1000);
        assert!(
            ours.ehlo_reply("sb.test", "c")
                .ends_with("250 AUTH PLAIN LOGIN\r\n")
        );
    }

    #[test]
    fn starttls_is_ours_not_the_upstreams() {
        let upstream = Extensions::from_ehlo_reply(b"250-mx\r\n250 STARTTLS\r\n");
        let mut ours = Extensions::offered_to_clients(&upstream, 1000);
        assert!(!ours.ehlo_reply("sb.test", "c").contains("STARTTLS"));
        ours.starttls = true;
        assert!(
            ours.ehlo_reply("sb.test", "c")
                .ends_with("250 STARTTLS\r\n")
        );
    }
}
