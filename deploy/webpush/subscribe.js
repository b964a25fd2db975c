// Subscribes this browser with tocsin's VAPID key and registers the subscription with tocsin.
// API: GET /v1/webpush/vapid-public-key, POST /v1/registrations {"provider": "webpush", "subscription"},
// DELETE /v1/registrations/webpush/{endpoint}.
"use strict";

const $ = (id) => document.getElementById(id);

function say(text, error = false) {
  const el = $("status");
  el.textContent = text;
  el.className = error ? "error" : "";
}

function fromB64url(text) {
  const pad = "=".repeat((4 - (text.length % 4)) % 4);
  const raw = atob((text + pad).replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

async function tocsin(method, path, key, body) {
  const resp = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  if (!resp.ok) throw new Error(`tocsin answered ${resp.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}

async function enable(event) {
  event.preventDefault();
  try {
    if (!("serviceWorker" in navigator) || !("PushManager" in window)) {
      throw new Error("this browser has no Web Push (on iOS: add the page to the home screen first)");
    }
    if ((await Notification.requestPermission()) !== "granted") {
      throw new Error("notifications are not allowed for this page");
    }
    const { public_key } = await (await fetch("/v1/webpush/vapid-public-key")).json();
    const worker = await navigator.serviceWorker.register("sw.js");
    await navigator.serviceWorker.ready;
    const subscription = await worker.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey: fromB64url(public_key),
    });
    const body = {
      provider: "webpush",
      subscription: subscription.toJSON(),
      tags: $("tags").value.split(/\s+/).filter(Boolean),
      device_name: navigator.userAgent.slice(0, 200),
      locale: navigator.language,
    };
    if ($("user").value) body.user_id = $("user").value;
    const saved = await tocsin("POST", "/v1/registrations", $("api-key").value, body);
    say(`Notifications are on (registration ${saved.id}).`);
    document.body.dataset.registration = saved.id;
  } catch (e) {
    say(String(e.message || e), true);
  }
}

async function disable() {
  try {
    const worker = await navigator.serviceWorker.getRegistration();
    const subscription = worker && (await worker.pushManager.getSubscription());
    if (!subscription) return say("Notifications were not on.");
    const path = `/v1/registrations/webpush/${encodeURIComponent(subscription.endpoint)}`;
    await tocsin("DELETE", path, $("api-key").value);
    await subscription.unsubscribe();
    say("Notifications are off.");
  } catch (e) {
    say(String(e.message || e), true);
  }
}

$("subscribe").addEventListener("submit", enable);
$("disable").addEventListener("click", disable);
