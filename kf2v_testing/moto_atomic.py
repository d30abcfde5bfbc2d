"""moto's S3 server with conditional PUTs made atomic, as S3's are.

moto checks ``If-None-Match: *`` / ``If-Match`` and then stores, unlocked, on a threaded
server: two concurrent exclusive creates can both win (seen under load), which S3 never
allows. One lock around a PUT's check-and-store makes the double as strict as the service.
Run as ``python -m kf2v_testing.moto_atomic`` with moto's own server arguments.
"""

from __future__ import annotations

import functools
import threading

from moto.s3.responses import S3Response
from moto.server import main

_PUT_LOCK = threading.Lock()
_put_object = S3Response.put_object


@functools.wraps(_put_object)
def _atomic_put_object(self: S3Response, *args, **kwargs):  # type: ignore[no-untyped-def]
    with _PUT_LOCK:
        return _put_object(self, *args, **kwargs)


S3Response.put_object = _atomic_put_object  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
