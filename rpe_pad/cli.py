"""`rpe-pad`: one console command with a subcommand per job.

Each subcommand parses its arguments and calls one package function; heavy imports happen
inside the handlers so that `rpe-pad --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rpe_pad import __version__

# models.refine's REFINERS and default method, spelt out so that building the parser does
# not import torch (tests/test_cli.py checks that they agree).
REFINERS = ("none", "pnp", "ecc", "pnp+ecc", "gpnp", "gpnp+ecc")
DEFAULT_REFINE = "gpnp+ecc"
DEFAULT_K = 3  # models.pose.DEFAULT_K, likewise


def _cmd_synth(args: argparse.Namespace) -> int:
    from training.synth import SynthConfig, generate

    cfg = SynthConfig(seed=args.seed, size=args.size, train_views=args.train_views, test_views=args.test_views)
    out = generate(args.out_dir, cfg, progress=not args.quiet)
    print(f"wrote {out} ({cfg.train_views} training views, {cfg.test_views} test views, {cfg.size}px)")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from models.data import load_category
    from training.category_report import category_sheet, describe

    category = load_category(args.category_dir, size=args.size, progress=True)
    print(json.dumps(describe(category), indent=2))
    if args.sheet:
        category_sheet(category).save(args.sheet)
        print(f"contact sheet: {args.sheet}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from training.pipeline import run_train, summary_table

    stages = args.stages.split(",") if args.stages else None
    ablation = {"rvss_m": args.rvss_m, "rvss_orbit": args.rvss_orbit, "n_refine": args.refine_layers, "k": args.pairs_k,
                "mpts": False if args.no_mpts else None, "epochs": args.irprn_epochs, "holdout": args.holdout}
    reports = run_train(args.category_dir, args.out, preset=args.preset, stages=stages, progress=not args.quiet,
                        validation_dir=args.validation, ablation=ablation)
    print(summary_table(reports))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from models.refine import IterativeConfig
    from training.evaluate import evaluate

    name = args.pose if args.limit is None else f"{args.pose}_limit{args.limit}"  # a subset never overwrites a full run
    if args.out is not None:
        out = args.out
    elif (args.bundle_dir / "manifest.json").exists():  # bundles stay as assembled (and may be read-only)
        out = Path("evaluations") / args.bundle_dir.name / name
    else:
        out = args.bundle_dir / "reports" / f"evaluate_{name}"
    metrics = evaluate(args.bundle_dir, args.category_dir, pose=args.pose, out_dir=out, tolerance=args.tolerance,
                       fusion=args.fusion, backend=args.backend, k=args.k, refine=args.refine,
                       refine_rounds=args.refine_rounds, photometric=args.photometric,
                       iterative=IterativeConfig(steps=args.iterative_steps), progress=True, limit=args.limit)
    print(json.dumps({k: v for k, v in metrics.items() if k != "per_query_reproj_px"}, indent=2))
    print(f"report: {out}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from models.bundle import BundleError
    from models.images import load_rgb
    from models.inspector import InspectionError, Inspector, InspectorConfig
    from models.refine import RefineConfig

    config = InspectorConfig(pose=args.pose, refine=RefineConfig(method=args.refine))
    try:
        inspector = Inspector.load(args.bundle_dir, config, device=args.device)
    except BundleError as exc:
        print(f"rpe-pad inspect: bundle refused: {exc}", file=sys.stderr)
        return 3
    out = args.out or Path("inspections")
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.images:
        try:
            image = load_rgb(path, inspector.scene.background)
            result = inspector.inspect(inspector.prepare(image)[None], threshold=args.threshold)[0]
        except (OSError, InspectionError, ValueError) as exc:  # one bad image does not stop the others
            print(f"{path}: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        figure = out / f"{Path(path).stem}_overlay.png"
        inspector.figure(inspector.prepare(image).numpy(), result, title=f"{inspector.name}: {Path(path).name}").save(figure)
        verdict = "ANOMALOUS" if result.is_anomalous else "normal"
        print(f"{path}: {verdict}  score {result.score:.1f} (normalised {result.normalised_score:.3f}, threshold "
              f"{result.threshold:.1f})  gallery {result.gallery_names[:1]}  {result.timings_ms['total']:.0f} ms  "
              f"overlay {figure}")
        if args.json:
            print(json.dumps({"image": str(path), **result.summary()}))
    return 1 if failures else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {k: v for k, v in (("bundles", args.bundles), ("device", args.device)) if v is not None}
    settings = Settings(**overrides)
    if not settings.bundles.is_dir():
        raise FileNotFoundError(f"bundles directory {settings.bundles} does not exist")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def _cmd_loadtest(args: argparse.Namespace) -> int:
    import asyncio

    from service.loadtest import run_load

    result = asyncio.run(run_load(args.url, args.category, args.image, clients=args.clients, seconds=args.seconds,
                                  max_requests=args.max_requests, api_key=args.api_key))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from training.sensitivity import markdown, sensitivity, write

    out = args.out or (args.bundle_dir / "reports" / "sensitivity")
    result = sensitivity(args.bundle_dir, args.category_dir, size=args.size, shifts=args.shifts,
                         rotations=args.rotations, tolerances=args.tolerances, progress=not args.quiet)
    write(result, out)
    print(markdown(result))
    print(f"report: {out}")
    return 0


def _cmd_pose_sweep(args: argparse.Namespace) -> int:
    from training.pose_sweep import markdown, sweep, sweep_heldout, write

    if not args.held_out and args.copies != 1:
        raise ValueError("--copies goes with --held-out (renders are drawn with --views)")
    if args.held_out:
        out = args.json or (args.bundle_dir / "reports" / "pose_sweep_heldout.json")
        result = sweep_heldout(args.bundle_dir, args.category_dir, max_roll_deg=args.max_roll, copies=args.copies,
                               seed=args.seed, grids=tuple(args.grids), ks=tuple(args.k), fusion=args.fusion,
                               progress=not args.quiet)
    else:
        out = args.json or (args.bundle_dir / "reports" / "pose_sweep.json")
        result = sweep(args.bundle_dir, args.category_dir, n=args.views, max_roll_deg=args.max_roll, seed=args.seed,
                       grids=tuple(args.grids), ks=tuple(args.k), fusion=args.fusion, backend=args.backend,
                       device=args.device, progress=not args.quiet)
    write(result, out)
    print(markdown(result))
    print(f"report: {out}")
    return 0


def _cmd_bench_render(args: argparse.Namespace) -> int:
    from training.benchmarks import bench_render, load_or_random

    scene = load_or_random(args.scene, args.gaussians)
    devices = None if args.device == "all" else [args.device]
    result = bench_render(scene, size=args.size, repeats=args.repeats, devices=devices)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    from training.ablation import ablation_table, run_ablation

    out = args.out or (args.bundles / "reports" / "ablation")
    result = run_ablation(args.category_dir, args.bundles, out, preset=args.preset, variants=args.variants,
                          poses=tuple(args.poses), progress=not args.quiet, epochs=args.irprn_epochs)
    print(ablation_table(result))
    print(f"report: {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from training.benchmarks import bench_markdown, bench_pipeline, write_bench

    out = args.out or Path("benchmarks") / args.bundle_dir.name
    devices = None if args.device == "all" else [args.device]
    result = bench_pipeline(args.bundle_dir, args.category_dir, modes=tuple(args.modes),
                            batch_sizes=tuple(args.batch_sizes), iterative_queries=args.iterative_queries,
                            iterative_steps=args.iterative_steps, devices=devices, progress=not args.quiet,
                            single_queries=args.single_queries, k=args.k)
    write_bench(result, out)
    print(bench_markdown(result))
    print(f"report: {out} (bench.json, bench.md, bench.png)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from training.demo import run_demo

    return run_demo(Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpe-pad", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rpe-pad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic LEGO-like category in MAD-Sim layout")
    p.add_argument("out_dir", type=Path, help="output folder (created; must be empty or absent)")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    p.add_argument("--size", type=_positive_int, default=256, help="image size in pixels (default 256)")
    p.add_argument("--train-views", type=_positive_int, default=100, help="training views (default 100)")
    p.add_argument("--test-views", type=_non_negative_int, default=40, help="query views (default 40)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("show", help="summarise a category and optionally draw its contact sheet")
    p.add_argument("category_dir", type=Path)
    p.add_argument("--size", type=_positive_int, default=None, help="resize images to this width")
    p.add_argument("--sheet", type=Path, default=None, help="write a contact sheet PNG here")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("train", help="build a category's bundle, stage by stage")
    p.add_argument("category_dir", type=Path, help="a MAD-Sim-format category")
    p.add_argument("--out", type=Path, required=True, help="bundles folder (BUNDLES_DIR/<category> is written)")
    p.add_argument("--preset", default="cpu", choices=["demo", "cpu", "paper"], help="default cpu")
    p.add_argument("--stages", default=None, help="comma-separated stages to run (default: all)")
    p.add_argument("--validation", type=Path, default=None,
                   help="a labelled category: calibrate the threshold F1-optimally on its test split")
    p.add_argument("--rvss-m", type=_non_negative_int, default=None, help="novel views per training view (0 = no RVSS, and no orbit views unless --rvss-orbit; default 3)")
    p.add_argument("--rvss-orbit", type=_non_negative_int, default=None,
                   help="wider novel views per training view, carried 2-12 degrees around the object "
                        "(default: 6 with the cpu and paper presets, 0 with demo or --rvss-m 0)")
    p.add_argument("--refine-layers", type=_non_negative_int, default=None, help="IRPRN refinement layers (default 3)")
    p.add_argument("--pairs-k", type=_positive_int, default=None, help="training pairs per query, K (default 3)")
    p.add_argument("--no-mpts", action="store_true", help="uniform pair weights instead of MPTS")
    p.add_argument("--irprn-epochs", type=_positive_int, default=None, help="IRPRN epochs (default: the preset's)")
    p.add_argument("--holdout", type=_non_negative_int, default=None,
                   help="hold this many training views (and their novel views) out of IRPRN's training: real "
                        "photographs to choose pose settings on (rpe-pad pose-sweep --held-out; default 0). A "
                        "validation run: use its own --out; it builds no bundle")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="score every test view of a category and report the metrics")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> (or a training folder BUNDLES_DIR/.work/<category>)")
    p.add_argument("category_dir", type=Path)
    p.add_argument("--pose", default="rpe+refine",
                   choices=["oracle", "retrieval", "iterative", "rpe", "rpe+refine", "patchcore"],
                   help="how query poses are obtained: IRPRN's then refined (default), IRPRN's, the best gallery "
                        "view's, the peers' per-query optimisation from it (iterative, slow), the true pose; or "
                        "patchcore, the 2D baseline that ignores pose")
    p.add_argument("--iterative-steps", type=_positive_int, default=175,
                   help="Adam steps of --pose iterative (default 175, the peers')")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="evaluate about this many test views, each label keeping its share (for slow modes; default all)")
    p.add_argument("--refine", default=DEFAULT_REFINE, choices=REFINERS,
                   help=f"refinement after IRPRN for --pose rpe+refine (default {DEFAULT_REFINE})")
    p.add_argument("--refine-rounds", type=_positive_int, default=2,
                   help="PnP polishing rounds (pnp: each re-renders and verifies; gpnp: each warps or re-renders "
                        "and verifies; default 2)")
    p.add_argument("--photometric", action="store_true",
                   help="render-and-compare where PnP fails (rpe+refine; about 15 s per such query on a CPU)")
    p.add_argument("--fusion", default="mean", choices=["mean", "top1", "render"],
                   help="how the K IRPRN poses are fused (rpe; default mean)")
    p.add_argument("--k", type=_positive_int, default=DEFAULT_K, help=f"gallery matches per query (default {DEFAULT_K})")
    p.add_argument("--backend", default="auto", choices=["auto", "onnx", "torch"], help="IRPRN runtime (default: ONNX when exported)")
    p.add_argument("--tolerance", type=_non_negative_int, default=None,
                   help="comparison radius in cells (default: the calibrated scorer's)")
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default ./evaluations/<category>/<pose> for a bundle, "
                        "FOLDER/reports/evaluate_<pose> for a training folder)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("inspect", help="inspect images with a bundle: verdicts on stdout, overlay PNGs on disk")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> (verified before use)")
    p.add_argument("images", type=Path, nargs="+", help="query images (PNG, JPEG), the category's aspect ratio")
    p.add_argument("--out", type=Path, default=None, help="overlay folder (default ./inspections)")
    p.add_argument("--pose", default="rpe+refine", choices=["retrieval", "rpe", "rpe+refine"],
                   help="how the query pose is found (default rpe+refine, the best measured)")
    p.add_argument("--refine", default=DEFAULT_REFINE, choices=REFINERS,
                   help=f"refinement for --pose rpe+refine (default {DEFAULT_REFINE})")
    p.add_argument("--threshold", type=float, default=None, help="override the calibrated threshold (raw score units)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--json", action="store_true", help="also print each result as one JSON line")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("serve", help="run the inspection service (FastAPI + uvicorn) on a bundles directory")
    p.add_argument("--bundles", type=Path, default=None, help="bundles directory (default $RPEPAD_BUNDLES or ./bundles)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (0.0.0.0 in the container)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, choices=["auto", "cuda", "cpu"], help="default $RPEPAD_DEVICE or auto")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("loadtest", help="N concurrent clients against a running service (loopback only)")
    p.add_argument("image", type=Path, help="the image every request posts")
    p.add_argument("--category", required=True)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=_positive_int, default=8)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--max-requests", type=_positive_int, default=10_000, help="stop after this many in all")
    p.add_argument("--api-key", default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.set_defaults(func=_cmd_loadtest)

    p = sub.add_parser("sensitivity", help="image/pixel AUROC against a shifted or rotated oracle reference")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> written by rpe-pad train")
    p.add_argument("category_dir", type=Path)
    p.add_argument("--size", type=_positive_int, default=None, help="score at this image width (default: the model's)")
    p.add_argument("--shifts", type=_non_negative_int, nargs="+", default=[0, 1, 2, 4, 8], help="pixels (default 0 1 2 4 8)")
    p.add_argument("--rotations", type=_non_negative_int, nargs="*", default=[1, 2], help="degrees (default 1 2)")
    p.add_argument("--tolerances", type=_non_negative_int, nargs="+", default=[0, 1], help="comparison modes (default 0 1)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default BUNDLE_DIR/reports/sensitivity)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sensitivity)

    p = sub.add_parser("pose-sweep", help="query-pose errors on held-out renders for each retrieval grid and k "
                       "(choose settings without the test views)")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> or its training work folder")
    p.add_argument("category_dir", type=Path, help="the category it was trained on (cameras and image size)")
    p.add_argument("--views", type=_positive_int, default=100, help="held-out renders (default 100)")
    p.add_argument("--held-out", action="store_true",
                   help="query with the training photographs held out of IRPRN's training instead of renders "
                        "(a work folder trained with rpe-pad train --holdout N; PyTorch weights)")
    p.add_argument("--copies", type=_positive_int, default=1, help="with --held-out: rolled copies per photograph "
                   "(needs --max-roll; default 1)")
    p.add_argument("--max-roll", type=float, default=0.0, help="their roll about the optical axis, +-degrees (default 0)")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--grids", type=_positive_int, nargs="+", default=[4, 7], help="retrieval grids (default 4 7)")
    p.add_argument("--k", type=_positive_int, nargs="+", default=[1, 3, 5, 8, 10], help="matches fused (default 1 3 5 8 10)")
    p.add_argument("--fusion", choices=["top1", "mean"], default="mean")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", type=Path, default=None, help="report file (default BUNDLE_DIR/reports/pose_sweep.json, "
                   "with --held-out pose_sweep_heldout.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pose_sweep)

    p = sub.add_parser("bench-render", help="time the Gaussian renderer (median of repeated runs)")
    p.add_argument("--scene", type=Path, default=None, help="a scene.safetensors (default: random scene)")
    p.add_argument("--gaussians", type=_positive_int, default=20_000, help="random scene size (default 20000)")
    p.add_argument("--size", type=_positive_int, default=256, help="image width and height (default 256)")
    p.add_argument("--repeats", type=_positive_int, default=10)
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.set_defaults(func=_cmd_bench_render)

    p = sub.add_parser("bench", help="per-stage latency and throughput of the inspection pipeline, and the speed-up "
                                     "over the peers' iterative pose optimisation")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> (verified before use)")
    p.add_argument("category_dir", type=Path, help="the category whose test views are the queries")
    p.add_argument("--modes", nargs="+", default=["rpe", "rpe+refine"], choices=["retrieval", "rpe", "rpe+refine"],
                   help="pose modes to time at every batch size (default rpe rpe+refine)")
    p.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--iterative-queries", type=_non_negative_int, default=2,
                   help="queries timed in the peers' iterative mode (0 = skip; minutes each on a CPU; default 2)")
    p.add_argument("--iterative-steps", type=_positive_int, default=175, help="default 175, the peers'")
    p.add_argument("--single-queries", type=_positive_int, default=8,
                   help="queries run one at a time for batch size 1, the median one reported (default 8)")
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"], help="default: CPU, and CUDA when present")
    p.add_argument("--k", type=_positive_int, default=DEFAULT_K, help=f"gallery matches per query (default {DEFAULT_K})")
    p.add_argument("--out", type=Path, default=None, help="report folder (default ./benchmarks/<category>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("ablation", help="the paper's ablation (RVSS, IRPRN refinement, MPTS on and off) on a category")
    p.add_argument("category_dir", type=Path, help="the category rpe-pad train was run on")
    p.add_argument("bundles", type=Path, help="the bundles folder of that run (its .work/<category> splats and calibration are reused)")
    p.add_argument("--preset", default="cpu", choices=["demo", "cpu", "paper"], help="training preset (default cpu)")
    p.add_argument("--variants", nargs="+", default=None,
                   choices=["none", "rvss", "rvss_irprn", "rvss_mpts", "all"], help="default: all five")
    p.add_argument("--poses", nargs="+", default=["rpe"], choices=["retrieval", "rpe", "rpe+refine"],
                   help="pose modes to evaluate each variant in (default rpe)")
    p.add_argument("--irprn-epochs", type=_positive_int, default=None, help="IRPRN epochs (default: the preset's)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default BUNDLES/reports/ablation)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_ablation)

    p = sub.add_parser("demo", help="run the pipeline on an embedded synthetic category")
    p.add_argument("--out", default="demo_out", help="working folder (default demo_out)")
    p.set_defaults(func=_cmd_demo)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        # Users' mistakes (bad data, bad arguments, occupied output folder): one clear line.
        print(f"rpe-pad {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
