//! sea-orm entities of the users-api store. They never reach the wire: the API module converts.

pub mod api_key;
pub mod user;
