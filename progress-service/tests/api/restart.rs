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

#[tokio::test]
async fn a_second_service_on_the_same_sqlite_file_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let err = refused_start(&app.database_url).await;
    assert!(err.contains("in use by another progress service"), "{err}");
}

/// Why a service on `database_url` refuses to start (it must refuse).
async fn refused_start(database_url: &str) -> String {
    use clap::Parser;
    let config = progress_service::Config::try_parse_from([
        "progress-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
    ])
    .expect("config");
    match progress_service::Application::build(config).await {
        Ok(_) => panic!("a service on {database_url} started"),
        Err(err) => format!("{err:#}"),
    }
}

/// A file the service creates has 2 KiB pages and WAL; a record written
/// through the writer's own connection is in the file once the service stops.
#[tokio::test]
async fn a_new_sqlite_file_has_small_pages_and_a_wal() {
    use sqlx::Connection;
    let mut app = spawn_app(Backend::Sqlite).await;
    app.update("pages", 1, "3").await;
    app.stop().await.expect("clean exit");
    let mut conn = sqlx::SqliteConnection::connect(&app.database_url)
        .await
        .expect("open the file");
    let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await
        .expect("page size");
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("journal mode");
    let (chapter,): (i64,) = sqlx::query_as(
        "SELECT chapter_hundredths FROM user_progress WHERE user_id = 'pages' AND manga_id = 1",
    )
    .fetch_one(&mut conn)
    .await
    .expect("the record");
    assert_eq!((page_size, mode.as_str(), chapter), (2048, "wal", 300));
}

#[tokio::test]
async fn an_in_memory_sqlite_database_is_refused_with_a_clear_error() {
    for url in ["sqlite::memory:", "sqlite://file.db?mode=memory"] {
        let err = refused_start(url).await;
        assert!(
            err.contains("an in-memory SQLite database cannot be used"),
            "{url}: {err}"
        );
    }
}
