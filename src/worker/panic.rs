//! The worker's panic hook: remembers the panic message so that it can be
//! sent to the host before the worker exits (the default hook still prints
//! it to stderr).

use std::sync::Mutex;

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Installs the hook, keeping the previous one.
pub(crate) fn install_hook() {
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
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        previous(info);
    }));
}

/// The message of the latest panic, if any.
pub(crate) fn take_message() -> Option<String> {
    LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take()
}
