//! The gRPC client of the progress service: one lazily connected channel
//! (balanced over several `PROGRESS_URL`s when given), keep-alive, and the
//! `SERVICE_TOKEN` on every call.

use std::time::Duration;

use anyhow::Context;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::config::Config;

pub type Client = ProgressServiceClient<InterceptedService<Channel, ServiceAuth>>;

/// Adds `authorization: Bearer <SERVICE_TOKEN>` when a token is configured.
#[derive(Clone)]
pub struct ServiceAuth(Option<MetadataValue<Ascii>>);

impl Interceptor for ServiceAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub fn client(config: &Config) -> anyhow::Result<Client> {
    let endpoints = config
        .progress_url
        .iter()
        .map(|url| {
            Endpoint::from_shared(url.trim().to_owned())
                .with_context(|| format!("invalid PROGRESS_URL {url:?}"))
                .map(|e| {
                    e.connect_timeout(config.grpc_connect_timeout)
                        .tcp_nodelay(true)
                        .tcp_keepalive(Some(Duration::from_secs(30)))
                        .http2_keep_alive_interval(Duration::from_secs(15))
                        .keep_alive_timeout(Duration::from_secs(10))
                        .keep_alive_while_idle(true)
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let channel = match endpoints.as_slice() {
        [] => anyhow::bail!("PROGRESS_URL is empty"),
        [one] => one.connect_lazy(),
        _ => Channel::balance_list(endpoints.into_iter()),
    };
    let token = match &config.service_token {
        None => None,
        Some(token) => {
            let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.expose())
                .parse()
                .context("SERVICE_TOKEN must be printable ASCII")?;
            value.set_sensitive(true);
            Some(value)
        }
    };
    Ok(ProgressServiceClient::with_interceptor(
        channel,
        ServiceAuth(token),
    ))
}
