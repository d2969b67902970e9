//! /openapi.json, generated from the route handlers' annotations and the
//! request and response types (utoipa), so it cannot drift from the code.

use axum::Json;
use utoipa::OpenApi;

use super::{
    activity, agents, error, listeners, locks, login, messages, metrics, portdaddy, portmanager,
    sessions, stacks, webhooks, whoami,
};

#[derive(OpenApi)]
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
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
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
