//! Black-box tests of the gateway: real sockets, the real progress service.

mod admin;
mod auth;
mod backlog;
mod devices;
mod fanout;
mod helpers;
mod limits;
mod requests;
mod resilience;
mod scenarios;
mod sync;
mod tls;
