//! Compiles `proto/agentmesh/v1/*.proto` with the vendored protoc, so the
//! build needs no system protobuf compiler. The well-known types
//! (`google/protobuf/struct.proto`) come from the vendored protoc's own
//! include directory and map to `prost-types`; the descriptor set holds
//! them too (prost-build includes imports), so reflection clients such as
//! grpcurl can encode a `google.protobuf.Struct`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../../proto";
    let files = [
        "../../proto/agentmesh/v1/mailbox.proto",
        "../../proto/agentmesh/v1/task.proto",
        "../../proto/agentmesh/v1/cluster.proto",
        "../../proto/agentmesh/v1/events.proto",
    ];
    println!("cargo:rerun-if-changed={proto_dir}");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("agentmesh_descriptor.bin"))
        .compile_with_config(
            config,
            &files.map(std::path::PathBuf::from),
            &[std::path::PathBuf::from(proto_dir), well_known],
        )?;
    Ok(())
}
