// ordersync staff dashboard: the only script. No framework, no build step.
//
// 1. Action buttons are <form class="action" method="post" action="/api/…">. We post them with
//    fetch and write the outcome beside the button. The API answers 409 when the action is no
//    longer possible (the order was retried or shipped already, by this click or someone
//    else's): that is shown as "already done", never as an error.
//    The session's CSRF token (<meta name="csrf-token">) goes with every post.
// 2. A page with data-refresh-s reloads itself after that many seconds without a click or key.
"use strict";

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form.action");
  if (!form) return;
  event.preventDefault();
  const button = form.querySelector("button");
  const output = form.querySelector("output");
  button.disabled = true; // one request at a time from this button
  form.classList.remove("ok", "done", "bad");
  output.textContent = "…";
  let outcome = "bad";
  let text;
  try {
    const csrf = document.querySelector("meta[name=csrf-token]");
    const init = {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf ? csrf.content : "" },
    };
    if (form.dataset.json) { // the form's fields as one JSON object (e.g. {"reason": "…"})
      const fields = Object.fromEntries(new FormData(form));
      delete fields.csrf_token; // sent as the header
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(fields);
    } else if (form.dataset.lines) { // Ship some lines: {"lines": {line: units}}, one key
      const lines = {};
      for (const [name, value] of new FormData(form)) {
        if (name.startsWith("line:") && Number(value) > 0) lines[name.slice(5)] = Number(value);
      }
      init.headers["Content-Type"] = "application/json";
      init.headers["Idempotency-Key"] = form.elements.idempotency_key.value;
      init.body = JSON.stringify({ lines });
    } else if (form.dataset.shipments) { // Ship this parcel: {"shipments": [id]}
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify({ shipments: [Number(form.dataset.shipments)] });
    }
    const response = await fetch(form.action, init);
    const body = await response.json().catch(() => ({}));
    const detail = typeof body.detail === "string" ? body.detail : response.statusText;
    if (response.ok) {
      outcome = "ok";
      text = form.dataset.ok + (body.step ? ` (${body.step})`
        : body.resumed_from ? ` (resumes at ${body.resumed_from})` : "");
    } else if (response.status === 409) {
      outcome = "done";
      text = `already done (${detail})`;
    } else {
      text = `failed: ${response.status} ${detail}`;
    }
  } catch (err) {
    text = `no answer from the server (${err.message}); try again`;
  } finally {
    button.disabled = false;
  }
  form.classList.add(outcome);
  output.textContent = text; // text, never HTML
});

const refreshS = Number(document.body.dataset.refreshS || 0);
if (refreshS > 0) {
  let timer;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => window.location.reload(), refreshS * 1000);
  };
  for (const kind of ["click", "keydown", "submit"]) document.addEventListener(kind, arm);
  arm();
}
