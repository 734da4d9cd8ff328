//! Ctrl-C, SIGTERM and SIGHUP while latplan holds connections to hosts.
//!
//! One listener decides what each signal means. While a session runs and waits for its end
//! ([`Interrupts::session_end`]), a signal ends the session cleanly: observers stopped, their
//! last records collected, the report printed. At any other moment it aborts the command
//! ([`Interrupts::aborted`]): the caller drops its work with its connections, and the control
//! directory ends every SSH master (transport::ControlDir). Without this, the default action of
//! these signals would kill latplan and leave its daemonized masters behind. Deciding in one
//! place leaves no race between two listeners woken by the same signal.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// A handle on the listener; clones share it.
#[derive(Clone)]
pub struct Interrupts {
    inner: Arc<Inner>,
}

struct Inner {
    /// A session is waiting in [`Interrupts::session_end`]: the next signal is its end.
    armed: AtomicBool,
    /// Bumped with the signal's name for each signal that ended a session.
    ended: watch::Sender<(u64, &'static str)>,
    /// The signal that aborted the command, once one has.
    abort: watch::Sender<Option<&'static str>>,
}

impl Interrupts {
    /// Installs the handlers (inside a runtime). From now on these signals no longer kill the
    /// process: they end the session or abort the command, as said above.
    pub fn listen() -> anyhow::Result<Self> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("failed to install a handler for {name}"))
        };
        let mut int = install(SignalKind::interrupt(), "SIGINT")?;
        let mut term = install(SignalKind::terminate(), "SIGTERM")?;
        let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
        let inner = Arc::new(Inner {
            armed: AtomicBool::new(false),
            ended: watch::channel((0, "")).0,
            abort: watch::channel(None).0,
        });
        let listener = inner.clone();
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                };
                if listener.armed.swap(false, Ordering::SeqCst) {
                    listener.ended.send_modify(|(n, s)| {
                        *n += 1;
                        *s = name;
                    });
                } else {
                    listener.abort.send_replace(Some(name));
                }
            }
        });
        Ok(Interrupts { inner })
    }

    /// Resolves with the signal's name when one arrives outside [`Self::session_end`]: the
    /// command should stop now.
    pub async fn aborted(&self) -> &'static str {
        let mut rx = self.inner.abort.subscribe();
        loop {
            if let Some(name) = *rx.borrow_and_update() {
                return name;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Resolves with the signal's name when one arrives while this waits: the session's end.
    /// Dropping the future (the session ended by itself) gives signals back to [`Self::aborted`].
    pub async fn session_end(&self) -> &'static str {
        struct Disarm<'a>(&'a AtomicBool);
        impl Drop for Disarm<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        // Subscribed before arming: a signal right after arming is seen as a change.
        let mut rx = self.inner.ended.subscribe();
        self.inner.armed.store(true, Ordering::SeqCst);
        let _disarm = Disarm(&self.inner.armed);
        match rx.changed().await {
            Ok(()) => rx.borrow().1,
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn raise(sig: libc::c_int) {
        // SAFETY: signalling our own process; the handlers installed by `listen` catch it.
        unsafe { libc::kill(libc::getpid(), sig) };
    }

    // One test for both meanings: signal handlers are process-wide, so two tests raising
    // signals in parallel threads would see each other's.
    #[tokio::test]
    async fn a_signal_ends_a_waiting_session_and_aborts_otherwise() {
        let i = Interrupts::listen().unwrap();
        let waiting = tokio::spawn({
            let i = i.clone();
            async move { i.session_end().await }
        });
        // Let the session arm itself.
        tokio::time::sleep(Duration::from_millis(100)).await;
        raise(libc::SIGTERM);
        let name = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the session saw its end")
            .unwrap();
        assert_eq!(name, "SIGTERM");
        let not_yet = tokio::time::timeout(Duration::from_millis(200), i.aborted()).await;
        assert!(not_yet.is_err(), "a session's end is not an abort");

        // No session waiting (a session_end future dropped early disarms too).
        let dropped = tokio::time::timeout(Duration::from_millis(50), i.session_end()).await;
        assert!(dropped.is_err());
        raise(libc::SIGHUP);
        let name = tokio::time::timeout(Duration::from_secs(5), i.aborted())
            .await
            .expect("aborted");
        assert_eq!(name, "SIGHUP");
    }
}
