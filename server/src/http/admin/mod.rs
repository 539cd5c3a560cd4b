//! The admin API, one module per concern; `query` holds the helpers they share.

pub mod datasets;
pub mod documents;
pub mod feedback;
pub mod models;
pub mod query;
pub mod sites;
pub mod training;
pub mod users;
