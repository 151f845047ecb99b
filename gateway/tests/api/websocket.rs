//! WebSocket-only behaviour.
