//! The one verdict type both front ends act on, so the proxy and the milter cannot drift.

/// What happens to a message a breaker holds (`[policy] action`, per list `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HoldAction {
    /// Keep it on disk, releasable; the client hears 250.
    #[default]
    Quarantine,
    /// 550 5.7.1 with an explanation.
    Reject,
    /// 451 4.7.1: the sender's MTA retries after the block.
    Tempfail,
    /// Dry run: deliver, and log "would hold".
    Log,
}

/// What a front end does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Deliver,
    /// Keep it in the quarantine (proxy) or Postfix's hold queue (milter); the client hears 250.
    Quarantine,
    /// 550 5.7.1 with an explanation.
    Reject,
    /// 451 4.7.1.
    Tempfail,
}

/// Why a breaker holds a message: logged with every held or rejected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The thread key whose breaker is open, e.g. `tidx:6f1c...` or `subj:quarterly results`.
    pub thread: String,
    /// The distribution list that made the audience wide, if any.
    pub list: Option<String>,
    /// Weighted fan-out of the envelope.
    pub audience: u64,
    /// Which rule: `replies`, `fast`, `me-too` or `manual`.
    pub breaker: &'static str,
    /// Wide replies and distinct senders counted in the thread's window so far.
    pub replies: u32,
    pub senders: u32,
    /// One line for logs and for the sender: what happened.
    pub reason: String,
    /// The configured action for this hold (the list's override or the policy's).
    pub action: HoldAction,
    /// The storm's subject and original sender, for alerts and notices (`origins`).
    pub origin: Option<std::sync::Arc<crate::origins::Origin>>,
}

/// The storm engine's answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// Set when a breaker holds this message; also in dry-run (`log`), where `action` is Deliver.
    pub hold: Option<Hold>,
    /// Set when this message opened a breaker: the alert for it goes out once.
    pub opened: Option<Hold>,
}

impl Verdict {
    pub const DELIVER: Verdict = Verdict {
        action: Action::Deliver,
        hold: None,
        opened: None,
    };

    /// A short word for logs: deliver, would-hold, quarantine, reject, tempfail.
    pub fn label(&self) -> &'static str {
        match (self.action, &self.hold) {
            (Action::Deliver, Some(_)) => "would-hold",
            (Action::Deliver, None) => "deliver",
            (Action::Quarantine, _) => "quarantine",
            (Action::Reject, _) => "reject",
            (Action::Tempfail, _) => "tempfail",
        }
    }
}
