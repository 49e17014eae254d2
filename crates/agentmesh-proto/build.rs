//! Compiles `proto/agentmesh/v1/*.proto` with the vendored protoc, so the
//! build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../../proto";
    let files = [
        "../../proto/agentmesh/v1/mailbox.proto",
        "../../proto/agentmesh/v1/task.proto",
        "../../proto/agentmesh/v1/cluster.proto",
    ];
    println!("cargo:rerun-if-changed={proto_dir}");
    // SAFETY-free: build scripts are single-threaded, so setting the variable
    // before prost-build reads it is race-free.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .protoc_executable(protoc)
        .file_descriptor_set_path(out_dir.join("agentmesh_descriptor.bin"))
        .compile_protos(&files, &[proto_dir])?;
    Ok(())
}
