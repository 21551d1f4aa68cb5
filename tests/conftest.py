from tests.fix_factory import make_job  # noqa: F401
from tests.fix_postgres import _pg_noproc, db_url, pg_cluster, pg_conn, pg_proc  # noqa: F401
