//! The same scenarios over WebSocket: one JSON message per text frame.

pub mod helpers {
    pub use crate::helpers::*;

    pub async fn spawn_app() -> TestApp {
        crate::helpers::spawn_app().await.over(Transport::WebSocket)
    }

    pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
        crate::helpers::spawn_app_with(extra)
            .await
            .over(Transport::WebSocket)
    }

    pub async fn spawn_gateway_first() -> (TestApp, std::net::SocketAddr) {
        let (app, addr) = crate::helpers::spawn_gateway_first().await;
        (app.over(Transport::WebSocket), addr)
    }
}
#[path = "auth.rs"]
mod auth;
#[path = "devices.rs"]
mod devices;
#[path = "fanout.rs"]
mod fanout;
#[path = "limits.rs"]
mod limits;
#[path = "requests.rs"]
mod requests;
#[path = "resilience.rs"]
mod resilience;
#[path = "scenarios.rs"]
mod scenarios;
#[path = "sync.rs"]
mod sync;
