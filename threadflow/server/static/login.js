// The login form: trade the API key for a session cookie (HttpOnly: this page never sees it), then reload.
const form = document.getElementById("login");
const problem = document.getElementById("login-error");

form.addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  problem.textContent = "";
  const key = document.getElementById("api-key").value;
  const answer = await fetch("/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ api_key: key }),
    credentials: "same-origin",
  });
  if (answer.ok) {
    location.reload();
  } else {
    problem.textContent = answer.status === 401 ? "Wrong API key." : `Login failed (${answer.status}).`;
  }
});
