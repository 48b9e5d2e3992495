//! What the `aia` command line is made of, beside its `main`: the parts worth testing
//! on their own.

pub mod bench_grpc;
pub mod env_file;
pub mod secrets;
