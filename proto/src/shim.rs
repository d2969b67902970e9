//! What `pb exec --shim` and the preload shim tell each other: the
//! environment that carries the port map to the app, and the report the
//! shim sends back for each bind it handled. Both sides use these types, so
//! the two cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

/// Which binds to swap, and for which service: `*=web` or `3000=web,3001=api`.
pub const ENV_MAP: &str = "PB_SHIM_MAP";
/// The broker's Unix socket.
pub const ENV_SOCKET: &str = "PB_SHIM_SOCKET";
/// A Unix datagram socket where `pb exec` listens for [`ShimReport`]s.
pub const ENV_REPORT: &str = "PB_SHIM_REPORT";
/// When set, the shim also explains itself on the app's stderr.
pub const ENV_DEBUG: &str = "PB_SHIM_DEBUG";

/// Which of the app's binds land on which service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMap {
    /// The process's first TCP bind of a non-zero port, whatever it is.
    First(String),
    /// These ports only.
    Ports(Vec<(u16, String)>),
}

impl PortMap {
    /// Builds the map from `pb exec --map` values (`PORT` or `PORT=ID`,
    /// where a bare port maps to `main`). No values means `First(main)`.
    pub fn from_args(main: &str, maps: &[String]) -> Result<PortMap, WireError> {
        if maps.is_empty() {
            return Ok(PortMap::First(main.to_string()));
        }
        let mut ports: Vec<(u16, String)> = Vec::with_capacity(maps.len());
        for m in maps {
            let (port_text, id) = match m.split_once('=') {
                Some((p, id)) => (p, id.trim()),
                None => (m.as_str(), main),
            };
            let port = parse_port(port_text)?;
            if id.is_empty() {
                return Err(WireError::new(
                    ErrorCode::InvalidId,
                    format!("--map {m:?}: the service id after '=' is empty"),
                ));
            }
            if ports.iter().any(|(p, _)| *p == port) {
                return Err(WireError::new(
                    ErrorCode::InvalidPort,
                    format!("--map: port {port} is mapped twice"),
                ));
            }
            ports.push((port, id.to_string()));
        }
        Ok(PortMap::Ports(ports))
    }

    /// The service ids the map names, each once, in order.
    pub fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = Vec::new();
        let all: Vec<&str> = match self {
            PortMap::First(id) => vec![id],
            PortMap::Ports(p) => p.iter().map(|(_, id)| id.as_str()).collect(),
        };
        for id in all {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    pub fn to_env(&self) -> String {
        match self {
            PortMap::First(id) => format!("*={id}"),
            PortMap::Ports(p) => p
                .iter()
                .map(|(port, id)| format!("{port}={id}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    pub fn from_env(text: &str) -> Result<PortMap, String> {
        if let Some(id) = text.strip_prefix("*=") {
            return Ok(PortMap::First(id.to_string()));
        }
        let mut ports = Vec::new();
        for entry in text.split(',').filter(|e| !e.is_empty()) {
            let (port, id) = entry
                .split_once('=')
                .ok_or_else(|| format!("{ENV_MAP} entry {entry:?} is not PORT=ID"))?;
            let port = parse_port(port).map_err(|e| e.message)?;
            ports.push((port, id.to_string()));
        }
        if ports.is_empty() {
            return Err(format!("{ENV_MAP} maps nothing"));
        }
        Ok(PortMap::Ports(ports))
    }

    /// The service a bind of `port` lands on, if the map names one.
    /// `First` answers for every port; whether this bind is the first is
    /// the shim's to track.
    pub fn id_for(&self, port: u16) -> Option<&str> {
        match self {
            PortMap::First(id) => Some(id),
            PortMap::Ports(p) => p
                .iter()
                .find(|(q, _)| *q == port)
                .map(|(_, id)| id.as_str()),
        }
    }
}

fn parse_port(text: &str) -> Result<u16, WireError> {
    let bad = |why: &str| {
        WireError::new(
            ErrorCode::InvalidPort,
            format!("--map: {text:?} {why}; use PORT or PORT=ID with PORT in 1-65535"),
        )
    };
    let n: i64 = text.trim().parse().map_err(|_| bad("is not a port"))?;
    match n {
        0 => Err(bad(
            "is port 0, which asks the kernel for any port and is never mapped",
        )),
        1..=65535 => Ok(n as u16),
        _ => Err(bad("is out of range")),
    }
}

/// What the shim did with one bind, sent to `pb exec` as one datagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimReport {
    /// The process that bound.
    pub pid: u32,
    /// The service the bind was mapped to.
    pub id: String,
    /// The address the app asked for, e.g. `[::]:8000`.
    pub asked: String,
    /// The app asked for a wildcard address (0.0.0.0 or ::).
    pub wildcard: bool,
    /// The brokered port the app now serves on; `None` when the shim fell
    /// back to the app's own bind.
    pub port: Option<u16>,
    /// Why the shim fell back, when it did.
    pub error: Option<String>,
    /// The bind was of a port the map does not name: the app chose a port
    /// of its own (the first such bind of a process is reported, so that
    /// `pb exec` can say why its URL does not reach the app).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unmapped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_through_the_environment() {
        let m = PortMap::from_args("web", &["3000".into(), "3001=web:admin".into()]).unwrap();
        assert_eq!(
            m,
            PortMap::Ports(vec![(3000, "web".into()), (3001, "web:admin".into())])
        );
        assert_eq!(PortMap::from_env(&m.to_env()).unwrap(), m);
        assert_eq!(m.ids(), vec!["web", "web:admin"]);
        let first = PortMap::from_args("web", &[]).unwrap();
        assert_eq!(PortMap::from_env(&first.to_env()).unwrap(), first);
        assert_eq!(first.id_for(1234), Some("web"));
        assert_eq!(m.id_for(1234), None);
    }

    #[test]
    fn bad_maps_are_refused() {
        for bad in ["0", "70000", "abc", "-1", "3000=", ""] {
            assert!(
                PortMap::from_args("web", &[bad.to_string()]).is_err(),
                "{bad:?} accepted"
            );
        }
        let dup = PortMap::from_args("web", &["3000".into(), "3000=api".into()]).unwrap_err();
        assert_eq!(dup.code, ErrorCode::InvalidPort);
        assert!(dup.message.contains("twice"));
    }
}
