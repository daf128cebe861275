//! Core v1 `Endpoints`: what clusters without EndpointSlices (or older tooling) publish.

use serde::{Deserialize, Serialize};

use super::ObjectMeta;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Endpoints {
    pub metadata: ObjectMeta,
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointSubset {
    pub addresses: Vec<EndpointAddress>,
    /// Never routed to.
    pub not_ready_addresses: Vec<EndpointAddress>,
    pub ports: Vec<EndpointsPort>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointAddress {
    pub ip: String,
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointsPort {
    pub name: Option<String>,
    pub port: u32,
    pub protocol: Option<String>,
}

/// A Namespace: its labels are what Gateway API `allowedRoutes.namespaces.selector`
/// matches.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}
