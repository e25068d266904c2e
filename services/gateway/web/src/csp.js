// Settings that keep the libraries within the page's Content-Security-Policy (no eval). Imported
// first by main.js. zod (the AI SDK's validator) would otherwise probe `new Function` for its JIT,
// which the CSP refuses and reports.
import { config } from "zod/v4/core";

config({ jitless: true });
