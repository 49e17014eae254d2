//! Generated code for the `agentmesh.v1` protobuf package.
//!
//! Nothing but generated types lives here; domain code converts to and from
//! these types in one module per crate.

/// The well-known types the messages use (`google.protobuf.Struct` and
/// `Value`), re-exported so converters use the very version generated
/// code refers to.
pub use prost_types;

pub mod v1 {
    tonic::include_proto!("agentmesh.v1");

    /// Encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("agentmesh_descriptor");
}
