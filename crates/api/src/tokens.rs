//! Bodies of the tokens routes.

#[allow(unused_imports)]
use serde::{Deserialize, Serialize};
#[allow(unused_imports)]
use utoipa::{IntoParams, ToSchema};
