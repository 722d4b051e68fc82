//! The broker-wide "something was appended" signal: long-polling fetches wait on it.

use tokio::sync::watch;

/// Bumped after every append (client produce, coordinator record, transaction marker).
pub struct AppendSignal {
    appended: watch::Sender<u64>,
}

impl Default for AppendSignal {
    fn default() -> Self {
        AppendSignal {
            appended: watch::channel(0).0,
        }
    }
}

impl AppendSignal {
    /// Subscribes to append notifications.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Wakes every waiting fetch.
    pub fn notify(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }
}
