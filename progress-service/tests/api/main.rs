//! Black-box tests of the progress service over real gRPC, on SQLite and on
//! Postgres alike and in hybrid mode (see `helpers::both_backends!`); hybrid-only
//! behaviour in `hybrid`.

mod admin;
mod batch;
mod changelog;
mod concurrency;
mod delete;
mod get_list;
mod health;
mod helpers;
mod hybrid;
mod restart;
mod service_token;
mod update;
mod validation;
mod watch;
