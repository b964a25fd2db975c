// Chromium's push service client talks to Google's servers (FCM), out of reach here. This script takes its
// place, and only its place: PushManager.subscribe makes the subscription's keys in the browser (WebCrypto
// ECDH P-256 and a 16-byte auth secret, as RFC 8291 has the user agent do) and asks the fake push service for
// an endpoint, handing it the private key so that it can decrypt what arrives, as the browser would.
// Everything else on the page (service worker, permission, the VAPID key, registering with tocsin) is real.
(() => {
  const FAKE = "__FAKE_ORIGIN__";
  const b64url = (buf) =>
    btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  let current = null;
  PushManager.prototype.subscribe = async function (options) {
    if (!options || !options.userVisibleOnly || !options.applicationServerKey) {
      throw new DOMException("userVisibleOnly and applicationServerKey are required", "NotAllowedError");
    }
    if (Notification.permission !== "granted") {
      throw new DOMException("Registration failed - permission denied", "NotAllowedError");
    }
    const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
    const raw = await crypto.subtle.exportKey("raw", pair.publicKey);
    const jwk = await crypto.subtle.exportKey("jwk", pair.privateKey);
    const auth = crypto.getRandomValues(new Uint8Array(16));
    const resp = await fetch(FAKE + "/subscriptions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        private_jwk: jwk,
        auth: b64url(auth),
        application_server_key: b64url(options.applicationServerKey),
      }),
    });
    if (!resp.ok) throw new DOMException("Registration failed - push service error", "AbortError");
    const { endpoint } = await resp.json();
    const keys = { p256dh: b64url(raw), auth: b64url(auth) };
    current = {
      endpoint,
      expirationTime: null,
      options,
      getKey: (name) => (name === "p256dh" ? raw : name === "auth" ? auth.buffer : null),
      toJSON: () => ({ endpoint, expirationTime: null, keys }),
      unsubscribe: async () => {
        current = null;
        return true;
      },
    };
    return current;
  };
  PushManager.prototype.getSubscription = async function () {
    return current;
  };
})();
