//! Generated types and client/server stubs of `mangahub.progress.v1`.

#![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]

pub mod progress {
    pub mod v1 {
        tonic::include_proto!("mangahub.progress.v1");
    }
}

pub use progress::v1;

/// Encoded `FileDescriptorSet` of the proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/progress_descriptor.bin"));

/// Response header of a live-only `WatchProgress` (empty `after`): the cursor
/// the stream starts after, so a watcher can resume even before its first
/// event.
pub const WATCH_CURSOR_HEADER: &str = "mangahub-cursor";

/// Trailer of an `INVALID_ARGUMENT` status: the request field at fault (the
/// message starts with it too, for people), so callers can map it to their
/// own names without parsing text.
pub const INVALID_FIELD_TRAILER: &str = "mangahub-field";
