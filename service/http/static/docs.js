// Renders /openapi.json as a page: every path, method, summary, parameters, body schema and answers.
"use strict";
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}
const COLORS = { get: "s-active", post: "v-info", patch: "s-pending", put: "s-pending", delete: "s-firing" };
function resolve(doc, schema) {
  if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()] || schema;
  return schema;
}
function render(doc, filter) {
  const root = document.getElementById("paths");
  root.replaceChildren();
  for (const [path, item] of Object.entries(doc.paths)) {
    if (filter && !path.toLowerCase().includes(filter)) continue;
    for (const [method, op] of Object.entries(item)) {
      if (!["get", "post", "put", "patch", "delete"].includes(method)) continue;
      const params = (op.parameters || []).map((p) => `${p.name} (${p.in}${p.required ? ", required" : ""})`).join(", ");
      const body = op.requestBody ? resolve(doc, Object.values(op.requestBody.content || {})[0]?.schema) : null;
      const answers = Object.entries(op.responses || {}).map(([code, r]) => h("tr", {}, h("td", {}, code), h("td", {}, r.description || "")));
      root.append(h("details", { class: "card" },
        h("summary", {}, h("span", { class: `badge ${COLORS[method] || ""}` }, method), " ", h("code", {}, path), " ", h("span", { class: "muted" }, op.summary || "")),
        params ? h("p", {}, "Parameters: ", params) : null,
        op.security && op.security.length === 0 ? h("p", { class: "muted" }, "No key needed.") : null,
        body ? h("div", {}, h("p", {}, "Body:"), h("pre", { class: "mono" }, JSON.stringify(body.properties ? Object.fromEntries(Object.entries(body.properties).map(([k, v]) => [k, v.type || v.anyOf || v.$ref || v.enum || "object"])) : body, null, 1))) : null,
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Status"), h("th", {}, "Meaning"))), h("tbody", {}, answers))));
    }
  }
}
fetch("/openapi.json").then((r) => r.json()).then((doc) => {
  document.getElementById("version").textContent = doc.info.version;
  render(doc, "");
  document.getElementById("filter").addEventListener("input", (e) => render(doc, e.target.value.toLowerCase()));
});
