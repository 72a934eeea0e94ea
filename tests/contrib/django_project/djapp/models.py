from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models.signals import post_delete
from django.dispatch import receiver


class Organisation(models.Model):
    name = models.CharField(max_length=100)


class Member(AbstractUser):
    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.CASCADE, related_name="members"
    )


class Document(models.Model):
    title = models.CharField(max_length=100)
    upload = models.FileField(upload_to="uploads/")


@receiver(post_delete, sender=Document)
def _delete_file(sender, instance, **kwargs):
    # Django leaves a deleted row's file in place; applications delete it themselves.
    instance.upload.delete(save=False)
