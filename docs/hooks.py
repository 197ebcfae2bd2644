"""MkDocs hook: the configuration reference page is generated from the code at build time."""

from lmstack.config.reference import markdown

MARKER = "<!-- lmstack:reference -->"


def on_page_markdown(text, page, config, files):
    return text.replace(MARKER, markdown()) if MARKER in text else text
