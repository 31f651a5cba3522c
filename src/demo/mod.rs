pub mod agent;
pub mod server;
