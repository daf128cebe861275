//! Following a Kubernetes cluster: leader election and the Gateway API status writer.

pub mod lease;
pub mod status_writer;
