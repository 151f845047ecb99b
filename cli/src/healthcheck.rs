//! `mangahub healthcheck`: a probe that needs no shell tools in the image.

use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// gRPC address of the progress service.
    #[arg(long, env = "PROGRESS_URL", default_value = "http://127.0.0.1:8083")]
    pub url: String,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub async fn run(args: &HealthcheckArgs) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(args.url.clone())?
        .connect_timeout(args.timeout)
        .timeout(args.timeout)
        .connect()
        .await?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "mangahub.progress.v1.ProgressService".into(),
        })
        .await?
        .into_inner()
        .status;
    anyhow::ensure!(
        status == ServingStatus::Serving as i32,
        "progress service is not serving"
    );
    Ok(())
}
