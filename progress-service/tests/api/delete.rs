use tonic::Code;

use crate::helpers::{Backend, both_backends, spawn_app};

both_backends!(delete_removes_and_recreate_starts_over);

async fn delete_removes_and_recreate_starts_over(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(
        app.delete("erin", 9).await.expect_err("absent").code(),
        Code::NotFound
    );
    app.update("erin", 9, "3").await;
    app.update("erin", 9, "4").await;
    app.delete("erin", 9).await.expect("deleted");
    assert_eq!(
        app.get("erin", 9).await.expect_err("gone").code(),
        Code::NotFound
    );
    assert_eq!(
        app.delete("erin", 9)
            .await
            .expect_err("already gone")
            .code(),
        Code::NotFound
    );
    let again = app.update("erin", 9, "1").await;
    assert!(again.applied);
    assert_eq!(
        again.progress.map(|p| (p.chapter, p.version)),
        Some(("1".to_owned(), 1))
    );
}
