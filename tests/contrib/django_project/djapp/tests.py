"""The adapters inside a real Django project, run by Django's own test runner."""

import hashlib
import os
from datetime import timedelta
from pathlib import Path

from django.contrib.auth.hashers import make_password
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import TestCase
from django.utils import timezone

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.contrib.django.models import SafekeeperSession
from safekeeper.services.copies import inventory
from safekeeper.services.deletion import gc
from tests.contrib.django_project.djapp.models import Document, Member, Organisation

DATA_DIR = Path(os.environ["SAFEKEEPER_DATA_DIR"])
PASSWORD = "correct horse"


def store_file(sha256):
    return DATA_DIR / "inbox" / sha256[:2] / sha256[2:4] / sha256


class StorageTests(TestCase):
    def setUp(self):
        self.user = Member.objects.create(username="ada", password=make_password(PASSWORD))
        self.client.login(username="ada", password=PASSWORD)

    def test_model_form_upload_lands_as_reference_and_blob(self):
        body = b"lecture notes " * 1000
        response = self.client.post(
            "/upload/",
            {"title": "notes", "upload": SimpleUploadedFile("notes 1.txt", body)},
        )
        self.assertEqual(response.status_code, 302, response.content)
        document = Document.objects.get()
        self.assertEqual(document.upload.name, "uploads/notes_1.txt")
        refs = {(r.key, r.blob) for r in inventory.list_refs(default_storage.archive, "media")}
        self.assertEqual(len(refs), 1)
        key, sha256 = refs.pop()
        self.assertEqual(key, "uploads/notes_1.txt")
        self.assertEqual(store_file(sha256).read_bytes(), body)
        # Django's collision rule: a second upload of the same name gets another name.
        second = Document.objects.create(
            title="again", upload=SimpleUploadedFile("notes 1.txt", b"other")
        )
        self.assertNotEqual(second.upload.name, document.upload.name)
        self.assertEqual(default_storage.size(document.upload.name), len(body))
        with default_storage.open(document.upload.name) as opened:
            self.assertEqual(opened.read(), body)
        self.assertEqual(default_storage.listdir("uploads")[1].count("notes_1.txt"), 1)
        served = self.client.get("/media/" + document.upload.name)
        self.assertEqual(b"".join(served.streaming_content), body)

    def test_a_copy_that_rotted_is_not_opened_as_the_file(self):
        body = b"syllabus " * 100
        document = Document.objects.create(title="s", upload=SimpleUploadedFile("s.txt", body))
        path = store_file(hashlib.sha256(body).hexdigest())
        before = path.stat()
        path.chmod(0o644)
        path.write_bytes(body[:-1] + b"!")  # same size, last byte changed
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        try:
            with self.assertRaisesRegex(OSError, "safekeeper verify"):
                default_storage.open(document.upload.name)
        finally:
            default_storage.delete(document.upload.name)  # the archive outlives the test

    def test_deleting_the_instance_and_gc_past_grace_removes_every_copy(self):
        document = Document.objects.create(
            title="t", upload=SimpleUploadedFile("gone.bin", b"to be erased")
        )
        sha256 = hashlib.sha256(b"to be erased").hexdigest()
        self.assertTrue(store_file(sha256).exists())
        name = document.upload.name
        document.delete()
        self.assertFalse(default_storage.exists(name))
        later = timezone.now() + timedelta(days=8)  # past the default grace period
        archive = Archive(load_config(data_dir=DATA_DIR), clock=lambda: later)
        try:
            gc.run_gc(archive)
        finally:
            archive.close()
        self.assertFalse(store_file(sha256).exists())


class SessionEndsOnEveryRemovalPath(TestCase):
    def setUp(self):
        self.organisation = Organisation.objects.create(name="facility")
        self.user = Member.objects.create(
            username="bo", password=make_password(PASSWORD), organisation=self.organisation
        )
        self.assertTrue(self.client.login(username="bo", password=PASSWORD))
        self.assertEqual(self.client.get("/private/").status_code, 200)

    def assert_signed_out(self):
        response = self.client.get("/private/")
        self.assertEqual(response.status_code, 302)
        self.assertTrue(response["Location"].startswith("/login/"))

    def test_session_key_is_stored_hashed_with_the_user(self):
        row = SafekeeperSession.objects.get()
        self.assertEqual(row.user_id, str(self.user.pk))
        self.assertNotEqual(row.key_hash, self.client.session.session_key)

    def test_instance_delete(self):
        self.user.delete()
        self.assertEqual(SafekeeperSession.objects.count(), 0)
        self.assert_signed_out()

    def test_queryset_delete(self):
        Member.objects.filter(pk=self.user.pk).delete()
        self.assertEqual(SafekeeperSession.objects.count(), 0)
        self.assert_signed_out()

    def test_cascade_from_organisation(self):
        self.organisation.delete()
        self.assertEqual(SafekeeperSession.objects.count(), 0)
        self.assert_signed_out()

    def test_deactivated_by_save(self):
        self.user.is_active = False
        self.user.save()
        self.assertEqual(SafekeeperSession.objects.count(), 0)
        self.assert_signed_out()

    def test_queryset_update_is_caught_on_use(self):
        Member.objects.filter(pk=self.user.pk).update(is_active=False)
        self.assert_signed_out()
        self.assertEqual(SafekeeperSession.objects.count(), 0)

    def test_bulk_update_is_caught_on_use(self):
        self.user.is_active = False
        Member.objects.bulk_update([self.user], ["is_active"])
        self.assert_signed_out()
        self.assertEqual(SafekeeperSession.objects.count(), 0)

    def test_password_change(self):
        self.user.set_password("new password")
        self.user.save()
        self.assertEqual(SafekeeperSession.objects.count(), 0)
        self.assert_signed_out()

    def test_other_users_keep_their_sessions(self):
        other = Member.objects.create(username="cy", password=make_password(PASSWORD))
        other_client = self.client_class()
        self.assertTrue(other_client.login(username="cy", password=PASSWORD))
        self.user.delete()
        self.assertEqual(other_client.get("/private/").status_code, 200)
        self.assertEqual(SafekeeperSession.objects.filter(user_id=str(other.pk)).count(), 1)

    def test_management_command_lists_and_ends(self):
        from io import StringIO

        out = StringIO()
        call_command("safekeeper_sessions", "bo", stdout=out)
        self.assertIn("expires", out.getvalue())
        call_command("safekeeper_sessions", "bo", "--end", stdout=out)
        self.assertIn("ended 1 session", out.getvalue())
        self.assert_signed_out()
