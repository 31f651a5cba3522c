//! mcp-ledger: a transparent MCP proxy that durably records every crossing in a hash-chained
//! ledger before forwarding it. See ARCHITECTURE.md for the map of the code.

pub mod api;
pub mod approval;
pub mod checkpointer;
pub mod cli;
pub mod config;
pub mod demo;
pub mod intercept;
pub mod pii;
pub mod policy;
pub mod proxy;
pub mod record;
pub mod store;
pub mod telemetry;
