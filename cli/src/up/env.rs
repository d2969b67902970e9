//! What each service of a stack learns about the others: every sibling's
//! `<NAME>_PORT` and `<NAME>_URL` in its environment, and `${name.port}` /
//! `${name.url}` replaced in its command and env values. A shell variable
//! never has a dot in its name, so `${a.b}` is always pb's and anything
//! else (`$PORT`, `${HOME}`) is left for `sh -c`.

use anyhow::{bail, Result};

use super::file::{env_name, Stack};
use crate::output;

/// Replaces each `${name.port}` and `${name.url}` in `text`; `value(name,
/// field)` answers one, or `None` when `name` has no port.
pub fn interpolate(text: &str, value: &dyn Fn(&str, &str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[at..]);
            return Ok(out);
        };
        let inner = &after[..end];
        match inner.split_once('.') {
            Some((name, field)) => {
                if field != "port" && field != "url" {
                    bail!("${{{inner}}}: a service gives only .port and .url");
                }
                match value(name, field) {
                    Some(v) => out.push_str(&v),
                    None => bail!("${{{inner}}}: {name:?} is no service with a port in this stack"),
                }
            }
            // The shell's own.
            None => {
                out.push_str("${");
                out.push_str(inner);
                out.push('}');
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The variables every service of `stack` gets, given each service's port.
pub fn siblings(stack: &Stack, port_of: &dyn Fn(&str) -> Option<u16>) -> Vec<(String, String)> {
    let mut env = vec![
        ("PB_STACK".to_string(), stack.id()),
        ("PB_PROJECT".to_string(), stack.project.clone()),
    ];
    for s in &stack.services {
        if let Some(port) = port_of(&s.name) {
            let n = env_name(&s.name);
            env.push((format!("{n}_PORT"), port.to_string()));
            env.push((format!("{n}_URL"), output::url(port)));
        }
    }
    env
}

/// `value` for [`interpolate`] over a map of ports.
pub fn lookup(port_of: &dyn Fn(&str) -> Option<u16>, name: &str, field: &str) -> Option<String> {
    let port = port_of(name)?;
    Some(match field {
        "port" => port.to_string(),
        _ => output::url(port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dotted_references_are_replaced() {
        let v = |n: &str, f: &str| (n == "api").then(|| format!("<{f}>"));
        assert_eq!(
            interpolate("x ${api.port} $PORT ${HOME} ${api.url}", &v).unwrap(),
            "x <port> $PORT ${HOME} <url>"
        );
        assert!(interpolate("${db.port}", &v).is_err());
        assert!(interpolate("${api.host}", &v).is_err());
        assert_eq!(interpolate("${unclosed", &v).unwrap(), "${unclosed");
    }
}
