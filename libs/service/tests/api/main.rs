//! The service's one integration-test binary: every route through the router, the Lambda
//! event path, the model loader, the OpenAPI document, and the hostile-input table.
// Test helpers outside #[test] functions may unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

mod fixture;
mod hostile;
mod hostile_routes;
mod infra;
mod lambda;
mod loader;
mod models;
mod offers;
mod openapi;
mod privacy;
mod report;
mod routes;
mod scopes;
