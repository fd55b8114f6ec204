//! custom-pages: a CDN edge on Pingora that serves operator-configured custom error pages.

pub mod admin;
pub mod cache;
pub mod config;
pub mod edge;
pub mod pages;
pub mod proxy;
pub mod upstream;
