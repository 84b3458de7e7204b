//! The panic hook: remembers each thread's latest panic message so that it
//! can be reported to the host (by a child worker before it exits, or by the
//! proxy of a thread worker). The previous hook still runs, so the panic is
//! printed as usual.

use std::collections::HashMap;
use std::sync::{Mutex, Once};
use std::thread::ThreadId;

static LAST_PANIC: Mutex<Option<HashMap<ThreadId, String>>> = Mutex::new(None);
static INSTALL: Once = Once::new();

/// Installs the hook (once per process), keeping the previous one.
pub(crate) fn install_hook() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("Box<dyn Any>");
            let message = match info.location() {
                Some(at) => format!("panicked at {at}: {payload}"),
                None => format!("panicked: {payload}"),
            };
            LAST_PANIC
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(std::thread::current().id(), message);
            previous(info);
        }));
    });
}

/// The message of the latest panic on `thread`, if any.
pub(crate) fn take_message(thread: ThreadId) -> Option<String> {
    LAST_PANIC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()?
        .remove(&thread)
}
