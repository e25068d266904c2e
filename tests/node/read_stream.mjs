// Reads one recorded POST /api/chat response body with the AI SDK's own client code:
// DefaultChatTransport parses and validates the SSE chunks (uiMessageChunkSchema), and
// readUIMessageStream builds the assistant message from them, as useChat does.
// Usage: node read_stream.mjs <file with the response body> [package: ai (6.x, the default) or ai5 (5.x)]
// Prints {"version": <the package's version>, "message": <last UIMessage>, "errors": [<every error reported>]}.
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';

const pkg = process.argv[3] ?? 'ai';
const { DefaultChatTransport, readUIMessageStream } = await import(pkg);
const { version } = createRequire(import.meta.url)(`${pkg}/package.json`);

const body = await readFile(process.argv[2]);
const transport = new DefaultChatTransport({
  api: 'http://gateway.invalid/api/chat',
  fetch: async () =>
    new Response(body, {
      status: 200,
      headers: { 'content-type': 'text/event-stream', 'x-vercel-ai-ui-message-stream': 'v1' },
    }),
});
const stream = await transport.sendMessages({
  chatId: 'recorded',
  messages: [{ id: 'u1', role: 'user', parts: [{ type: 'text', text: 'recorded' }] }],
  trigger: 'submit-message',
  messageId: undefined,
  abortSignal: undefined,
});
const errors = [];
let message = null;
for await (const snapshot of readUIMessageStream({ stream, onError: (error) => errors.push(String(error?.message ?? error)) })) {
  message = snapshot;
}
process.stdout.write(JSON.stringify({ version, message, errors }));
