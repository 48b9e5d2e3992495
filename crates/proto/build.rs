//! Generates the gRPC code from `proto/` with a protoc that comes from crates.io
//! (`protoc-bin-vendored`), so a fresh machine needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // Hand the path to the builder rather than mutating the process environment.
        let include = protoc_bin_vendored::include_path()?;
        return compile(Some(protoc), Some(include));
    }
    compile(None, None)
}

fn compile(
    protoc: Option<std::path::PathBuf>,
    include: Option<std::path::PathBuf>,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("aia/common/v1/common.proto"),
        root.join("aia/auth/v1/auth.proto"),
        root.join("aia/session/v1/session.proto"),
        root.join("aia/audit/v1/audit.proto"),
    ];
    let mut includes = vec![root.clone()];
    includes.extend(include);
    let mut config = tonic_prost_build::Config::new();
    if let Some(protoc) = protoc {
        config.protoc_executable(protoc);
    }
    tonic_prost_build::configure().compile_with_config(config, &files, &includes)?;
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
