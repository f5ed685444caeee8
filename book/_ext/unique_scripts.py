"""Drop repeated <script> tags from the book's pages.

Sphinx < 8.2 writes an inline script that an extension adds after the builder starts
twice (sphinx-doc/sphinx#13402); sphinx-thebe's second `const THEBE_JS_URL` is then a
SyntaxError in the browser console. Jupyter Book 1.x pins Sphinx 7, so we remove the copy.
"""


def _unique_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
