"""Settings for the test suite: production settings with a cheap password hasher.

Django's default PBKDF2 (1,000,000 iterations) costs ~0.4 s per user created or logged in, and the
suite creates hundreds; what the tests check about passwords does not depend on the iteration count.
Servers the tests start (tests/servers.py) use this module too, so a password stored by a test can be
checked by the server.
"""

from beautyai_site.settings import *  # noqa: F401,F403 - the production settings, unchanged but for below

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
