// POST /api/query read with the AI SDK's own event-stream parser (parseJsonEventStream with its
// uiMessageChunkSchema, as DefaultChatTransport reads /api/chat), into a ResultStore.
import { parseJsonEventStream, uiMessageChunkSchema } from "ai";
import { errorFrom } from "./api.js";
import { ResultStore } from "./results.js";

/**
 * Run `sql` on `source`; `onUpdate(store)` after every chunk. Resolves with the store when the
 * stream ends (store.error set when the query failed); rejects when the request itself fails.
 */
export async function runQuery({ sql, source, signal, onUpdate }) {
  const response = await fetch("/api/query", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify(source ? { sql, source } : { sql }),
    signal,
  });
  if (!response.ok) throw await errorFrom(response);
  const store = new ResultStore();
  const reader = parseJsonEventStream({ stream: response.body, schema: uiMessageChunkSchema }).getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (!value.success) throw value.error;
    const chunk = value.value;
    switch (chunk.type) {
      case "tool-output-available":
        store.columns = chunk.output.columns || store.columns;
        if (!chunk.preliminary) {
          store.truncated = Boolean(chunk.output.truncated);
          store.expected = chunk.output.row_count;
        }
        break;
      case "data-query-rows":
        store.append(chunk.data.offset, chunk.data.rows);
        break;
      case "tool-output-error":
        store.error = chunk.errorText;
        break;
      case "error":
        store.error = chunk.errorText;
        break;
      case "finish":
        store.done = true;
        break;
      default:
        continue;
    }
    onUpdate(store);
  }
  store.done = true;
  return store;
}
