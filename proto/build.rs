//! Compiles the `ragd.v1` protos once for the whole workspace and writes the file descriptor set
//! that the services hand to gRPC reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["ragd/v1/embedder.proto", "ragd/v1/indexer.proto", "ragd/v1/generator.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("ragd_v1_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
