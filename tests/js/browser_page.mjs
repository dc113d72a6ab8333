// The page the browser test loads (bundled with esbuild by browser_drive.mjs): an Electric
// app as a user writes one with @electric-sql/client, behind `make run`'s Envoy. It asks the
// gatekeeper (through Envoy, same origin as the shapes) for a token, syncs the shape the
// answer describes, refreshes the token from the gatekeeper when jwt-shape answers 401, and
// asks for a shape the policy denies. Everything it sees goes to window.__edgeguard.log.
import { ShapeStream, FetchError } from "@electric-sql/client";

const gk = new URLSearchParams(location.search).get("gk");
const log = [];
window.__edgeguard = { log };
const note = (event, fields = {}) => log.push({ event, at: Date.now(), ...fields });

async function grant(table, query = "") {
  const r = await fetch(`${gk}/gatekeeper/${table}${query}`, { method: "POST" });
  let body = null;
  try {
    body = await r.json();
  } catch {
    body = null;
  }
  return { status: r.status, body };
}

async function main() {
  const denied = await grant("secrets");
  note("denied", { status: denied.status, reason: denied.body && denied.body.message });

  const first = await grant("items", "?columns=id,title");
  note("granted", { status: first.status });
  if (first.status !== 200) return;
  const a = first.body;
  let refreshes = 0;
  const stream = new ShapeStream({
    url: a.url,
    params: {
      table: a.table,
      ...(a.where ? { where: a.where } : {}),
      ...(a.params ? { params: a.params } : {}),
      ...(a.columns ? { columns: a.columns } : {}),
    },
    headers: { Authorization: a.headers.Authorization },
    onError: async (error) => {
      const status = error instanceof FetchError ? error.status : 0;
      const www = error instanceof FetchError ? error.headers["www-authenticate"] || null : null;
      note("error", { status, www, message: String(error && error.message).slice(0, 300) });
      if (status !== 401) return; // anything else stops the stream
      const fresh = await grant("items", "?columns=id,title");
      refreshes += 1;
      note("refreshed", { status: fresh.status, refreshes });
      if (fresh.status !== 200) return;
      return { headers: { Authorization: fresh.body.headers.Authorization } };
    },
  });
  stream.subscribe(
    (messages) => {
      const rows = messages.filter((m) => m.headers && m.headers.operation === "insert");
      note("messages", {
        rows: rows.length,
        columns: rows.length ? Object.keys(rows[0].value).sort() : [],
        upToDate: messages.some((m) => m.headers && m.headers.control === "up-to-date"),
        refreshes,
      });
    },
    (e) => note("subscribe-error", { message: String(e && e.message) })
  );
}

main().catch((e) => note("exception", { message: String((e && e.stack) || e) }));
