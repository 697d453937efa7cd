import os
import sys

import pytest

# Tests import the project from the checkout even when it is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def moto_s3():
    """One moto S3 server for the whole session (tests take a bucket each, `s3_bucket`)."""
    pytest.importorskip("moto.server", reason="moto[server] is a test dependency (setup.py extra `test`)")
    pytest.importorskip("boto3", reason="apache-beam[aws] is a test dependency (setup.py extra `test`)")
    from tests.moto_s3 import MotoS3

    with MotoS3() as server:
        yield server


@pytest.fixture
def s3_bucket(moto_s3):
    """A new bucket on the session's moto server, with Beam's filesystems pointed at the server."""
    from transforms.store.object_store import apply_filesystem_options

    apply_filesystem_options(moto_s3.beam_args)
    return moto_s3.new_bucket()
