"""pyresty's version, in one place: the package metadata (pyproject.toml reads it)
and the ``Server`` header (``pyresty.http.response``) both take it from here."""
__version__ = "0.1.0"
