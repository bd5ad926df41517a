"""The Python web apps people already have, as txcmux targets: WSGI and ASGI."""
