// Model text as safe Markdown: marked renders, DOMPurify keeps only plain formatting tags (no script,
// style, images or headings, which would break the page's outline) and http(s)/mailto links.
import DOMPurify from "dompurify";
import { marked } from "marked";

const escapes = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => escapes[c]);

// HTML in the model's text is shown as text, never parsed as markup (DOMPurify below is the
// second line of defence, for whatever Markdown itself produces).
marked.use({ gfm: true, breaks: false, renderer: { html: ({ text }) => escapeHtml(text) } });

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("rel", "noopener noreferrer");
    node.setAttribute("target", "_blank");
  }
});

const ALLOWED = {
  ALLOWED_TAGS: ["p", "br", "strong", "em", "del", "code", "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "hr"],
  ALLOWED_ATTR: ["href", "title", "rel", "target", "start"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
};

export function renderMarkdown(element, text) {
  element.innerHTML = DOMPurify.sanitize(marked.parse(text, { async: false }), ALLOWED);
}
