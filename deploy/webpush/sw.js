// The service worker: shows each push as a notification. The message is tocsin's Web Push JSON:
// {nid, alert_id, episode, rule, state, severity, title, body, labels, data, tag}.
self.addEventListener("push", (event) => {
  let msg = { title: "tocsin", body: "" };
  try {
    msg = event.data ? event.data.json() : msg;
  } catch (e) {
    msg = { title: "tocsin", body: event.data ? event.data.text() : "" };
  }
  event.waitUntil(
    self.registration.showNotification(msg.title, {
      body: msg.body,
      tag: msg.tag, // a newer message for the same alert replaces the older one
      renotify: Boolean(msg.tag),
      requireInteraction: msg.severity === "critical",
      data: msg,
    })
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(self.clients.openWindow("./"));
});
