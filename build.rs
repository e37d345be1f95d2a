//! Generates the ThingsBoard protobuf and gRPC code from `proto/` with a pure-Rust parser
//! (protox), so a fresh machine builds with `cargo build` alone: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/integration.proto"];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
