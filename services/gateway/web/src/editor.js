// The SQL editor: CodeMirror 6 with the source's dialect, and completion of table and column
// names from GET /api/schema?source=. Ctrl+Enter (Cmd+Enter) runs the query.
// The editor lives in a shadow root: there CodeMirror's styles go into constructed (adopted)
// style sheets instead of a <style> element, which the page's CSP (style-src 'self') refuses.
import { autocompletion, closeBrackets, closeBracketsKeymap, closeCompletion, completionKeymap } from "@codemirror/autocomplete";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { MariaSQL, MySQL, PostgreSQL, SQLite, StandardSQL, sql } from "@codemirror/lang-sql";
import { bracketMatching, HighlightStyle, syntaxHighlighting } from "@codemirror/language";
import { Compartment, EditorState, Prec } from "@codemirror/state";
import { EditorView, highlightActiveLine, keymap, lineNumbers, placeholder } from "@codemirror/view";
import { tags } from "@lezer/highlight";

const DIALECTS = { postgres: PostgreSQL, mysql: MySQL, mariadb: MariaSQL, sqlite: SQLite };

/** The schema overview as lang-sql's namespace: {table: [columns]}, plus unqualified names for schema.table. */
export function namespaceOf(schema) {
  const namespace = {};
  for (const table of (schema && schema.tables) || []) {
    namespace[table.name] = (table.columns || []).map((col) => ({ label: col.name, type: "property", detail: col.type || "" }));
  }
  return namespace;
}

// Colours with at least 4.5:1 contrast on white (CodeMirror's defaults have some below).
const highlight = HighlightStyle.define([
  { tag: tags.keyword, color: "#6f1fa6", fontWeight: "600" },
  { tag: [tags.string, tags.special(tags.string)], color: "#8a1c1c" },
  { tag: [tags.number, tags.bool, tags.null], color: "#0b5e2a" },
  { tag: [tags.comment, tags.lineComment, tags.blockComment], color: "#595959", fontStyle: "italic" },
  { tag: [tags.typeName, tags.standard(tags.name)], color: "#0550ae" },
  { tag: [tags.operator, tags.punctuation, tags.bracket], color: "#1b1f24" },
  { tag: tags.invalid, color: "#b3261e" },
]);

// Inside the shadow root the page's stylesheet does not apply.
const theme = EditorView.theme({
  "&": { minHeight: "8rem", maxHeight: "18rem", fontSize: "14px" },
  ".cm-scroller": { fontFamily: 'ui-monospace, "SFMono-Regular", Menlo, monospace' },
  "&.cm-focused": { outline: "3px solid #0550ae" },
  ".cm-placeholder": { color: "#595959" },
  ".cm-gutters": { color: "#57606a", backgroundColor: "#f6f8fa" },
});

// Typing over (or deleting) a selection is done by CodeMirror, not by the browser: Chrome's own
// editing command re-creates the removed line with its computed style as an inline `style`
// attribute, which the page's CSP refuses (and reports) on every select-all-and-type.
const REPLACED_BY_EDITOR = new Set(["insertText", "insertReplacementText", "deleteContentBackward", "deleteContentForward", "deleteByCut"]);
const replaceSelection = EditorView.domEventHandlers({
  beforeinput(event, view) {
    if (view.state.selection.main.empty || !REPLACED_BY_EDITOR.has(event.inputType) || view.composing) return false;
    event.preventDefault();
    const text = event.inputType.startsWith("insert") ? event.data || (event.dataTransfer && event.dataTransfer.getData("text/plain")) || "" : "";
    view.dispatch({ ...view.state.replaceSelection(text), userEvent: text ? "input.type" : "delete.selection", scrollIntoView: true });
    return true;
  },
});

export class SqlEditor {
  constructor(host, { onRun, label }) {
    const root = host.attachShadow({ mode: "open" });
    this.language = new Compartment();
    this.view = new EditorView({
      parent: root,
      root,
      state: EditorState.create({
        doc: "",
        extensions: [
          lineNumbers(),
          history(),
          bracketMatching(),
          closeBrackets(),
          highlightActiveLine(),
          autocompletion(),
          syntaxHighlighting(highlight),
          placeholder("SELECT …"),
          this.language.of(sql({ dialect: StandardSQL })),
          Prec.highest(
            keymap.of([
              {
                key: "Mod-Enter",
                run: (view) => {
                  closeCompletion(view);
                  onRun();
                  return true;
                },
                preventDefault: true,
              },
            ]),
          ),
          keymap.of([...closeBracketsKeymap, ...defaultKeymap, ...historyKeymap, ...completionKeymap, indentWithTab]),
          EditorView.contentAttributes.of({ "aria-label": label }),
          replaceSelection,
          theme,
          EditorView.lineWrapping,
        ],
      }),
    });
  }

  get text() {
    return this.view.state.doc.toString();
  }

  set text(value) {
    this.view.dispatch({ changes: { from: 0, to: this.view.state.doc.length, insert: value } });
  }

  focus() {
    this.view.focus();
  }

  /** Put `text` where the cursor is (replacing the selection), then focus the editor. */
  insert(text) {
    const { from, to } = this.view.state.selection.main;
    this.view.dispatch({ changes: { from, to, insert: text }, selection: { anchor: from + text.length } });
    this.view.focus();
  }

  /** Highlight and complete for `dialect` (postgres, mysql, sqlite, ...) with `schema` from /api/schema. */
  configure(dialect, schema) {
    const config = { dialect: DIALECTS[dialect] || StandardSQL, schema: namespaceOf(schema), upperCaseKeywords: true };
    this.view.dispatch({ effects: this.language.reconfigure(sql(config)) });
  }
}
