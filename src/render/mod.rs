//! Rendering: history drawn as images ([`plot`]), on the blocking pool.

pub(crate) mod plot;
