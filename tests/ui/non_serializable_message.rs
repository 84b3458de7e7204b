// A message that is not `#[local]` must be serializable: it may cross a
// process boundary.
use std::sync::mpsc::Sender;

struct Notify {
    to: Sender<String>,
}

isolated_workers::contract! { Notifier { Notify => () } }

fn main() {}
