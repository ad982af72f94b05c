"""Session 50: how long the service takes to refuse a 9.6 MiB TIFF of 80 001 chained page headers.

From the project root: `PYTHONPATH=. .venv/bin/python docs/results/tiff_pages_session50.py [old]`.
With `old` it times Pillow's page count instead, the check the service made before session 50.
"""

import io
import sys
import time

import numpy as np
from PIL import Image

from service.problems import ServiceError
from service.settings import Settings
from service.uploads import decode

PAGES = 80_000

buf = io.BytesIO()
Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="TIFF")
one = buf.getvalue()
first = int.from_bytes(one[4:8], "little")  # the first page's header
count = int.from_bytes(one[first:first + 2], "little")
ifd = one[first:first + 2 + 12 * count]  # its entries: their offsets stay valid in every copy
body, link = bytearray(one), first + 2 + 12 * count
for _ in range(PAGES):
    body[link:link + 4] = len(body).to_bytes(4, "little")  # each header names the next copy
    link = len(body) + len(ifd)
    body += ifd + bytes(4)
data = bytes(body)

start = time.perf_counter()
if sys.argv[1:] == ["old"]:
    pages = Image.open(io.BytesIO(data)).n_frames
    print(f"{len(data) / 2**20:.2f} MiB: Pillow counts {pages} pages in {time.perf_counter() - start:.1f} s")
else:
    try:
        decode(data, "pages.tiff", Settings(_env_file=None), (1.0, 1.0, 1.0))
    except ServiceError as exc:
        print(exc.status, exc.detail)
    print(f"{len(data) / 2**20:.2f} MiB: refused in {1000 * (time.perf_counter() - start):.1f} ms")
