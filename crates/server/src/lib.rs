//! The Alpacon gateway (`alpacon-server`): REST API over rustls, agent
//! relay, identity, audit and storage. See ARCHITECTURE.md.

pub mod acl;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod commands;
pub mod config;
pub mod console;
pub mod db;
pub mod error;
pub mod gateway;
pub mod iam;
pub mod quickstart;
pub mod relay;
pub mod servers;
pub mod tls;
pub mod tokens;
pub mod webftp;
pub mod websh;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod testutil;
