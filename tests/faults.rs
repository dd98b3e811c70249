//! Fault-injection suite (issue 4).

mod common;
