//! Transports and message routing: everything that knows the MCP wire format.
//!
//! **Invariant:** the proxy forwards the bytes it received. It parses only the routing fields
//! ([`jsonrpc::Envelope`]) and builds a message of its own only to refuse one.

pub mod http_server;
pub mod http_upstream;
pub mod jsonrpc;
pub mod lines;
pub mod relay;
pub mod shared_upstream;
pub mod stdio;
pub mod upstream;

/// Whether a host name (without port or brackets) names this machine: `localhost` or a loopback
/// address.
pub(crate) fn is_loopback_host(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
