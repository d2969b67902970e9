// The login page: says why a link failed, and turns a pasted link or
// code into a visit to /login, which sets the session and comes back.

import { applyTheme } from "./dom.js";

applyTheme();
const failed = new URLSearchParams(location.search).get("login") === "failed";
document.getElementById("login-failed").hidden = !failed;

document.getElementById("code-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = document.getElementById("code").value.trim();
  let code = text;
  try {
    code = new URL(text).searchParams.get("code") ?? text;
  } catch {
    // Not a URL: the code itself.
  }
  location.assign("/login?code=" + encodeURIComponent(code));
});
