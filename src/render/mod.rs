//! Rendering: history drawn as images ([`plot`]), on the blocking pool, in the
//! series colours of [`palette`] (the dashboard's too).

pub(crate) mod palette;
pub(crate) mod plot;
