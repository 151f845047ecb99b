//! The checks behind the fuzz targets in `fuzz/`: one function per target,
//! taking the raw input bytes and panicking when an invariant breaks. The
//! fuzz targets call them, and so does the corpus replay test here, so a
//! committed corpus is re-checked by every `cargo test --workspace`.

pub mod chapter;
mod chunked;
pub mod codec;
pub mod jwt;
pub mod lines;
pub mod request;
pub mod websocket;

/// A target's check: panics when the input breaks an invariant.
pub type Check = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: [(&str, Check); 6] = [
    ("chapter", chapter::check),
    ("codec", codec::check),
    ("jwt", jwt::check),
    ("lines", lines::check),
    ("request", request::check),
    ("websocket", websocket::check),
];

#[cfg(test)]
mod replay;
