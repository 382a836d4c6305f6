//! A valid component that does not implement the cjm:capability world.

/// Adds two numbers; exported under a name the host does not look for.
#[unsafe(no_mangle)]
pub extern "C" fn add(a: i32, b: i32) -> i32 {
    a.wrapping_add(b)
}
