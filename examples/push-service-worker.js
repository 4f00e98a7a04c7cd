// A service worker that shows Overture's web push messages as notifications.
// Register it, subscribe with the key from PushService.GetPushConfig, and hand
// the subscription to your backend, which stores it with
// PushService.CreatePushSubscription for the signed-in user:
//
//   const reg = await navigator.serviceWorker.register("/push-service-worker.js");
//   const sub = await reg.pushManager.subscribe({userVisibleOnly: true, applicationServerKey: KEY_FROM_GET_PUSH_CONFIG});
//   await fetch("/my-backend/push-subscriptions", {method: "POST", body: JSON.stringify(sub.toJSON())});
//
// Each message's payload is {"id", "title", "body", "data"}: the rendered
// subject line, the text body and the message's structured content. A
// `data.url` opens when the notification is clicked.
self.addEventListener("push", (event) => {
  const message = event.data ? event.data.json() : {};
  event.waitUntil(self.registration.showNotification(message.title || "", {
    body: message.body || "", data: message.data || {}, tag: message.id,
  }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = (event.notification.data || {}).url;
  if (url) event.waitUntil(clients.openWindow(url));
});
