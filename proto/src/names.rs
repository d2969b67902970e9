//! How a lease is named to other programs: its local URL and the
//! environment variable that carries its port. One rule, for the CLI
//! (`pb url`, `pb env`, `pb up`'s siblings) and the MCP tools alike.

/// A lease's URL on this machine.
pub fn url(port: u16) -> String {
    format!("http://localhost:{port}")
}

/// The environment variable that carries `id`'s port: `myapp:api` becomes
/// `MYAPP_API_PORT`.
pub fn env_name(id: &str) -> String {
    let mut name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name + "_PORT"
}
