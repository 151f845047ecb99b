use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{Backend, spawn_app_with, update_req};

#[tokio::test]
async fn service_token_guards_the_api_but_not_health() {
    let app = spawn_app_with(Backend::Sqlite, &["--service-token", "s3cret"]).await;
    let err = app
        .send(update_req("t", 1, "1"))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect_lazy();
    for (token, ok) in [("Bearer wrong", false), ("Bearer s3cret", true)] {
        let header: MetadataValue<_> = token.parse().expect("ascii");
        let mut client = ProgressServiceClient::with_interceptor(
            channel.clone(),
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", header.clone());
                Ok(req)
            },
        );
        let result = client.update_progress(update_req("t", 1, "1")).await;
        assert_eq!(result.is_ok(), ok, "{token}");
    }

    let health = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is open");
    assert_eq!(
        health.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
