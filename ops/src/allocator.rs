//! The allocator every MangaHub binary runs on: jemalloc. Each `main.rs`
//! installs it with
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: mangahub_ops::Allocator = mangahub_ops::ALLOCATOR;
//! ```
//!
//! Libraries and their tests keep the system allocator. Measured against
//! glibc's, alternating, on the same build (figures in `docs/gateway.md`,
//! "Memory per connection", and `docs/benchmarks.md`): an idle gateway
//! connection keeps 140-230 fewer bytes resident, and a hybrid
//! `UpdateProgress` costs the service about a fifth less CPU. jemalloc does
//! not build for MSVC; there the system allocator stays.

#[cfg(not(target_env = "msvc"))]
pub type Allocator = tikv_jemallocator::Jemalloc;
#[cfg(not(target_env = "msvc"))]
pub const ALLOCATOR: Allocator = tikv_jemallocator::Jemalloc;

#[cfg(target_env = "msvc")]
pub type Allocator = std::alloc::System;
#[cfg(target_env = "msvc")]
pub const ALLOCATOR: Allocator = std::alloc::System;
