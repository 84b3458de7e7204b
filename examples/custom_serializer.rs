//! A serializer written outside the crate: JSON inside a version tag,
//! `{"v":1,"data":<value>}`, that refuses a payload of another version with
//! a clear error. The contract names it, so host and worker both use it
//! (and a worker built with another serializer is refused at the
//! handshake). The example spawns itself as the worker, sends a note with
//! bytes and non-ASCII text, and checks that it comes back unchanged.
//!
//! Run: `cargo run --example custom_serializer`

use actix::prelude::*;
use bytes::{BufMut, BytesMut};
use isolated_workers::{ChildProcess, Close, CodecError, Serializer, Worker, WorkerError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// JSON with a version tag around every payload.
struct VersionedJson;

impl VersionedJson {
    /// The version this build writes and reads.
    const VERSION: u32 = 1;
}

/// What goes on the wire, borrowing the value when encoding.
#[derive(Serialize)]
struct Tagged<'a, T: ?Sized> {
    v: u32,
    data: &'a T,
}

/// What comes off the wire: the version, and the value still undecoded.
#[derive(Deserialize)]
struct Untagged {
    v: u32,
    data: serde_json::Value,
}

impl Serializer for VersionedJson {
    // Travels in the handshake: a peer with another serializer (or another
    // version of this one, if its name changed with it) is refused there.
    const NAME: &'static str = "versioned-json";

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut BytesMut) -> Result<(), CodecError> {
        let tagged = Tagged {
            v: Self::VERSION,
            data: value,
        };
        serde_json::to_writer(out.writer(), &tagged)
            .map_err(|e| CodecError(format!("versioned-json: {e}")))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        // JSON claims no lengths, so this allocates in proportion to the
        // input, as the trait asks.
        let Untagged { v, data } = serde_json::from_slice(bytes)
            .map_err(|e| CodecError(format!("versioned-json: {e}")))?;
        if v != Self::VERSION {
            return Err(CodecError(format!(
                "versioned-json: the payload is version {v}, this build reads version {}",
                Self::VERSION
            )));
        }
        T::deserialize(data).map_err(|e| CodecError(format!("versioned-json: {e}")))
    }
}

/// A note to keep: a title in any script, and a body of raw bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    title: String,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

/// The worker's answer: the note as it arrived, and where.
#[derive(Debug, Serialize, Deserialize)]
struct Kept {
    note: Note,
    pid: u32,
}

isolated_workers::contract! {
    /// What the note keeper understands, encoded with `VersionedJson`.
    Notes (version = 1, serializer = VersionedJson) {
        Note => Kept,
    }
}

/// The worker: answers each note with itself.
struct Keeper;

impl Actor for Keeper {
    type Context = Context<Self>;
}

impl Handler<Note> for Keeper {
    type Result = Result<Kept, WorkerError>;

    fn handle(&mut self, note: Note, _: &mut Context<Self>) -> Self::Result {
        Ok(Kept {
            note,
            pid: std::process::id(),
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In the worker child this serves requests and never returns.
    isolated_workers::worker_entry::<Notes, _>("notes", || Keeper);

    let note = Note {
        title: "Grüße aus Zürich — 東京 🌸 e\u{301}".into(),
        body: vec![0, 1, 0x7f, 0x80, 0xfe, 0xff],
    };

    // What the serializer puts on the wire, and what it makes of a payload
    // from a later version.
    let mut wire = BytesMut::new();
    VersionedJson::encode(&note, &mut wire)?;
    println!("on the wire: {}", String::from_utf8_lossy(&wire));
    let future = br#"{"v":2,"data":{"title":"","body":[]}}"#;
    match VersionedJson::decode::<Note>(future) {
        Err(e) => println!("a version 2 payload is refused: {e}"),
        Ok(note) => return Err(format!("a version 2 payload was read as {note:?}").into()),
    }

    actix::System::new().block_on(async {
        let worker =
            Worker::<Notes, ChildProcess>::spawn(ChildProcess::current_exe("notes")).await?;
        println!("sent: {note:?}");
        let kept = worker.send(note.clone()).await??;
        println!("got:  {:?} (from worker pid {})", kept.note, kept.pid);
        worker.send(Close).await?;
        if kept.note != note {
            return Err("the note came back changed".into());
        }
        if kept.pid == std::process::id() {
            return Err("the reply did not come from the worker".into());
        }
        println!("the note made the round trip unchanged");
        Ok(())
    })
}
