"""The REST plan API (FastAPI under /v1): `controller.api.app.create_app(controller)`."""
