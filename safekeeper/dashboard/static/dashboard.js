// safekeeper dashboard: the upload progress bar and gc progress polling. Everything
// else works without JavaScript.
"use strict";

function pollGcProgress(box) {
  const bar = box.querySelector(".bar");
  const status = document.getElementById("gc-status");
  const tick = () => {
    fetch(box.dataset.poll, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((run) => {
        bar.style.width = run.percent + "%";
        if (run.running) {
          status.textContent = "Running: " + run.processed + " of " + run.planned + " copies processed…";
          setTimeout(tick, 500);
        } else {
          // The finished page lists what was kept on re-check and what failed.
          window.location.reload();
        }
      })
      .catch(() => setTimeout(tick, 2000));
  };
  tick();
}

function describeRejection(body) {
  const member = body.member ? " (member " + body.member + ")" : "";
  return (body.code ? body.code + ": " : "") + (body.message || "upload failed") + member;
}

function showUploadErrors(form, body) {
  const list = form.querySelector(".member-errors");
  list.replaceChildren();
  const problems = Array.isArray(body.errors) && body.errors.length ? body.errors : [body];
  for (const problem of problems) {
    const item = document.createElement("li");
    item.textContent = describeRejection(problem);
    if (problem.member) item.dataset.member = problem.member;
    list.appendChild(item);
  }
}

function uploadWithProgress(form) {
  form.addEventListener("submit", (event) => {
    const file = form.querySelector("input[type=file]").files[0];
    if (!file) return;
    event.preventDefault();
    const bar = form.querySelector(".progress .bar");
    const status = form.querySelector(".upload-status");
    form.querySelector(".member-errors").replaceChildren();
    bar.parentElement.classList.remove("failed");
    bar.style.width = "0";
    const key = form.querySelector("input[name=key]").value;
    const label = form.querySelector("input[name=label]").value || "draft";
    const url = form.dataset.upload + "?key=" + encodeURIComponent(key) + "&label=" + encodeURIComponent(label) +
      "&filename=" + encodeURIComponent(file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("Content-Type", "application/zip");
    xhr.setRequestHeader("X-CSRF-Token", form.querySelector("input[name=csrf_token]").value);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        const percent = Math.round((100 * e.loaded) / e.total);
        bar.style.width = percent + "%";
        status.textContent = "Uploading: " + percent + "%";
      }
    };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { body = { message: xhr.statusText }; }
      if (xhr.status >= 200 && xhr.status < 300) {
        bar.style.width = "100%";
        status.textContent = "Stored and validated. Reloading…";
        window.location.href = body.next || window.location.pathname;
      } else if (xhr.status === 401) {
        window.location.href = "/signin?reason=" + encodeURIComponent(body.code || "signin_required");
      } else {
        bar.style.width = "100%";
        bar.parentElement.classList.add("failed");
        status.textContent = "Rejected: nothing was stored.";
        showUploadErrors(form, body);
      }
    };
    xhr.onerror = () => { status.textContent = "The upload did not reach the server."; };
    status.textContent = "Uploading…";
    xhr.send(file);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const gc = document.getElementById("gc-progress");
  if (gc && gc.dataset.running === "yes") pollGcProgress(gc);
  document.querySelectorAll("form[data-upload]").forEach(uploadWithProgress);
});
