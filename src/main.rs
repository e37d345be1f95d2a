//! The `tcp-integration` binary: parses the command line and calls into the library.

fn main() {}
