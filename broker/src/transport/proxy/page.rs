//! What the proxy answers itself, when a request leads to no backend: a
//! status, a code (docs/PROXY.md lists them) and a message, as JSON
//! `{error, code}` like every pb error, or as a small HTML page for a
//! browser; for a name nobody answers to, the list of the names that do.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};

/// A request the proxy answers itself.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// For an unknown name: every named lease (host, id, port).
    services: Option<Vec<(String, String, u16)>>,
}

impl Refusal {
    pub fn new(status: StatusCode, code: &'static str, message: String) -> Refusal {
        Refusal {
            status,
            code,
            message,
            services: None,
        }
    }

    /// `host` leads nowhere; `localhost` itself is the list, not an error.
    pub fn unknown(host: &str, services: Vec<(String, String, u16)>) -> Refusal {
        let (status, code, message) = if host == crate::hostnames::DOMAIN {
            (
                StatusCode::OK,
                "list",
                "the services pb's proxy routes to".to_string(),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no live service answers to {host}"),
            )
        };
        Refusal {
            status,
            code,
            message,
            services: Some(services),
        }
    }

    /// The answer: HTML for a browser, JSON for anyone else. `base` is
    /// the client's scheme (https or not) and port, for the links.
    pub fn into_response(self, html: bool, base: (bool, Option<u16>)) -> Response<Body> {
        let (content_type, body) = if html {
            ("text/html; charset=utf-8", self.html(base))
        } else {
            let mut v = serde_json::json!({ "error": self.message, "code": self.code });
            if let Some(services) = &self.services {
                v["services"] = services
                    .iter()
                    .map(|(host, id, port)| {
                        serde_json::json!({ "name": host, "id": id, "port": port, "url": link(host, base) })
                    })
                    .collect();
            }
            ("application/json", v.to_string())
        };
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
        h.insert("x-pb-proxy", HeaderValue::from_static(self.code));
        resp
    }

    fn html(&self, base: (bool, Option<u16>)) -> String {
        let mut page = format!(
            "<!doctype html><meta charset=utf-8><title>pb proxy</title>\
             <style>body{{font:15px system-ui,sans-serif;margin:2em;max-width:50em}}\
             code{{font-size:90%}}li{{margin:.3em 0}}</style>\
             <h1>{}</h1><p>{}</p>",
            self.status.as_u16(),
            escape(&self.message)
        );
        if let Some(services) = &self.services {
            if services.is_empty() {
                page.push_str("<p>No service has a name yet: <code>pb exec myapp:api -- CMD</code> gives one <code>api.myapp.localhost</code>.</p>");
            } else {
                page.push_str("<ul>");
                for (host, id, port) in services {
                    let url = link(host, base);
                    page.push_str(&format!(
                        "<li><a href=\"{}\">{}</a> <code>{}</code>, port {port}</li>",
                        escape(&url),
                        escape(host),
                        escape(id)
                    ));
                }
                page.push_str("</ul>");
            }
        }
        page
    }
}

fn link(host: &str, (https, port): (bool, Option<u16>)) -> String {
    let scheme = if https { "https" } else { "http" };
    match port {
        Some(p) => format!("{scheme}://{host}:{p}/"),
        None => format!("{scheme}://{host}/"),
    }
}

/// Text made safe for HTML.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
