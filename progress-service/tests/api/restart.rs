use futures::StreamExt;

use crate::helpers::{Backend, both_backends, spawn_app};

both_backends!(acknowledged_records_survive_a_restart);

async fn acknowledged_records_survive_a_restart(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let acked: Vec<_> = futures::stream::iter(1..=200)
        .map(|manga| {
            let app = &app;
            async move { app.update("keeper", manga, &format!("{manga}.5")).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    app.restart().await;
    for out in acked {
        let acked = out.progress.expect("record");
        let stored = app
            .get("keeper", acked.manga_id)
            .await
            .expect("still there");
        assert_eq!(stored, acked);
    }
    app.stop().await.expect("clean exit");
}
