"""The HTTP service and the web page: app.py (routes, auth, errors), schemas.py (response bodies),
serve.py (the composition root), media.py (signed thumbnail and clip URLs), web/ (the page)."""
