"""What sealing costs the records writer: Sealer.seal and Sealer.check on the rows of a records
database (with their images), timed over many repeats.

    PYTHONPATH=. python docs/results/seal_cost_session52.py DATABASE_URL KEY_FILE
"""

import statistics
import sys
import time

from service.records import open_existing, scan
from service.sealing import Sealer


def main(url: str, key_file: str, repeats: int = 200) -> None:
    sealer = Sealer.from_files([key_file])
    engine = open_existing(url)
    rows = list(scan(engine))
    engine.dispose()
    sizes = [sum(len(getattr(r, c) or b"") for c in ("query_png", "reference_png", "map_png", "query_bytes"))
             for r in rows]
    for name, fn in (("seal", sealer.seal), ("check", sealer.check)):
        times = []
        for _ in range(repeats):
            for row in rows:
                start = time.perf_counter()
                fn(row)  # seal sets the row's seal again: the same value, under the same key
                times.append(time.perf_counter() - start)
        print(f"{name}: {len(rows)} rows ({statistics.median(sizes) / 1e3:.0f} kB of images each, median), "
              f"median {statistics.median(times) * 1e6:.0f} us, p95 {sorted(times)[int(0.95 * len(times))] * 1e6:.0f} us")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
