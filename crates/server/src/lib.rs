//! The Alpacon gateway (`alpacon-server`): REST API over rustls, agent
//! relay, identity, audit and storage. See ARCHITECTURE.md.

pub mod access;
pub mod accounts;
pub mod acl;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod commands;
pub mod config;
pub mod conn;
pub mod console;
pub mod db;
pub mod error;
pub mod gateway;
pub mod iam;
pub mod mfa;
pub mod openapi;
pub mod quickstart;
pub mod relay;
pub mod revoke;
pub mod servers;
pub mod settings;
pub mod tls;
pub mod tokens;
pub mod webftp;
pub mod websh;
pub mod work_sessions;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod layout_tests;
#[cfg(test)]
mod testutil;
