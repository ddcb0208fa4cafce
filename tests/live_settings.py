"""The settings of the app that the browser and live tests start (tests/live.py): the
site's own, with a password hasher that costs nothing. Those tests create users and log in
over and over, and none of them measures hashing (tests/test_logins.py and bench/logins.py
do, with the site's hasher)."""

from chatsite.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
