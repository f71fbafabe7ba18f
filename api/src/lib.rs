//! `rfo-api`: accepts jobs over HTTP, records them, queues them and serves results. The
//! library lets the all-in-one commands of `rfo-worker` run the same server in-process.

pub mod auth;
pub mod republish;
pub mod routes;
pub mod server;
pub mod settings;
