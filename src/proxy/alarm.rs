//! Wakes a proxy at the moment it next needs to look at its requests (the
//! earliest deadline, the next sweep for abandoned ones), from one thread
//! per process rather than from the runtime's timer.
//!
//! A timer registered with tokio's runtime makes every park of that runtime
//! look for it and read the clock (callgrind: ~890 instructions a request
//! in the host, 7% of a small round trip), while a proxy's alarm moves
//! seldom: only when a new deadline is earlier than the one set, which
//! requests of one timeout never are. Setting the alarm costs two lock
//! round trips; a request that does not move it costs nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::task::Waker;
use std::time::Instant;

/// One proxy's alarm; it rings (wakes the waker last set) once the instant
/// last set has come.
pub(super) struct Alarm {
    slot: Arc<Slot>,
}

/// What an alarm and the clock thread share.
#[derive(Default)]
struct Slot {
    /// Set by the clock when it rang; taken by the proxy.
    rang: AtomicBool,
    /// The instant it is set for (`None` once it rang), and whom to wake.
    set: Mutex<Option<(Instant, Waker)>>,
}

impl Alarm {
    pub(super) fn new() -> Self {
        Self {
            slot: Arc::default(),
        }
    }

    /// Whether the alarm rang since this was last asked.
    pub(super) fn rang(&self) -> bool {
        self.slot.rang.swap(false, Ordering::AcqRel)
    }

    /// Sets the alarm for `at` (replacing any earlier setting), to wake
    /// `waker`.
    pub(super) fn set(&self, at: Instant, waker: &Waker) {
        *lock(&self.slot.set) = Some((at, waker.clone()));
        clock().add(at, Arc::downgrade(&self.slot));
    }
}

/// The process's clock thread: the alarms set, earliest first.
struct Clock {
    due: Mutex<Due>,
    /// Wakes the thread when an alarm earlier than it sleeps for is set.
    changed: Condvar,
    /// Whether the thread runs; if it could not be started, each alarm
    /// waits on a task of the runtime's instead.
    running: bool,
}

/// The alarms set, earliest first (stale ones, set again since, are
/// dropped when they come up), and when the thread wakes next.
#[derive(Default)]
struct Due {
    alarms: BinaryHeap<Reverse<Entry>>,
    /// What the thread sleeps until (`None`: until an alarm is set).
    sleeping_until: Option<Instant>,
}

/// One setting of an alarm.
struct Entry {
    at: Instant,
    slot: Weak<Slot>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// The clock thread, started on first use.
fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("isolated-workers-alarms".into())
            .spawn(|| clock().run());
        if let Err(e) = &started {
            tracing::warn!("no thread for request deadlines ({e}); using the runtime's timer");
        }
        Clock {
            due: Mutex::default(),
            changed: Condvar::new(),
            running: started.is_ok(),
        }
    })
}

impl Clock {
    /// Adds a setting of the alarm of `slot`.
    fn add(&self, at: Instant, slot: Weak<Slot>) {
        if !self.running {
            // Without the thread: a task of the runtime's waits for it.
            actix_rt::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                ring(at, &slot);
            });
            return;
        }
        let mut due = lock(&self.due);
        due.alarms.push(Reverse(Entry { at, slot }));
        if due.sleeping_until.is_none_or(|until| at < until) {
            self.changed.notify_one();
        }
    }

    /// Rings each alarm as its time comes, forever.
    fn run(&self) {
        let mut due = lock(&self.due);
        loop {
            let now = Instant::now();
            let mut ringing = Vec::new();
            while let Some(Reverse(next)) = due.alarms.peek() {
                if next.at > now {
                    break;
                }
                ringing.extend(due.alarms.pop().map(|Reverse(entry)| entry));
            }
            due.sleeping_until = due.alarms.peek().map(|Reverse(next)| next.at);
            if !ringing.is_empty() {
                // Rung without the clock's lock, which `Alarm::set` takes
                // after its slot's.
                drop(due);
                for entry in ringing {
                    ring(entry.at, &entry.slot);
                }
                due = lock(&self.due);
                continue;
            }
            due = match due.sleeping_until {
                Some(until) => {
                    let wait = until.saturating_duration_since(now);
                    let waited = self.changed.wait_timeout(due, wait);
                    waited.unwrap_or_else(|e| e.into_inner()).0
                }
                None => self.changed.wait(due).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// Rings the alarm of `slot` if it is still set for `at` (it was not set
/// again since, nor dropped).
fn ring(at: Instant, slot: &Weak<Slot>) {
    let Some(slot) = slot.upgrade() else {
        return;
    };
    let mut set = lock(&slot.set);
    if set.as_ref().is_some_and(|(when, _)| *when == at) {
        let (_, waker) = set.take().expect("checked above");
        drop(set);
        slot.rang.store(true, Ordering::Release);
        waker.wake();
    }
}

/// Locks `mutex`, whether or not a thread panicked holding it (what it
/// guards stays consistent: each update is one assignment or push).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A waker that says on a channel when it is woken.
    struct Tell(Mutex<mpsc::Sender<()>>);

    impl std::task::Wake for Tell {
        fn wake(self: Arc<Self>) {
            let _ = lock(&self.0).send(());
        }
    }

    fn waker() -> (Waker, mpsc::Receiver<()>) {
        let (tell, told) = mpsc::channel();
        (Waker::from(Arc::new(Tell(Mutex::new(tell)))), told)
    }

    #[test]
    fn an_alarm_rings_once_at_its_latest_setting() {
        let (waker, woken) = waker();
        let alarm = Alarm::new();
        let soon = Instant::now() + Duration::from_millis(20);
        alarm.set(soon + Duration::from_secs(3600), &waker);
        alarm.set(soon, &waker);
        woken
            .recv_timeout(Duration::from_secs(10))
            .expect("it rang");
        assert!(alarm.rang());
        assert!(Instant::now() >= soon, "not before its time");
        // The setting it replaced is stale: it does not ring.
        assert!(!alarm.rang());
    }

    #[test]
    fn an_earlier_alarm_set_later_rings_first() {
        let (late_waker, late_woken) = waker();
        let late = Alarm::new();
        late.set(Instant::now() + Duration::from_secs(3600), &late_waker);
        let (waker, woken) = waker();
        let early = Alarm::new();
        early.set(Instant::now() + Duration::from_millis(10), &waker);
        woken
            .recv_timeout(Duration::from_secs(10))
            .expect("it rang");
        assert!(early.rang());
        assert!(late_woken.try_recv().is_err() && !late.rang());
    }
}
