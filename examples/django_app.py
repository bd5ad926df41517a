"""A one-file Django project served by txcmux (see docs/webapps.md).

``application`` is Django's WSGI handler and ``asgi_application`` its ASGI
one, as a project's ``wsgi.py`` and ``asgi.py`` would make them::

    wsgi = "django_app:application"
    asgi = "django_app:asgi_application"

``/`` says who the client is as Django sees it.
"""

from __future__ import annotations

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="only-for-this-example",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()


def who(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "client": request.META.get("REMOTE_ADDR", ""),
            "scheme": request.scheme,
        }
    )


urlpatterns = [path("", who)]

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
asgi_application = get_asgi_application()
