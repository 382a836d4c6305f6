//! Integration tests of `cjm-native-worker`: the router driven with `oneshot` (no sockets)
//! against a small capability defined here.

mod probe;
mod router;
