//! Integration tests of `cjm-native-worker`: the router driven with `oneshot` (no sockets)
//! against a small capability defined here.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod probe;
mod router;
