//! gatewayd: an eBPF-assisted ingress gateway that serves Istio's and the Gateway API's
//! YAML. The data flows one way through these modules:
//!
//! `config` (load) → `compile` (validate + compile) → `snapshot` → `proxy` (serve), with
//! `ebpf` feeding the kernel programs from the same snapshot and `admin`/`metrics`
//! reporting on all of them.

pub mod admin;
pub mod authz;
pub mod compile;
pub mod config;
pub mod connection_pool;
pub mod connections;
pub mod dns;
pub mod ebpf;
pub mod kubernetes;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod route_table;
pub mod runtime;
pub mod snapshot;
pub mod tls;
pub mod workers;
