//! `#[local]` messages: moved to a thread worker by reference, never
//! serialized — what the `SharesMemory` capability unlocks. (Sending one to
//! a child-process worker does not compile: see `tests/ui/`.)

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use isolated_workers::{Close, Thread, Worker, WorkerError};

/// A scene too big (or too alive) to copy: the worker reads it in place.
struct Render {
    scene: Arc<Vec<u8>>,
}

/// Hands the worker a shared log to append to: not serializable at all.
struct Attach {
    log: Arc<Mutex<Vec<String>>>,
}

/// Asks the worker to write to the attached log.
#[derive(serde::Serialize, serde::Deserialize)]
struct Note {
    text: String,
}

isolated_workers::contract! {
    Renderer {
        #[local] Render => usize,
        #[local] Attach => (),
        Note => (),
    }
}

#[derive(Default)]
struct RenderWorker {
    log: Option<Arc<Mutex<Vec<String>>>>,
}

impl Actor for RenderWorker {
    type Context = Context<Self>;
}

impl Handler<Render> for RenderWorker {
    type Result = Result<usize, WorkerError>;
    fn handle(&mut self, render: Render, _: &mut Context<Self>) -> Self::Result {
        // The address of the bytes the worker sees.
        Ok(render.scene.as_ptr() as usize)
    }
}

impl Handler<Attach> for RenderWorker {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, attach: Attach, _: &mut Context<Self>) -> Self::Result {
        self.log = Some(attach.log);
        Ok(())
    }
}

impl Handler<Note> for RenderWorker {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, note: Note, _: &mut Context<Self>) -> Self::Result {
        let log = self.log.as_ref().ok_or_else(|| {
            WorkerError::from(isolated_workers::RemoteError::new(
                "NoLog",
                "attach a log first",
            ))
        })?;
        log.lock().unwrap().push(note.text);
        Ok(())
    }
}

#[actix::test]
async fn local_messages_reach_a_thread_worker_without_a_copy() {
    let worker = Worker::<Renderer, _>::spawn(Thread::new(RenderWorker::default))
        .await
        .unwrap();

    let scene = Arc::new(vec![7u8; 1 << 20]);
    let seen_at = worker
        .send(Render {
            scene: scene.clone(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen_at,
        scene.as_ptr() as usize,
        "the worker saw the same bytes"
    );

    let log = Arc::new(Mutex::new(Vec::new()));
    worker
        .send(Attach { log: log.clone() })
        .await
        .unwrap()
        .unwrap();
    worker
        .send(Note {
            text: "written by the worker".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*log.lock().unwrap(), ["written by the worker"]);

    worker.send(Close).await.unwrap();
    assert_eq!(
        Arc::strong_count(&log),
        1,
        "closing the worker dropped its share"
    );
}
