"""`rpe-pad`: one console command with a subcommand per job.

The product's commands first (``synth``, ``show``, ``prepare``, ``train``, ``selfcheck``, ``inspect``,
``serve``, ``records verify``, ``demo``); the research drivers behind one group, ``rpe-pad lab ...`` (``lab/cli.py``).
Each subcommand parses its arguments and calls one package function; heavy imports happen
inside the handlers so that `rpe-pad --help` stays fast. Choices of names (pose modes,
presets) come from ``models.registry``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import sys
from pathlib import Path

from models import registry
from rpe_pad.argtypes import (folder, int_between, intrinsics, iso_time, non_negative_float, non_negative_int,
                              writable_parent)
from rpe_pad import __version__

PATH_ERRORS = (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _cmd_synth(args: argparse.Namespace) -> int:
    from training.synth import SynthConfig, generate

    cfg = SynthConfig(seed=args.seed, size=args.size, train_views=args.train_views, test_views=args.test_views)
    out = generate(args.out_dir, cfg, progress=True)
    print(f"wrote {out} ({cfg.train_views} training views, {cfg.test_views} test views, {cfg.size}px)")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from models.data import load_category
    from training.category_report import category_sheet, describe

    if args.sheet and (args.sheet.is_dir() or args.sheet.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp")):
        raise ValueError(f"--sheet {args.sheet}: give the path of an image file to write (.png, .jpg or .webp)")
    if args.sheet and writable_parent(args.sheet.parent) is not None:  # now, not after loading every photo
        raise ValueError(f"--sheet {args.sheet}: {writable_parent(args.sheet.parent)} is a file, not a folder")
    if args.sheet:
        _make_folder(args.sheet.parent, f"--sheet {args.sheet}")
    category = load_category(args.category_dir, size=args.size, progress=True)
    print(json.dumps(describe(category), indent=2))
    if args.sheet:
        category_sheet(category).save(args.sheet)
        print(f"contact sheet: {args.sheet}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from training.prepare import PrepareConfig, prepare, summary

    # SIGTERM (docker stop, timeout, systemd) as Ctrl-C: prepare cleans up after either.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = prepare(args.photos_dir, args.out, PrepareConfig(camera_model=args.camera_model, focal=args.focal))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary(report))
    print(f"category: {args.out} (train/good, train/transforms.json); report: {args.out / 'prepare'} "
          "(readiness.json, coverage.png, masks.png, masks/, sfm/)")
    return 0 if report["ready"] else 1


def _cmd_train(args: argparse.Namespace) -> int:
    stages = args.stages.split(",") if args.stages is not None else None  # "" names none: refused, not all
    if len(args.category_dir) == 1 and args.ray is None:  # one category, here: no Ray
        from training.pipeline import run_train, summary_table

        reports = run_train(args.category_dir[0], args.out, preset=args.preset, stages=stages,
                            progress=not args.quiet, validation_dir=args.validation, device=args.device,
                            false_alarm_rate=args.false_alarm_rate)
        print(summary_table(reports))
        return 0
    if args.validation is not None:
        raise ValueError("--validation calibrates one category on its labelled twin: train that category alone")
    if args.device != "auto":
        raise ValueError("--device is for one category trained here; on Ray each task takes the GPU share it is given")
    from training.fanout import outcome_table, train_many
    from training.pipeline import summary_table

    outcomes = train_many(args.category_dir, args.out, preset=args.preset, stages=stages, address=args.ray,
                          echo=lambda line: print(line, flush=True), false_alarm_rate=args.false_alarm_rate)
    for outcome in outcomes:
        if outcome.ok:
            print(f"\n{outcome.category}:\n{summary_table(outcome.reports)}")
    print(f"\n{outcome_table(outcomes)}")
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"rpe-pad train: {outcome.category} ({outcome.folder}) failed: {outcome.reason}", file=sys.stderr)
    return 1 if failed else 0


def _list_file_line(line: str) -> list[str]:
    """One argument per line of an ``@FILE`` (blank lines and ``#`` comments skipped)."""
    line = line.strip()
    return [] if not line or line.startswith("#") else [line]


def _cmd_selfcheck(args: argparse.Namespace) -> int:
    from training.selfcheck import markdown, selfcheck

    out = args.out or Path("selfcheck") / args.category_dir.name
    report = selfcheck(args.bundles, args.category_dir, out, progress=True, device=args.device)
    print(markdown(report))
    print(f"report: {out} (selfcheck.json, selfcheck.md, selfcheck.png: the weakest defects and strongest clean views)")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from models.bundle import BundleError
    from models.compression import compression_of
    from PIL import UnidentifiedImageError

    from models.images import FORMAT_NAMES, MIN_IMAGE_SIDE, exif_camera_of, greyscale_file, load_rgb
    from models.viz import figure as digits
    from models.inspector import InspectionError, Inspector
    from models.results import resolve_threshold

    for path in args.images:  # a mistyped path is the user's mistake: refused before the bundle is loaded
        if path.is_dir():
            raise IsADirectoryError(f"{path}: a folder, not an image (give the image files, e.g. {path}/*.png)")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
    try:
        inspector = Inspector.load(args.bundle_dir, args.device, pose=args.pose)
    except BundleError as exc:
        print(f"rpe-pad inspect: bundle refused: {exc}", file=sys.stderr)
        return 3
    if args.threshold is not None:  # the bundle's own bounds: once, before any image
        try:
            resolve_threshold(inspector.calibration, args.threshold)
        except InspectionError as exc:
            raise ValueError(f"--threshold: {exc}") from None
    out = args.out or Path("inspections")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    created = not out.exists()
    _make_folder(out, f"--out {out}")  # an unwritable folder fails here, before any image is inspected
    failures = 0
    for path, figure in zip(args.images, _figure_names(args.images, out)):
        try:
            rgb = load_rgb(path, inspector.scene.background)  # the formats, frames and pixels the service takes
            if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
                raise ValueError(f"{rgb.shape[1]} x {rgb.shape[0]} is too small (at least {MIN_IMAGE_SIDE} px a side)")
            data = Path(path).read_bytes()
            image = inspector.prepare(rgb, args.intrinsics, exif_camera_of(data), greyscale_file(data), compression_of(data))
            result = inspector.inspect(image[None], threshold=args.threshold)[0]
        except UnidentifiedImageError:  # Pillow's message names its file object, not the file
            print(f"{path}: error: not a decodable image (give {FORMAT_NAMES})", file=sys.stderr)
            failures += 1
            continue
        except (OSError, InspectionError, ValueError) as exc:  # one bad image does not stop the others
            print(f"{path}: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        shown = Path(path).name if figure.name == f"{Path(path).stem}_overlay.png" else \
            f"{Path(path).resolve().parent.name}/{Path(path).name}"
        inspector.figure(image.numpy(), result, title=f"{inspector.name}: {shown}").save(figure)
        verdict = result.verdict.upper() + ("" if result.verification.verified else f" ({result.verification.reason})")
        print(f"{path}: {verdict}  score {digits(result.score)} against threshold {digits(result.threshold)} "
              f"(normalised {result.normalised_score:.2f}; 0.5 is the threshold)  gallery {result.gallery_names[:1]}  "
              f"{result.timings_ms['total']:.0f} ms  overlay {figure}")
        if args.json:
            print(json.dumps({"image": str(path), **result.model_dump(mode="json")}))
    if created and failures == len(args.images):  # every image refused: no overlay, so no empty folder left behind
        out.rmdir()
    return 1 if failures else 0


def _make_folder(folder: Path, option: str) -> None:
    """``folder`` and its parents made now, before the work; one that cannot be is the user's
    choice of place (exit 2 naming the option), not a failure of the machine."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option}: the folder {folder} cannot be made ({exc.strerror}; choose a folder that can "
                         "be written)") from None


def _figure_names(images: list, out: Path) -> list[Path]:
    """``<stem>_overlay.png`` in ``out`` for each image; images whose stems repeat in the run
    (``Burrs/000.png``, ``Stains/000.png``) get their folder's name in front, and a counter if
    that repeats too, so no figure overwrites another."""
    stems = [Path(p).stem for p in images]
    names, taken = [], set()
    for path, stem in zip(images, stems):
        name = stem if stems.count(stem) == 1 else f"{Path(path).resolve().parent.name}_{stem}"
        base, n = name, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        names.append(out / f"{name}_overlay.png")
    return names


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from service.app import create_app
    from service.server import check_address, run

    from models.bundle import MANIFEST
    from models.data import not_a_folder
    from models.inspector import resolve_device

    overrides = {k: v for k, v in (("bundles", args.bundles), ("device", args.device)) if v is not None}
    settings = _settings(overrides)  # a malformed s3:// URL or setting is refused here, with the reason
    resolve_device(settings.device)  # --device cuda without a GPU: refused here, not bundle by bundle
    source = settings.bundle_source()
    if isinstance(source, Path):  # an object store may be down at start: not checked
        if not source.is_dir():
            raise FileNotFoundError(f"bundles directory {settings.bundles} {not_a_folder(source)}")
        if (source / MANIFEST).is_file():
            raise ValueError(f"{source} is one bundle; serve its parent folder (--bundles {source.parent})")
    check_address(args.host, args.port)  # taken, or not this machine's: one line now, not uvicorn's log later
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(create_app(settings), args.host, args.port, settings.drain_s)
    return 0


def _settings(overrides: dict, options: dict | None = None):
    """The service's settings (environment, ``.env``) with ``overrides``; a bad one is refused in one
    line naming the option (``options``: setting -> option, default ``--setting``) or variable that gave it."""
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        def origin(field: str) -> str:
            if field in overrides:
                return (options or {}).get(field, f"--{field}")
            return f"RPEPAD_{field.upper()}"

        raise ValueError("; ".join(f"{origin(str(e['loc'][0])) if e['loc'] else 'settings'}: {e['msg']}"
                                   for e in exc.errors())) from None


def _cmd_records_verify(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from service.records import open_existing, scan, utc_naive
    from service.sealing import SETTLE_S, Sealer, verify_rows

    overrides = {k: v for k, v in (("database_url", args.database),
                                   ("records_key_file", args.key_file[0] if args.key_file else None)) if v is not None}
    settings = _settings(overrides, {"database_url": "--database", "records_key_file": "--key-file"})
    keys = args.key_file or ([settings.records_key_file] if settings.records_key_file else [])
    if not keys:
        raise ValueError("no records key: give --key-file FILE (the service's RPEPAD_RECORDS_KEY_FILE; several for "
                         "keys used before a rotation)")
    sealer = Sealer.from_files(keys)
    engine = open_existing(settings.records_url())
    progress = None if args.json else (lambda n: print(f"checked {n} records", file=sys.stderr, flush=True))
    since = None if args.sealed_since is None else utc_naive(args.sealed_since)
    try:
        report = verify_rows(scan(engine), sealer, since, progress)
    except SQLAlchemyError as exc:  # the database stopped answering (a row's own failure is a finding)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConnectionError(f"reading the records failed: {type(exc).__name__}: {first[:200]}") from None
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(report.to_json()))
        return 0 if report.ok else 1
    unsealed = f"{report.unsealed} unsealed"
    if report.unsealed:
        unsealed += (f" ({report.unsealed_since} dated after --sealed-since)" if since else
                     " (findings: give --sealed-since to accept those written before the key)")
    print(f"{report.records} records: {report.valid} valid, {report.invalid_count} changed since written, {unsealed}, "
          f"{report.unknown_key} under a key not given"
          + (f" ({', '.join(sorted(report.unknown_keys))})" if report.unknown_keys else ""))
    for rid, why in report.invalid:
        print(f"  changed: {rid}: {why}")
    for chain in report.chains:
        gap = "none missing" if not chain.missing_count else (
            f"{chain.missing_count} missing: " + ", ".join(map(str, chain.missing))
            + (" ..." if chain.missing_count > len(chain.missing) else ""))
        if chain.unsettled:
            gap += (f"; {chain.unsettled} more not yet written before records of the last "
                    f"{SETTLE_S / 60:g} min (the writer may still be on them: not counted)")
        print(f"  chain {chain.id}: records {chain.first}-{chain.last} ({chain.count}), {gap}")
    if report.ok:
        print("OK: no record changed, none missing inside a chain (a chain's first records go by retention; its "
              "newest could be deleted unseen: compare with /metrics' rpepad_records_numbered as scraped)")
    else:
        print("NOT OK: records were changed, deleted, written without the key or under a key not given "
              "(a record the database refused is in records.journal.rejected, not deleted)")
    return 0 if report.ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from training.demo import run_demo

    return run_demo(Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpe-pad", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rpe-pad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic LEGO-like category in MAD-Sim layout")
    p.add_argument("out_dir", type=folder, help="output folder (created; must be empty or absent)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="RNG seed (default 0)")
    p.add_argument("--size", type=int_between(16, 2048), default=256, help="image size in pixels, 16-2048 (default 256)")
    p.add_argument("--train-views", type=int_between(1, 1000), default=100, help="training views, 1-1000 (default 100)")
    p.add_argument("--test-views", type=int_between(0, 1000), default=40, help="query views, 0-1000 (default 40)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("show", help="summarise a category and optionally draw its contact sheet")
    p.add_argument("category_dir", type=Path)
    p.add_argument("--size", type=int_between(16, 4096), default=None, help="resize images to this width (16-4096)")
    p.add_argument("--sheet", type=Path, default=None, help="write a contact sheet PNG here")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("prepare", help="a category from photographs of a normal object: camera poses by "
                       "structure-from-motion, object masks, a readiness report (exit 1: prepared but not ready)")
    p.add_argument("photos_dir", type=Path, help="photos of the object from many viewpoints (any file names)")
    p.add_argument("--out", type=folder, required=True, help="category folder to write (must be empty or absent)")
    p.add_argument("--camera-model", default="SIMPLE_RADIAL", choices=list(registry.CAMERA_MODELS),
                   help="the camera shared by all photos (COLMAP's models): " + "; ".join(
                       f"{k}: {v}" for k, v in registry.CAMERA_MODELS.items()))
    p.add_argument("--focal", type=float, default=None, help="known focal length in pixels of the photos as stored "
                   "(default: estimated)")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="build a category's bundle, stage by stage (several categories: one Ray "
                       "task each)", fromfile_prefix_chars="@")
    p.convert_arg_line_to_args = _list_file_line
    p.add_argument("category_dir", type=Path, nargs="+", help="MAD-Sim-format categories, or @FILE: one folder per "
                   "line. Several are trained at once on Ray (pip install \"rpe-pad[cluster]\"), each failure "
                   "reported without stopping the others (exit 1)")
    p.add_argument("--out", type=folder, required=True, help="bundles folder (BUNDLES_DIR/<category> is written)")
    p.add_argument("--preset", default="cpu", choices=list(registry.PRESETS),
                   help="; ".join(f"{k}: {v}" for k, v in registry.PRESETS.items()) + " (default cpu)")
    p.add_argument("--stages", default=None, help="comma-separated stages to run (default: all)")
    p.add_argument("--validation", type=Path, default=None,
                   help="a labelled category: calibrate the threshold F1-optimally on its test split")
    p.add_argument("--false-alarm-rate", type=float, default=None, metavar="R",
                   help="the share of good parts the threshold may reject on views the model never saw (cpu and paper "
                        "presets; default 0.02). Recalibrate a built bundle without refitting: --stages "
                        "calibration,bundle (docs/SCORING.md has what 0.05 found and cost)")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="train on this Ray cluster (auto, HOST:PORT, "
                   "ray://HOST:PORT; the folders must be at the same paths on its nodes); default: one category here, "
                   "several on a local Ray instance with this machine's CPUs")
    p.add_argument("--quiet", action="store_true", help="no progress bars (tasks on Ray never draw them)")
    p.add_argument("--device", default="auto", choices=list(registry.DEVICES),
                   help="where the Gaussian model fits and renders and IRPRN trains "
                        "(default auto: CUDA when present; one category)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("selfcheck", help="how well a bundle finds defects on its object: synthetic defects painted "
                       "on photographs no model saw, scored at the bundle's threshold")
    p.add_argument("category_dir", type=Path, help="the category the bundle was trained on (its normal photographs)")
    p.add_argument("--bundles", type=Path, required=True, help="the bundles folder rpe-pad train wrote (with .work/)")
    p.add_argument("--out", type=folder, default=None, help="report folder (default ./selfcheck/<category>)")
    p.add_argument("--device", default="auto", choices=list(registry.DEVICES),
                   help="where the calibration model renders (default auto: CUDA when present)")
    p.set_defaults(func=_cmd_selfcheck)

    p = sub.add_parser("inspect", help="inspect images with a bundle: verdicts on stdout, overlay PNGs on disk")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> (verified before use)")
    p.add_argument("images", type=Path, nargs="+", help="query images (PNG, JPEG, WebP, BMP or TIFF; one frame, at "
                   "most 25 000 000 pixels, as the service takes), the category's aspect ratio")
    p.add_argument("--out", type=folder, default=None, help="overlay folder (default ./inspections)")
    p.add_argument("--pose", default=None, choices=registry.pose_modes(),
                   help="; ".join(f"{n}: {e.help}" for n, e in registry.POSE_MODES.items() if not e.lab)
                   + " (default: the bundle's, normally rpe+refine)")
    p.add_argument("--intrinsics", type=intrinsics, default=None, metavar="FX,FY,CX,CY",
                   help="the photos' camera in their own pixels, when it is not the bundle's at another resolution")
    p.add_argument("--threshold", type=non_negative_float, default=None,
                   help="override the calibrated threshold (raw score units, above the bundle's lowest normal score, "
                        "GET /categories' score_floor)")
    p.add_argument("--device", default="auto", choices=list(registry.DEVICES))
    p.add_argument("--json", action="store_true", help="also print each result as one JSON line")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("serve", help="run the inspection service (FastAPI + uvicorn) on a bundles directory")
    p.add_argument("--bundles", default=None,
                   help="bundles directory or s3://bucket/prefix (default $RPEPAD_BUNDLES or ./bundles)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (0.0.0.0 in the container)")
    p.add_argument("--port", type=int_between(1, 65535), default=8000)
    p.add_argument("--device", default=None, choices=list(registry.DEVICES), help="default $RPEPAD_DEVICE or auto")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("records", help="the service's inspection records")
    records = p.add_subparsers(dest="records_command", required=True, metavar="RECORDS_COMMAND")
    p = records.add_parser("verify", help="check that no record was changed or deleted since the service wrote it "
                           "(its seals and chains; exit 1 when one was)")
    p.add_argument("--database", default=None, help="the records database's SQLAlchemy URL (default: the service's, "
                   "$RPEPAD_DATABASE_URL or $RPEPAD_DATA_DIR/records.sqlite3)")
    p.add_argument("--key-file", type=Path, action="append", default=None, metavar="FILE",
                   help="the records key (default $RPEPAD_RECORDS_KEY_FILE); again for each key used before a "
                        "rotation")
    p.add_argument("--sealed-since", type=iso_time, default=None, metavar="TIME",
                   help="when every service had the key (ISO 8601, UTC when no zone): unsealed records dated before "
                        "it are accepted; without it every unsealed record is a finding")
    p.add_argument("--json", action="store_true", help="the findings as one JSON object")
    p.set_defaults(func=_cmd_records_verify)

    p = sub.add_parser("demo", help="run the pipeline on an embedded synthetic category")
    p.add_argument("--out", type=folder, default=Path("demo_out"), help="working folder (default demo_out)")
    p.set_defaults(func=_cmd_demo)

    try:
        from lab.cli import add_lab_commands
    except ModuleNotFoundError as exc:  # a product-only install (the service images ship no lab)
        if exc.name not in ("lab", "lab.cli"):
            raise
        p = sub.add_parser("lab", help="research drivers (not installed here: the product-only install)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_no_lab)
        return parser
    lab = sub.add_parser("lab", help="research drivers: evaluation in every pose mode, baselines, benchmarks, "
                                     "the paper's ablation, sweeps, the load test (rpe-pad lab --help)")
    add_lab_commands(lab.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND"))
    return parser


def _no_lab(args: argparse.Namespace) -> int:
    raise ValueError("the lab (rpe-pad lab ...) is not installed in this environment, which has the product only; "
                     "install the source tree to use it (pip install -e . in a checkout)")


def _reader_gone(stream) -> bool:
    """Whether ``stream`` is a pipe whose reader has closed it (another pipe or socket may
    have broken instead: that one is a failure to report)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, *PATH_ERRORS) as exc:
        # Users' mistakes (bad data, bad arguments, an occupied or unwritable output folder, a
        # file where a folder goes): one clear line, exit 2.
        if os.environ.get("RPEPAD_DEBUG"):
            raise
        print(f"rpe-pad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine's failures (a full disk, an I/O error, a library that does not load)
        if isinstance(exc, BrokenPipeError) and _reader_gone(sys.stdout):  # rpe-pad show ... | head
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more, nor at exit's flush
            return 141  # 128 + SIGPIPE, as a command the signal ended
        if os.environ.get("RPEPAD_DEBUG"):
            raise
        if exc.errno == errno.EROFS:  # a read-only place for the output: the user's choice of folder
            print(f"rpe-pad {args.command}: error: {exc} (choose a folder that can be written)", file=sys.stderr)
            return 2
        print(f"rpe-pad {args.command}: error: {exc} (RPEPAD_DEBUG=1 shows where)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (prepare and synth leave nothing; train resumes)
        if os.environ.get("RPEPAD_DEBUG"):
            raise
        print(f"rpe-pad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
