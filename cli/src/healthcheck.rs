//! `mangahub healthcheck`: a container probe that needs no shell tools in the
//! image. By default it asks the progress service's gRPC health service; with
//! `--http` it asks a service's admin `/readyz` (the gateway's, say).

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// gRPC address of the progress service.
    #[arg(long, env = "PROGRESS_URL", default_value = "http://127.0.0.1:8083")]
    pub url: String,
    /// Probe this HTTP URL instead (e.g. http://127.0.0.1:9081/readyz): healthy
    /// when it answers 200.
    /// Takes precedence over `--url`.
    #[arg(long)]
    pub http: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub async fn run(args: &HealthcheckArgs) -> anyhow::Result<()> {
    let probe = async {
        match &args.http {
            Some(url) => http_ready(url).await,
            None => grpc_serving(&args.url).await,
        }
    };
    tokio::time::timeout(args.timeout, probe)
        .await
        .with_context(|| format!("no answer within {:?}", args.timeout))?
}

async fn grpc_serving(url: &str) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(url.to_owned())?.connect().await?;
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

async fn http_ready(url: &str) -> anyhow::Result<()> {
    let uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client.get(uri).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "{url} answered {status}: {}",
        String::from_utf8_lossy(&body).trim()
    );
    Ok(())
}
