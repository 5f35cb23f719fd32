"""``maskrcnn serve``: a model behind HTTP (Starlette on uvicorn) with a page to try it.

:func:`~maskrcnn.serve.app.create_app` builds the ASGI app around a
:class:`~maskrcnn.serve.predictor.Predictor`; the page is ``static/index.html`` (package
data). Needs the ``serve`` extra (``pip install .[serve]``).
"""
