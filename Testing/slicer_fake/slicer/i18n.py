"""Stand-in for ``slicer.i18n``: no translation, the source text comes back."""


def tr(text: str) -> str:
    return text


def translate(context: str, text: str) -> str:
    return text
