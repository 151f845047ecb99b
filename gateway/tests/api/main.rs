//! Black-box tests of the gateway: real sockets, the real progress service.
//! The scenarios of contract §5 run over both transports (`tcp`, `ws`); the
//! rest concern one port or one transport.

// On purpose: `tcp` and `ws` load the same scenario files, once per transport.
#![allow(clippy::duplicate_mod)]

mod admin;
mod backlog;
mod helpers;
mod tcp;
mod tls;
mod websocket;
mod ws;
