//! custom-pages: a CDN edge on Pingora that serves operator-configured custom error pages.
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod config;
pub mod edge;
pub mod filters;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod server;
pub mod upstream;
