//! `kefu serve`'s HTTP API (axum), by audience: customers (`customer`, streamed grounded
//! answers through `answer`), staff sign-in (`session`), agents (`agent`), admins (`admin`),
//! the OpenAI-compatible API (`openai`), live updates (`events`) and the web pages (`pages`); `listen` is the connection
//! loop with its header and body deadlines. `state` and `error` are
//! what the route modules share and import none of them; `guard` holds the staff and admin
//! extractors, `access` the widget sites, CORS and rate limits, `proxy` the client's address
//! behind trusted reverse proxies. Every path is in `routes`.

pub mod access;
pub mod admin;
pub mod agent;
pub mod answer;
pub(crate) mod corrections;
pub mod customer;
pub mod error;
pub mod events;
pub mod guard;
pub mod layers;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod openai;
pub mod pages;
pub mod proxy;
pub mod routes;
pub mod session;
pub mod state;

pub use error::{ApiError, ApiJson};
pub use routes::router;
pub use state::{ApiConfig, AppState};
