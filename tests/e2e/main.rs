//! End-to-end: the real gatewayd binary on temp configs, the demo upstream as the real
//! upstream, curl as the client, and real kernel programs on a veth pair in network
//! namespaces the tests create and remove.

mod authz;
mod basics;
mod config;
mod conformance;
mod egress;
mod grpc;
mod hostile;
mod http;
mod http_safety;
mod isolation;
mod istio_fidelity;
mod istio_traffic;
mod kernel;
mod kernel_authz;
mod kernel_ipv6;
mod kubernetes;
mod limits;
mod live_state;
mod node_ports;
mod ops;
mod proxy_protocol;
mod tls;
mod upstream_tls;
