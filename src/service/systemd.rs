//! What `Type=notify` tells systemd: READY=1 once every listener is bound and the engine is
//! ready, RELOADING=1 then READY=1 around a SIGHUP, STOPPING=1 when shutdown begins; each with
//! a STATUS= line that `systemctl status` shows. Without $NOTIFY_SOCKET (not started by
//! systemd) these do nothing.

use sd_notify::NotifyState;

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the policy file"),
    ];
    // systemd 253 and later (Type=notify-reload) want the time the reload began.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}
