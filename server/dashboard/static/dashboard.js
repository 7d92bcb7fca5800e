// batchd dashboard: live figures from server-sent events, and a confirmation before a
// cancel. Values reach the page through textContent only, never as markup.
"use strict";

(function () {
  const base = document.body.dataset.base || "/dashboard/";

  function perSecond(rate) {
    if (rate === null || rate === undefined) return "—";
    return rate.toLocaleString("en-US", { maximumFractionDigits: 1, minimumFractionDigits: 1 }) + "/s";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 60) return seconds.toFixed(1) + "s";
    const whole = Math.round(seconds);
    const days = Math.floor(whole / 86400);
    const hours = Math.floor((whole % 86400) / 3600);
    const minutes = Math.floor((whole % 3600) / 60);
    const secs = whole % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (days) return days + "d " + two(hours) + "h";
    if (hours) return hours + "h " + two(minutes) + "m";
    return minutes + "m " + two(secs) + "s";
  }

  function number(n) {
    return n.toLocaleString("en-US");
  }

  function when(seconds) {
    if (!seconds) return "—";
    return new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " ");
  }

  function setField(scope, name, text) {
    for (const element of scope.querySelectorAll('[data-field="' + name + '"]')) {
      element.textContent = text;
    }
  }

  // Every element showing batch `id` (a list row, or a batch page's summary).
  function scopesOf(attribute, id) {
    return Array.from(document.querySelectorAll("[" + attribute + "]")).filter(
      (element) => element.getAttribute(attribute) === id
    );
  }

  function showProgress(data) {
    for (const scope of scopesOf("data-batch", data.id)) {
      const c = data.counts;
      setField(scope, "state", data.state);
      for (const bar of scope.querySelectorAll('[data-field="bar"]')) {
        bar.max = data.total || 1;
        bar.value = data.finished;
      }
      const percent = data.total ? (100 * data.finished) / data.total : 100;
      setField(scope, "percent", percent.toFixed(1) + "%");
      for (const name of ["pending", "claimed", "running", "succeeded", "failed", "cancelled", "expired"]) {
        setField(scope, name, number(c[name]));
      }
      setField(scope, "in_workers", number(c.claimed + c.running));
      setField(scope, "rate", perSecond(data.rate));
      setField(scope, "eta", data.terminal ? "—" : duration(data.eta));
      if (data.effective_rate !== null && data.effective_rate !== undefined) {
        setField(scope, "effective_rate", data.effective_rate === 0 ? "unlimited" : perSecond(data.effective_rate));
      }
      setField(scope, "waiting_reason", data.waiting_reason);
      setField(scope, "uploading", data.uploading ? "Uploading: items are still coming" : "");
      scope.dataset.state = data.state;
    }
  }

  // Follows an event stream; on an error the browser retries by itself, and a stream
  // the server refused (closed) is opened again after a pause.
  function follow(url, handlers) {
    const source = new EventSource(url);
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => handle(JSON.parse(event.data), source));
    }
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(() => follow(url, handlers), 5000);
      }
    });
    return source;
  }

  function followBatches() {
    const ids = new Set();
    for (const element of document.querySelectorAll("[data-live]")) {
      for (const id of element.getAttribute("data-live").split(" ")) {
        if (id) ids.add(id);
      }
    }
    if (!ids.size) return;
    const query = Array.from(ids, (id) => "batch=" + encodeURIComponent(id)).join("&");
    follow(base + "live?" + query, {
      progress: showProgress,
      done: (_, source) => source.close(),
    });
  }

  function followHandlers() {
    const table = document.querySelector("[data-live-handlers]");
    if (!table) return;
    follow(base + "live/handlers", {
      handlers: (list) => {
        for (const handler of list) {
          for (const row of scopesOf("data-handler", handler.name)) {
            setField(row, "live_workers", String(handler.live_workers));
            setField(row, "last_seen", when(handler.last_seen));
          }
        }
      },
    });
  }

  function confirmations() {
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
      });
    }
  }

  followBatches();
  followHandlers();
  confirmations();
})();
