from django.apps import AppConfig


class DjappConfig(AppConfig):
    name = "tests.contrib.django_project.djapp"
    label = "djapp"
