//! The `mangahub` binary as a user runs it: `dev` on free ports, `token`, and
//! `client` commands against the dev gateway, all as real child processes.

mod client;
mod dev;
mod helpers;
#[path = "../common/in_process.rs"]
mod in_process;
mod shell;
mod sync;
mod tls;
mod token;
