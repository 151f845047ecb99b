//! The deployment files against the binaries: docker-compose.yml, its scale-out
//! example, `.env.example` and the Dockerfile are checked with the binaries'
//! own `--help` (no Docker engine needed), and the compose topology is started
//! natively and driven through `mangahub client`; the progress service is
//! killed and restarted under connected, writing devices (`restart`).

mod binaries;
mod compose;
mod compose_check;
mod failover;
mod process;
mod restart;
mod smoke;
