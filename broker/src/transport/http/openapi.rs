//! /openapi.json, served from `openapi.json` beside this file. The test
//! `the_served_document_is_the_generated_one` generates the document from
//! the route handlers' annotations and the request and response types
//! (utoipa) and fails when the file differs, so it cannot drift from the
//! code; `PB_WRITE_OPENAPI=1 cargo test -p pb-broker openapi` writes it.
//! Built at run time instead, the builder utoipa derives was 520 KB of the
//! release binary's code (BENCHMARKS.md, "The release binary").

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as the test below generated it.
const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
use super::{
    activity, agents, error, listeners, locks, login, messages, metrics, portdaddy, portmanager,
    sessions, stacks, webhooks, whoami,
};

#[cfg(test)]
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "pb HTTP API",
        description = "pb's broker on loopback: Port Daddy's and PortManager's service routes, \
            and Port Daddy's locks, messages, agents and activity log. \
            Errors are {error, code}; see docs/PROTOCOL.md for the codes."
    ),
    paths(
        portdaddy::health,
        portdaddy::version,
        portdaddy::claim,
        portdaddy::claim_id,
        portdaddy::release,
        portdaddy::release_id,
        portdaddy::services,
        portdaddy::service,
        portmanager::alloc,
        portmanager::release,
        portmanager::heartbeat,
        portmanager::list,
        portmanager::lookup,
        locks::acquire,
        locks::release,
        locks::extend,
        locks::extend_post,
        locks::list,
        locks::show,
        messages::publish,
        messages::history,
        messages::clear,
        messages::channels,
        messages::channels_msg,
        messages::subscribe,
        messages::subscribe_msg,
        agents::register,
        agents::register_id,
        agents::heartbeat,
        agents::unregister,
        agents::list,
        agents::show,
        activity::activity,
        activity::stream,
        listeners::list,
        listeners::stream,
        stacks::list,
        stacks::restart,
        sessions::begin,
        sessions::list,
        sessions::show,
        sessions::end,
        sessions::end_delete,
        sessions::phase,
        sessions::takeover,
        sessions::add_note,
        sessions::notes,
        sessions::claim_files,
        sessions::release_files,
        sessions::who,
        login::login,
        whoami::whoami,
        webhooks::add,
        webhooks::list,
        webhooks::events,
        webhooks::get_one,
        webhooks::update,
        webhooks::delete_one,
        webhooks::test,
        webhooks::deliveries,
        metrics::metrics,
        document,
    ),
    components(schemas(error::ErrorBody))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "pb",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    #[test]
    fn the_served_document_is_the_generated_one() {
        let generated = ApiDoc::openapi().to_pretty_json().unwrap() + "\n";
        if std::env::var_os("PB_WRITE_OPENAPI").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/transport/http/openapi.json"
            );
            std::fs::write(path, &generated).unwrap();
        }
        assert!(
            generated == DOCUMENT,
            "openapi.json is not the document the code describes: \
             run `PB_WRITE_OPENAPI=1 cargo test -p pb-broker openapi` and commit it"
        );
    }

    #[test]
    fn every_route_is_documented() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/health",
            "/version",
            "/claim",
            "/claim/{id}",
            "/release",
            "/release/{id}",
            "/services",
            "/services/{id}",
            "/alloc",
            "/heartbeat",
            "/list",
            "/lookup",
            "/openapi.json",
            "/login",
            "/webhooks",
            "/webhooks/events",
            "/webhooks/{id}",
            "/webhooks/{id}/test",
            "/webhooks/{id}/deliveries",
            "/locks",
            "/locks/{name}",
            "/locks/{name}/extend",
            "/msg/{channel}",
            "/channels",
            "/subscribe/{channel}",
            "/msg",
            "/msg/{channel}/subscribe",
            "/agents",
            "/agents/{id}",
            "/agents/{id}/heartbeat",
            "/activity",
            "/activity/stream",
        ] {
            assert!(
                paths.contains_key(p),
                "{p} missing from the OpenAPI document"
            );
        }
        assert!(
            paths["/release"].get("post").is_some() && paths["/release"].get("delete").is_some()
        );
        let one = &paths["/webhooks/{id}"];
        assert!(["get", "put", "delete"]
            .iter()
            .all(|m| one.get(m).is_some()));
        assert!(
            paths["/webhooks"].get("post").is_some() && paths["/webhooks"].get("get").is_some()
        );
        for (p, methods) in [
            ("/locks/{name}", &["get", "post", "put", "delete"][..]),
            ("/msg/{channel}", &["get", "post", "delete"][..]),
            ("/agents/{id}", &["get", "post", "delete"][..]),
            ("/agents/{id}/heartbeat", &["put", "post"][..]),
            ("/agents", &["get", "post"][..]),
        ] {
            for m in methods {
                assert!(paths[p].get(*m).is_some(), "{m} {p} missing");
            }
        }
    }
}
