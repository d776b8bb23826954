"""Serving: the runtime-agnostic service, the HTTP app (FastAPI on uvicorn) and batch prediction.

``create_app(package)`` (``medfuse.serve.app``) builds the app; ``medfuse serve`` runs it.
"""
