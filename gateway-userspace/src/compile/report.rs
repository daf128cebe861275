//! What a compile says about the objects it was given, as plain data: which objects were
//! dropped (`compile::isolate`) and, for Gateway API objects, the status a conformant
//! implementation writes. Status writers and `gatewayd validate` are built from it.

use serde::Serialize;

use super::isolate::DroppedObject;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Objects left out for their errors.
    pub dropped: Vec<DroppedObject>,
}
