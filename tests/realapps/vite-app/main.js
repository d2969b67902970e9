// Hot-replaced by vite without a reload: tests/tests/proxy.rs edits
// message.js and watches the text change through the proxy's WebSocket.
import { message } from "./message.js";

const show = (m) => {
  document.querySelector("#msg").textContent = m;
};
show(message);
if (import.meta.hot) {
  import.meta.hot.accept("./message.js", (m) => m && show(m.message));
}
