//! The HTTP side: the routes and everything every route shares. Authentication and scopes
//! (`auth`), request extraction with JSON errors (`extract`), the application state
//! (`state`), per-key rate limits (`ratelimit`), request telemetry and customer hashing
//! (`telemetry`), and the host that serves the router on a socket or under the Lambda
//! runtime (`host`). The application's services (answers, catalog, CRM, retrain, reports)
//! live beside this module and know nothing of HTTP.

pub mod auth;
pub mod extract;
pub mod host;
pub mod ratelimit;
pub mod routes;
pub mod state;
pub mod telemetry;
