use futures::StreamExt;

use crate::helpers::{Backend, both_backends, spawn_app};

both_backends!(concurrent_writers_on_one_key_lose_nothing);

async fn concurrent_writers_on_one_key_lose_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let writers = 64;
    let per_writer = 5;
    // Each writer sends its own chapters; interleaving decides which apply.
    let results: Vec<_> = futures::stream::iter(0..writers)
        .map(|w| {
            let app = &app;
            async move {
                let mut applied = 0;
                for i in 0..per_writer {
                    let chapter = (i * writers + w + 1).to_string();
                    if app.update("race", 1, &chapter).await.applied {
                        applied += 1;
                    }
                }
                applied
            }
        })
        .buffer_unordered(writers as usize)
        .collect()
        .await;
    let applied: i64 = results.iter().sum();
    let stored = app.get("race", 1).await.expect("stored");
    assert_eq!(stored.version, applied, "one version per applied update");
    assert_eq!(
        stored.chapter,
        (writers * per_writer).to_string(),
        "the furthest chapter wins"
    );
}
