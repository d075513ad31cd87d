"""`/docs`: the OpenAPI document as one self-contained HTML page (no scripts, no CDN)."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{font:13px ui-monospace,monospace;background:#f4f4f4;padding:.1rem .3rem}
pre{padding:.6rem;overflow-x:auto}h2{border-bottom:1px solid #ddd;margin-top:2.5rem}
.op{margin:1.2rem 0}.verb{font-weight:bold;text-transform:uppercase;margin-right:.5rem}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #ddd;padding:.2rem .5rem;
text-align:left;vertical-align:top}
"""

_QUICKSTART = """curl -u WRITE_KEY: -H 'Content-Type: application/json' \\
  -d '{"userId": "u1", "traits": {"email": "a@example.com"}}' http://HOST/v1/identify

curl -u ACCESS_TOKEN: \\
  http://HOST/v1/spaces/SPACE/collections/users/profiles/email:a%40example.com/traits"""


def _parameters(params: list[dict[str, Any]]) -> str:
    if not params:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
        f"<td>{escape(p.get('description', ''))}</td></tr>"
        for p in params
    )
    return f"<table><tr><th>parameter</th><th>in</th><th>meaning</th></tr>{rows}</table>"


def _responses(responses: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{escape(status)}</td><td>{escape(r.get('description', ''))}</td></tr>"
        for status, r in responses.items()
    )
    return f"<table><tr><th>status</th><th>meaning</th></tr>{rows}</table>"


def page(document: dict[str, Any]) -> str:
    info = document["info"]
    sections: dict[str, list[str]] = {t["name"]: [] for t in document.get("tags", [])}
    notes = {t["name"]: t.get("description", "") for t in document.get("tags", [])}
    for path, operations in document["paths"].items():
        for verb, op in operations.items():
            tag = op.get("tags", ["Other"])[0]
            sections.setdefault(tag, []).append(
                f'<div class="op"><p><span class="verb">{escape(verb)}</span>'
                f"<code>{escape(path)}</code> {escape(op.get('summary', ''))}</p>"
                f"<p>{escape(op.get('description', ''))}</p>"
                f"{_parameters(op.get('parameters', []))}{_responses(op['responses'])}</div>"
            )
    body = "".join(
        f"<h2>{escape(tag)}</h2><p>{escape(notes.get(tag, ''))}</p>{''.join(ops)}"
        for tag, ops in sections.items()
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(info['title'])} API</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(info['title'])} {escape(info['version'])}</h1>"
        f"<p>{escape(info['description'])} The machine-readable twin of this page is "
        '<a href="/openapi.json"><code>/openapi.json</code></a>.</p>'
        f"<h2>Quick start</h2><pre>{escape(_QUICKSTART)}</pre>{body}</body></html>"
    )
