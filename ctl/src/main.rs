//! `cjm-ctl`: the command line of the cjm capability host.

fn main() {
    println!("cjm-ctl {}", env!("CARGO_PKG_VERSION"));
}
