//! The deployment files against the binaries: docker-compose.yml, its scale-out
//! example, `.env.example` and the Dockerfile are checked with the binaries'
//! own `--help` (no Docker engine needed), and the compose topology is started
//! natively and driven through `mangahub client`; the progress service is
//! killed and restarted under connected, writing devices (`restart`); the
//! gateway's live page runs in Debian's Chromium beside a TCP device (`live_page`).

mod binaries;
mod compose;
mod compose_check;
mod failover;
#[path = "../common/in_process.rs"]
mod in_process;
mod live_page;
mod process;
mod restart;
mod smoke;
