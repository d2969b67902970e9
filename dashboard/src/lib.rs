//! The dashboard's files, embedded in pb at compile time: plain JavaScript
//! modules, CSS and two HTML pages from dashboard/web/, with no build step,
//! so neither building nor running pb needs Node.js. The broker's HTTP
//! transport serves them (broker/src/http/dashboard.rs); the pages use only
//! the public HTTP API, like any other client.

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its name under dashboard/web/, which is its URL under /dashboard/.
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! assets {
    ($($name:literal => $type:expr),* $(,)?) => {
        /// Every file of dashboard/web/.
        pub const ASSETS: &[Asset] = &[
            $(Asset {
                name: $name,
                content_type: $type,
                body: include_bytes!(concat!("../web/", $name)),
            }),*
        ];
    };
}

const JS: &str = "text/javascript; charset=utf-8";

assets! {
    "index.html" => "text/html; charset=utf-8",
    "login.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "icon.svg" => "image/svg+xml",
    "app.js" => JS,
    "api.js" => JS,
    "dom.js" => JS,
    "login.js" => JS,
    "views.js" => JS,
}

/// The page a logged-in browser gets at `/`.
pub const INDEX: &str = "index.html";
/// The page everyone else gets at `/`: how to log in, and nothing else.
pub const LOGIN: &str = "login.html";

/// The file named `name`, if it is one of the dashboard's.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to dashboard/web/ and not listed here would be a 404.
    #[test]
    fn every_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.name.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        assert!(asset(INDEX).is_some() && asset(LOGIN).is_some());
    }
}
