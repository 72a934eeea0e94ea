from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import path

from safekeeper.contrib.django.views import serve
from tests.contrib.django_project.djapp.models import Document


class DocumentForm(forms.ModelForm):
    class Meta:
        model = Document
        fields = ["title", "upload"]


@login_required
def private(request):
    return HttpResponse(f"hello {request.user.username}")


@login_required
def upload(request):
    form = DocumentForm(request.POST, request.FILES)
    if not form.is_valid():
        return HttpResponse(str(form.errors), status=400)
    document = form.save()
    return redirect(f"/documents/{document.pk}/")


def login_page(request):
    return HttpResponse("please sign in")


urlpatterns = [
    path("private/", private),
    path("upload/", upload),
    path("login/", login_page),
    path("media/<path:name>", login_required(serve)),
]
