use mangahub_proto::v1 as pb;
use tonic::Code;

use crate::helpers::{Backend, both_backends, spawn_app, update_req};

/// The field an `INVALID_ARGUMENT` names in its trailer.
fn named_field(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get(mangahub_proto::INVALID_FIELD_TRAILER)
        .and_then(|v| v.to_str().ok())
}

both_backends!(bad_input_is_invalid_argument_naming_the_field);

async fn bad_input_is_invalid_argument_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let long_user = "u".repeat(129);
    let cases: Vec<(&str, pb::UpdateProgressRequest)> = vec![
        ("user_id", update_req("", 1, "1")),
        ("user_id", update_req(&long_user, 1, "1")),
        ("manga_id", update_req("u", 0, "1")),
        ("manga_id", update_req("u", 1 << 53, "1")),
        ("chapter", update_req("u", 1, "")),
        ("chapter", update_req("u", 1, "76.505")),
        ("chapter", update_req("u", 1, "100000.01")),
        ("chapter", update_req("u", 1, "-1")),
        ("chapter", update_req("u", 1, "abc")),
        (
            "page",
            pb::UpdateProgressRequest {
                page: -1,
                ..update_req("u", 1, "1")
            },
        ),
        (
            "page",
            pb::UpdateProgressRequest {
                page: 100_001,
                ..update_req("u", 1, "1")
            },
        ),
        (
            "status",
            pb::UpdateProgressRequest {
                status: Some("done".into()),
                ..update_req("u", 1, "1")
            },
        ),
    ];
    for (field, req) in cases {
        let err = app.send(req.clone()).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
        assert_eq!(named_field(&err), Some(field), "{req:?}");
    }
    assert_eq!(
        app.get("u", 1).await.expect_err("nothing written").code(),
        Code::NotFound
    );

    for (field, req) in [
        (
            "page_size",
            pb::ListProgressRequest {
                user_id: "u".into(),
                page_size: 1001,
                ..Default::default()
            },
        ),
        (
            "page_token",
            pb::ListProgressRequest {
                user_id: "u".into(),
                page_token: "nope".into(),
                ..Default::default()
            },
        ),
        ("user_id", pb::ListProgressRequest::default()),
    ] {
        let err = app.list(req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
        assert_eq!(named_field(&err), Some(field));
    }
    assert_eq!(
        app.get("", 1).await.expect_err("bad user").code(),
        Code::InvalidArgument
    );
    assert_eq!(
        app.delete("u", -5).await.expect_err("bad manga").code(),
        Code::InvalidArgument
    );
}
