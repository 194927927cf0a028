//! Shared support code for the integration tests (fault proxy, history checker, ...).
//! Each test binary declares `mod support;` and uses a subset of it.

// Each test binary compiles this module on its own and uses only part of it, so the parts a
// given binary leaves unused would otherwise warn as dead code.
#![allow(dead_code)]

pub mod build_info_proxy;
pub mod contender;
pub mod failpoint;
pub mod history;
pub mod leaders;
pub mod losses;
pub mod own_server;
pub mod poll;
pub mod proxy;
pub mod server;
