//! Black-box tests of the progress service over real gRPC, on SQLite and on
//! Postgres alike (see `helpers::both_backends!`).

mod concurrency;
mod delete;
mod get_list;
mod health;
mod helpers;
mod restart;
mod service_token;
mod update;
mod validation;
mod watch;
