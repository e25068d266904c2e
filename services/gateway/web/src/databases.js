// The Databases panel: the user's own databases (docs/connections.md). Add (the server tests the
// connection before it keeps it), list, test and remove; the source picker and the chat use a new
// one at once through `onChange`. The password field is emptied as soon as it has been sent.
import { api } from "./api.js";

const $ = (id) => document.getElementById(id);
const DEFAULT_PORTS = { postgresql: "5432", mysql: "3306" };

export class DatabasesPanel {
  constructor({ onChange }) {
    this.onChange = onChange;
    $("db-dialect").addEventListener("change", () => {
      const port = $("db-port");
      if (Object.values(DEFAULT_PORTS).includes(port.value) || !port.value) port.value = DEFAULT_PORTS[$("db-dialect").value];
    });
    $("database-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.add();
    });
  }

  say(status, error = "") {
    $("database-status").textContent = status;
    $("database-error").textContent = error;
  }

  async load() {
    try {
      const reply = await api("/api/connections");
      $("databases-off").hidden = true;
      $("database-form").hidden = false;
      this.show(reply.connections);
    } catch (error) {
      this.off(error.code === "connections_off" ? undefined : `Databases: ${error.message}`);
    }
  }

  // The feature is off on this server (GET /auth/config says so, or the API answered connections_off).
  off(message = "Connecting your own databases is not enabled on this server.") {
    $("database-list").replaceChildren();
    $("database-form").hidden = true;
    $("databases-off").hidden = false;
    $("databases-off").textContent = message;
  }

  show(connections) {
    $("database-list").replaceChildren(
      ...connections.map((c) => {
        const item = document.createElement("li");
        const label = document.createElement("span");
        label.textContent = `${c.name}: ${c.dialect === "mysql" ? "MySQL" : "PostgreSQL"} ${c.user}@${c.host}:${c.port}/${c.database}`;
        const test = document.createElement("button");
        test.type = "button";
        test.textContent = "Test";
        test.setAttribute("aria-label", `Test database ${c.name}`);
        test.addEventListener("click", () => this.test(c));
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "Remove";
        remove.setAttribute("aria-label", `Remove database ${c.name}`);
        remove.addEventListener("click", () => this.remove(c));
        item.append(label, test, remove);
        return item;
      }),
    );
  }

  async add() {
    const password = $("db-password");
    const body = {
      name: $("db-alias").value.trim(),
      dialect: $("db-dialect").value,
      host: $("db-host").value.trim(),
      port: Number($("db-port").value),
      database: $("db-database").value.trim(),
      user: $("db-user").value.trim(),
      password: password.value,
      tls: { mode: $("db-tls").value },
    };
    this.say("Connecting…");
    $("db-add").disabled = true;
    try {
      const created = await api("/api/connections", { method: "POST", body });
      password.value = "";
      $("database-form").reset();
      $("db-port").value = DEFAULT_PORTS.postgresql;
      this.say(`Connected to ${created.name} (${created.server_version}).`);
      await this.load();
      await this.onChange(created.name);
    } catch (error) {
      this.say("", error.message);
    } finally {
      $("db-add").disabled = false;
    }
  }

  async test(connection) {
    this.say(`Testing ${connection.name}…`);
    try {
      const reply = await api(`/api/connections/${encodeURIComponent(connection.id)}/test`, { method: "POST" });
      this.say(`${connection.name} answers (${reply.server_version}).`);
    } catch (error) {
      this.say("", `${connection.name}: ${error.message}`);
    }
  }

  async remove(connection) {
    try {
      await api(`/api/connections/${encodeURIComponent(connection.id)}`, { method: "DELETE" });
      this.say(`Removed ${connection.name}.`);
      await this.load();
      await this.onChange(null);
    } catch (error) {
      this.say("", `${connection.name}: ${error.message}`);
    }
  }
}
