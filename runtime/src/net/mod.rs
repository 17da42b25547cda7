//! TCP between hosts, shared by the remote [`Manager`](crate::Manager) and
//! the cluster pool: the authentication handshake both sides prove a key
//! with before anything else is read, dialling, accepting with a bound on
//! handshakes in flight, and the settings that notice a silent peer.
//!
//! - `auth.rs`: the HMAC-SHA256 challenge–response.
//! - `tcp.rs`: dial, accept, liveness.

pub(crate) mod auth;
mod tcp;

pub(crate) use tcp::{Handshakes, accept, dial, handshake_as_server};
