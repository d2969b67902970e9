"""URL configuration for djsite."""

from django.http import HttpResponse
from django.urls import path


def index(request):
    return HttpResponse("django\n", content_type="text/plain")


urlpatterns = [
    path("", index),
]
