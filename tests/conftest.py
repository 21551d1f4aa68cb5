import os

from tests.fix_factory import make_job  # noqa: F401
from tests.fix_postgres import _pg_noproc, db_url, pg_cluster, pg_conn, pg_proc  # noqa: F401

# The host names the in-process test clients send (TestClient: `testserver`; the ASGI clients'
# base_url: `t`), allowed the way an operator would allow theirs. Servers the tests start as
# processes get an environment without SKIPLOCK_* (tests/acceptance/procs.py): the default.
os.environ.setdefault("SKIPLOCK_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver,t")
