//! The binary's own tools, outside the hub's data flow: small clients an operator runs
//! against a hub that is already up (`telehub plot`), or on its database file
//! (`telehub export`, `telehub import`).

pub(crate) mod archive;
pub(crate) mod plot;
pub(crate) mod token;
