"""Session 27 (the records writer): the service's data volume fills mid-shift. Are the records
of the inspections it answered kept?

Needs root (it mounts a tmpfs). The records folder is a 3 MB tmpfs; N inspections of Lego's
test photos are answered while it fills, then the volume is grown (as an operator frees space)
and M more are answered; the writer is given time to catch up, the service is restarted, and
the rows are counted, with and without their images.

    python docs/results/records_disk_full.py BUNDLES_DIR CATEGORY_DIR [N M] [OUT.json]
"""
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from lab.served import Service

bundles, category = Path(sys.argv[1]), Path(sys.argv[2])
n, m = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (40, 5)
photos = sorted(category.glob("test/*/*.png"))
mount = Path(tempfile.mkdtemp(prefix="records_full_"))
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
report: dict = {"volume": "3 MB tmpfs, then 64 MB", "answered": 0, "record_ids": []}


def inspect(client: httpx.Client, count: int) -> None:
    for i in range(count):
        with open(photos[i % len(photos)], "rb") as f:
            r = client.post("/inspect", files={"file": (f"part{i}.png", f, "image/png")},
                            data={"category": category.name})
        r.raise_for_status()
        report["answered"] += 1
        report["record_ids"].append(r.json()["record_id"])


try:
    service = Service(bundles, mount, log=mount.parent / f"{mount.name}.log").start()
    with httpx.Client(base_url=service.url, timeout=120) as client:
        inspect(client, n)
        report["while_full"] = client.get("/readyz").json()
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        inspect(client, m)
        end = time.monotonic() + 60  # the writer retries within 30 s of the space coming back

        def rows() -> int:
            db = sqlite3.connect(mount / "records.sqlite3")
            try:
                return db.execute("select count(*) from inspections").fetchone()[0]
            finally:
                db.close()

        while (client.get("/readyz").json().get("records") or rows() < report["answered"]) and time.monotonic() < end:
            time.sleep(1)
        report["after_space"] = client.get("/readyz").json()
        report["failures"] = [line for line in client.get("/metrics").text.splitlines()
                              if line.startswith("rpepad_records_failed_total")]
    service.stop()
    service.start()
    service.stop()
    db = sqlite3.connect(mount / "records.sqlite3")
    ids = {row[0]: row[1] for row in db.execute("select id, map_png is not null from inspections")}
    db.close()
    report["kept"] = sum(rid in ids for rid in report["record_ids"])
    report["kept_with_images"] = sum(bool(ids.get(rid)) for rid in report["record_ids"])
    report["journal_bytes"] = (mount / "records.journal").stat().st_size
finally:
    subprocess.run(["umount", str(mount)], check=False)
    mount.rmdir()
del report["record_ids"]
print(json.dumps(report, indent=1))
if len(sys.argv) > 5:
    Path(sys.argv[5]).write_text(json.dumps(report, indent=1) + "\n")
