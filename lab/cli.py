"""`rpe-pad lab ...`: the research drivers (evaluation in every pose mode, baselines,
benchmarks, the paper's ablation, sweeps, the service load test, training variants).

Thin wrappers over the ``lab`` package; the product's CLI (``rpe_pad/cli.py``) mounts them
under its ``lab`` group.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import lab  # noqa: F401 (registers the evaluation-only pose modes, by name: nothing heavy is imported)
from models import registry
from rpe_pad.argtypes import folder, non_negative_int, positive_int


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lab.evaluate import evaluate

    name = args.pose if args.limit is None else f"{args.pose}_limit{args.limit}"  # a subset never overwrites a full run
    if args.out is not None:
        out = args.out
    elif (args.bundle_dir / "manifest.json").exists():  # bundles stay as assembled (and may be read-only)
        out = Path("evaluations") / args.bundle_dir.name / name
    else:
        out = args.bundle_dir / "reports" / f"evaluate_{name}"
    metrics = evaluate(args.bundle_dir, args.category_dir, pose=args.pose, out_dir=out, k=args.k,
                       iterative_steps=args.iterative_steps, progress=True, limit=args.limit)
    print(json.dumps({k: v for k, v in metrics.items() if k != "per_query_reproj_px"}, indent=2))
    print(f"report: {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from training.pipeline import run_train, summary_table

    stages = args.stages.split(",") if args.stages is not None else None  # "" names none: refused, not all
    switches = {"rvss_m": args.rvss_m, "rvss_orbit": args.rvss_orbit, "n_refine": args.refine_layers,
                "k": args.pairs_k, "mpts": False if args.no_mpts else None, "epochs": args.irprn_epochs,
                "holdout": args.holdout}
    reports = run_train(args.category_dir, args.out, preset=args.preset, stages=stages, progress=True,
                        ablation=switches)
    print(summary_table(reports))
    return 0


def _cmd_loadtest(args: argparse.Namespace) -> int:
    import asyncio

    from lab.loadtest import run_load

    result = asyncio.run(run_load(args.url, args.category, args.image, clients=args.clients, seconds=args.seconds,
                                  max_requests=args.max_requests, api_key=args.api_key))
    _print_json(result, args.json)
    if result["requests"] and result["errors"] == result["requests"]:  # nothing measured: say so, and fail
        unanswered = result["errors_connection"] == result["requests"]
        print(f"rpe-pad lab loadtest: every one of the {result['requests']} requests failed ("
              + ", ".join(f"{status}: {n}" for status, n in result["status"].items()) + ")"
              + (f": is the service running at {args.url}?" if unanswered else ""), file=sys.stderr)
        return 1
    return 0


def _cmd_fleet_loadtest(args: argparse.Namespace) -> int:
    from lab.fleet import fleet_loadtest

    result = fleet_loadtest(args.bundles, args.image, category=args.category, clients=args.clients,
                            seconds=args.seconds, restart_at=args.restart_at, swap_at=args.swap_at, work=args.work,
                            echo=lambda line: print(line, flush=True))
    _print_json(result, args.json)
    return 0 if result["met"] else 1


def _print_json(result: dict, path: Path | None) -> int:
    """Print ``result`` as JSON, and write it to ``path`` when one is given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from lab.sensitivity import markdown, sensitivity, write

    out = args.out or (args.bundle_dir / "reports" / "sensitivity")
    result = sensitivity(args.bundle_dir, args.category_dir, size=args.size, shifts=args.shifts,
                         rotations=args.rotations, tolerances=args.tolerances, progress=not args.quiet)
    write(result, out)
    print(markdown(result))
    print(f"report: {out}")
    return 0


def _cmd_pose_sweep(args: argparse.Namespace) -> int:
    from lab.pose_sweep import markdown, sweep, sweep_heldout, write

    if not args.held_out and args.copies != 1:
        raise ValueError("--copies goes with --held-out (renders are drawn with --views)")
    if args.held_out:
        out = args.json or (args.bundle_dir / "reports" / "pose_sweep_heldout.json")
        result = sweep_heldout(args.bundle_dir, args.category_dir, max_roll_deg=args.max_roll, copies=args.copies,
                               seed=args.seed, grids=tuple(args.grids), ks=tuple(args.k), progress=not args.quiet)
    else:
        out = args.json or (args.bundle_dir / "reports" / "pose_sweep.json")
        result = sweep(args.bundle_dir, args.category_dir, n=args.views, max_roll_deg=args.max_roll, seed=args.seed,
                       grids=tuple(args.grids), ks=tuple(args.k), device=args.device,
                       progress=not args.quiet)
    write(result, out)
    print(markdown(result))
    print(f"report: {out}")
    return 0


def _cmd_verify_sweep(args: argparse.Namespace) -> int:
    from lab.verify_sweep import sweep

    out = args.out or (args.bundle_dir / "reports" / "verify_sweep")
    result = sweep(args.bundle_dir, args.category_dir, out, n=args.views, seed=args.seed, device=args.device,
                   progress=not args.quiet)
    print(json.dumps({"curve": result["curve"], "pipeline": result["pipeline"]}, indent=2))
    print(f"report: {out} (verify_sweep.json, verify_sweep.png)")
    return 0


def _cmd_scorer_study(args: argparse.Namespace) -> int:
    from lab.scorer_study import markdown, study, write

    out = args.out or Path("scorer_study") / args.category_dir.name
    report = study(args.bundles, args.category_dir, test=args.test, progress=not args.quiet)
    write(report, out)
    print(markdown(report))
    print(f"report: {out}")
    return 0


def _cmd_fidelity_study(args: argparse.Namespace) -> int:
    from lab.fidelity_study import VARIANTS, markdown, other_stages_seconds, study, write

    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    report = study(args.category_dir, args.root, names, other_stages_seconds(args.build_summary),
                   progress=not args.quiet)
    out = args.out or args.root / "report"
    write(report, out)
    print(markdown(report))
    print(f"report: {out}")
    return 0


def _cmd_bench_render(args: argparse.Namespace) -> int:
    from lab.benchmarks import bench_render, load_or_random

    scene = load_or_random(args.scene, args.gaussians)
    devices = None if args.device == "all" else [args.device]
    result = bench_render(scene, size=args.size, repeats=args.repeats, devices=devices)
    return _print_json(result, args.json)


def _cmd_ablation(args: argparse.Namespace) -> int:
    from lab.ablation import ablation_table, run_ablation

    out = args.out or (args.bundles / "reports" / "ablation")
    result = run_ablation(args.category_dir, args.bundles, out, preset=args.preset, variants=args.variants,
                          poses=tuple(args.poses), progress=not args.quiet, epochs=args.irprn_epochs)
    print(ablation_table(result))
    print(f"report: {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from lab.benchmarks import bench_markdown, bench_pipeline, write_bench

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


def _cmd_gpu_check(args: argparse.Namespace) -> int:
    from lab.gpu_check import main

    return main(args.out, Path(__file__).resolve().parent.parent)


def _cmd_docker_smoke(args: argparse.Namespace) -> int:
    from lab.docker_smoke import main

    if args.cuda_archs is not None and args.target != "gpu":
        raise ValueError("--cuda-archs is for --target gpu (the CPU image compiles no CUDA kernels)")
    return main(args.out, Path(__file__).resolve().parent.parent, args.json, args.target, args.cuda_archs)


def _cmd_screenshots(args: argparse.Namespace) -> int:
    from lab.browser import screenshots

    for path in screenshots(args.bundles, args.queries, args.out):
        print(path)
    return 0


def _cmd_records_bench(args: argparse.Namespace) -> int:
    from lab.records_bench import history, interleaved, kill, overhead

    report = {}
    if "history" in args.parts:
        report["history"] = history(args.bundles, args.records, args.category)
    if "kill" in args.parts:
        report["kill"] = kill(args.bundles, args.query, args.category, seconds=args.seconds, kill_after=args.kill_after)
    if "overhead" in args.parts:
        report["overhead"] = overhead(args.bundles, args.query, args.category, pairs=args.pairs,
                                      seconds=args.overhead_seconds)
    if "interleaved" in args.parts:
        report["interleaved"] = interleaved(args.bundles, args.query, args.category, seconds=args.interleaved_seconds,
                                            segment=args.segment_seconds)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    met = all(report.get(part, {}).get("met", True) for part in ("overhead", "interleaved"))
    return 0 if not report.get("kill", {}).get("missing") and met else 1


def _cmd_onboard_check(args: argparse.Namespace) -> int:
    from lab.onboarding import mapped_category, pose_errors, summary

    if args.out is None:
        errors = pose_errors(args.prepared_dir, args.truth)
    else:
        errors = mapped_category(args.prepared_dir, args.truth, args.out)
        print(f"evaluation category: {args.out} (test split of {args.truth}, query poses in the prepared frame)")
    print(summary(errors))
    if args.json:
        args.json.write_text(json.dumps(errors, indent=1) + "\n")
    return 0


def _cmd_fanout_bench(args: argparse.Namespace) -> int:
    from lab.fanout_bench import fanout_bench, summary

    result = fanout_bench(args.out, n=args.categories, preset=args.preset, echo=lambda line: print(line, flush=True))
    _print_json(result, args.json)
    print(summary(result))
    return 0 if all(v == "verified" for run in result["bundles"].values() for v in run.values()) else 1


def _cmd_validation_split(args: argparse.Namespace) -> int:
    from lab.validation_split import write_validation_split

    try:
        out = write_validation_split(args.category_dir, args.out, views=args.views, split=args.split)
    except (ValueError, OSError) as e:  # not a synth category, its files unreadable, or the output exists
        print(f"rpe-pad lab validation-split: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def add_lab_commands(sub) -> None:
    """The lab's subcommands on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("evaluate", help="score every test view of a category in any pose mode and report the metrics")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> (or a training folder BUNDLES_DIR/.work/<category>)")
    p.add_argument("category_dir", type=Path)
    p.add_argument("--pose", default=registry.DEFAULT_POSE, choices=[*registry.pose_modes(lab=True), "patchcore"],
                   help="; ".join(f"{n}: {e.help}" for n, e in registry.POSE_MODES.items())
                   + "; patchcore: the 2D baseline that ignores pose (default rpe+refine)")
    p.add_argument("--iterative-steps", type=positive_int, default=175,
                   help="Adam steps of --pose iterative (default 175, the peers')")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="evaluate about this many test views, each label keeping its share (for slow modes; default all)")
    p.add_argument("--k", type=positive_int, default=None, help="gallery matches per query (default: the bundle's)")
    p.add_argument("--out", type=folder, default=None,
                   help="report folder (default ./evaluations/<category>/<pose> for a bundle, "
                        "FOLDER/reports/evaluate_<pose> for a training folder)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("validation-split", help="new labelled queries of a `rpe-pad synth` category's own object, drawn "
                       "as its test split's: a split to choose settings on, so the test split is only reported")
    p.add_argument("category_dir", type=Path, help="a category written by rpe-pad synth")
    p.add_argument("--out", type=folder, required=True, help="writes OUT/<category name> (train linked to the original's)")
    p.add_argument("--views", type=positive_int, default=40, help="query views, a quarter of them good (default 40)")
    p.add_argument("--split", type=non_negative_int, default=0, help="another number, another split (default 0)")
    p.set_defaults(func=_cmd_validation_split)

    p = sub.add_parser("onboard-check", help="rpe-pad prepare's poses against the true ones (similarity-aligned), "
                       "and an evaluation category in the prepared frame")
    p.add_argument("prepared_dir", type=Path, help="a category written by rpe-pad prepare")
    p.add_argument("--truth", type=Path, required=True, help="the same photos' category with its true poses")
    p.add_argument("--out", type=folder, default=None, help="write an evaluation category here: the prepared training "
                   "split and the true test split, its query poses mapped into the prepared frame")
    p.add_argument("--json", type=Path, default=None, help="write the errors (with every view's) as JSON here")
    p.set_defaults(func=_cmd_onboard_check)

    p = sub.add_parser("train", help="rpe-pad train with the ablation switches (variants for the paper's tables)")
    p.add_argument("category_dir", type=Path, help="a MAD-Sim-format category")
    p.add_argument("--out", type=folder, required=True, help="bundles folder (BUNDLES_DIR/<category> is written)")
    p.add_argument("--preset", default="cpu", choices=list(registry.PRESETS), help="default cpu")
    p.add_argument("--stages", default=None, help="comma-separated stages to run (default: all)")
    p.add_argument("--rvss-m", type=non_negative_int, default=None,
                   help="novel views per training view (0 = no RVSS, and no orbit views unless --rvss-orbit; default 3)")
    p.add_argument("--rvss-orbit", type=non_negative_int, default=None,
                   help="wider novel views per training view, carried 2-12 degrees around the object "
                        "(default: 6 with the cpu and paper presets, 0 with demo or --rvss-m 0)")
    p.add_argument("--refine-layers", type=non_negative_int, default=None, help="IRPRN refinement layers (default 3)")
    p.add_argument("--pairs-k", type=positive_int, default=None, help="training pairs per query, K (default 3)")
    p.add_argument("--no-mpts", action="store_true", help="uniform pair weights instead of MPTS")
    p.add_argument("--irprn-epochs", type=positive_int, default=None, help="IRPRN epochs (default: the preset's)")
    p.add_argument("--holdout", type=non_negative_int, default=None,
                   help="hold this many training views (and their novel views) out of IRPRN's training: real "
                        "photographs to choose pose settings on (rpe-pad lab pose-sweep --held-out; default 0). A "
                        "validation run: use its own --out; it builds no bundle")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("loadtest", help="N concurrent clients against a running service (loopback only)")
    p.add_argument("image", type=Path, help="the image every request posts")
    p.add_argument("--category", required=True)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=positive_int, default=8)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--max-requests", type=positive_int, default=10_000, help="stop after this many in all")
    p.add_argument("--api-key", default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.set_defaults(func=_cmd_loadtest)

    p = sub.add_parser("fleet-loadtest", help="2 replicas from a loopback S3 store behind haproxy "
                       "(deploy/haproxy): N clients through the balancer while one replica restarts and a new bundle "
                       "version is published (exit 1 on any failed request)")
    p.add_argument("bundles", type=Path, help="bundles folder: every bundle in it is published to the store")
    p.add_argument("image", type=Path, help="the image every request posts")
    p.add_argument("--category", default=None, help="the category inspected and swapped (default: the first)")
    p.add_argument("--clients", type=positive_int, default=8, help="default 8")
    p.add_argument("--seconds", type=float, default=60.0, help="default 60")
    p.add_argument("--restart-at", type=float, default=1 / 3, help="replica a1's restart, as a fraction of the run "
                   "(default 1/3)")
    p.add_argument("--swap-at", type=float, default=1 / 2, help="the new version's publication (default 1/2)")
    p.add_argument("--work", type=Path, default=None, help="folder for the replicas' data and the logs (default: "
                   "a new temporary folder, kept)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.set_defaults(func=_cmd_fleet_loadtest)

    p = sub.add_parser("sensitivity", help="image/pixel AUROC against a shifted or rotated oracle reference")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> written by rpe-pad train")
    p.add_argument("category_dir", type=Path)
    p.add_argument("--size", type=positive_int, default=None, help="score at this image width (default: the model's)")
    p.add_argument("--shifts", type=non_negative_int, nargs="+", default=[0, 1, 2, 4, 8], help="pixels (default 0 1 2 4 8)")
    p.add_argument("--rotations", type=non_negative_int, nargs="*", default=[1, 2], help="degrees (default 1 2)")
    p.add_argument("--tolerances", type=non_negative_int, nargs="+", default=[0, 1], help="comparison modes (default 0 1)")
    p.add_argument("--out", type=folder, default=None, help="report folder (default BUNDLE_DIR/reports/sensitivity)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sensitivity)

    p = sub.add_parser("pose-sweep", help="query-pose errors on held-out renders for each retrieval grid and k "
                       "(choose settings without the test views)")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> or its training work folder")
    p.add_argument("category_dir", type=Path, help="the category it was trained on (cameras and image size)")
    p.add_argument("--views", type=positive_int, default=100, help="held-out renders (default 100)")
    p.add_argument("--held-out", action="store_true",
                   help="query with the training photographs held out of IRPRN's training instead of renders "
                        "(a work folder trained with rpe-pad lab train --holdout N; PyTorch weights)")
    p.add_argument("--copies", type=positive_int, default=1, help="with --held-out: rolled copies per photograph "
                   "(needs --max-roll; default 1)")
    p.add_argument("--max-roll", type=float, default=0.0, help="their roll about the optical axis, +-degrees (default 0)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--grids", type=positive_int, nargs="+", default=[4, 7], help="retrieval grids (default 4 7)")
    p.add_argument("--k", type=positive_int, nargs="+", default=[1, 3, 5, 8, 10], help="matches fused (default 1 3 5 8 10)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", type=Path, default=None, help="report file (default BUNDLE_DIR/reports/pose_sweep.json, "
                   "with --held-out pose_sweep_heldout.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pose_sweep)

    p = sub.add_parser("verify-sweep", help="the pose check on data held out from the test split: training photos "
                       "against renders moved by known amounts, and held-out renders through the pipeline")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> or its training work folder")
    p.add_argument("category_dir", type=Path, help="the category it was trained on (its training photographs)")
    p.add_argument("--views", type=non_negative_int, default=100, help="held-out renders through the pipeline "
                   "(0 = only the photographs' curve; default 100)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", type=folder, default=None, help="report folder (default BUNDLE_DIR/reports/verify_sweep)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify_sweep)

    p = sub.add_parser("scorer-study", help="anomaly-map variants chosen on the self-check's held-out painted "
                       "defects (and, with --test, reported on the test split at true poses)")
    p.add_argument("category_dir", type=Path, help="the category the bundle was trained on")
    p.add_argument("--bundles", type=Path, required=True, help="bundles folder with the held-out calibration (.work/)")
    p.add_argument("--test", action="store_true", help="also report every variant on the test split (true poses)")
    p.add_argument("--out", type=folder, default=None, help="report folder (default ./scorer_study/<category>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_scorer_study)

    p = sub.add_parser("fidelity-study", help="Gaussian models of other resolution and size, fitted and "
                       "calibrated by the product's stages, chosen on the self-check within the CPU budget")
    p.add_argument("category_dir", type=Path, help="the category (posed training photographs and a test split)")
    p.add_argument("--root", type=Path, required=True, help="folder of the variants' work folders (ROOT/<variant>/work; "
                   "a variant already fitted there is reused)")
    p.add_argument("--build-summary", type=Path, required=True, help="a full cpu build's reports/train_summary.json: "
                   "its stages other than splats and calibration are the rest of the build budget")
    p.add_argument("--variants", default="cpu,px400", help="comma-separated (default cpu,px400)")
    p.add_argument("--out", type=folder, default=None, help="report folder (default ROOT/report)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fidelity_study)

    p = sub.add_parser("bench-render", help="time the Gaussian renderer (median of repeated runs)")
    p.add_argument("--scene", type=Path, default=None, help="a scene.safetensors (default: random scene)")
    p.add_argument("--gaussians", type=positive_int, default=20_000, help="random scene size (default 20000)")
    p.add_argument("--size", type=positive_int, default=256, help="image width and height (default 256)")
    p.add_argument("--repeats", type=positive_int, default=10)
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.set_defaults(func=_cmd_bench_render)

    p = sub.add_parser("bench", help="per-stage latency and throughput of the inspection pipeline, and the speed-up "
                                     "over the peers' iterative pose optimisation")
    p.add_argument("bundle_dir", type=Path, help="BUNDLES_DIR/<category> (verified before use)")
    p.add_argument("category_dir", type=Path, help="the category whose test views are the queries")
    p.add_argument("--modes", nargs="+", default=["rpe", "rpe+refine"], choices=registry.pose_modes(lab=True),
                   help="pose modes to time at every batch size (default rpe rpe+refine)")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--iterative-queries", type=non_negative_int, default=2,
                   help="queries timed in the peers' iterative mode (0 = skip; minutes each on a CPU; default 2)")
    p.add_argument("--iterative-steps", type=positive_int, default=175, help="default 175, the peers'")
    p.add_argument("--single-queries", type=positive_int, default=8,
                   help="queries run one at a time for batch size 1, the median one reported (default 8)")
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"], help="default: CPU, and CUDA when present")
    p.add_argument("--k", type=positive_int, default=None, help="gallery matches per query (default: the bundle's)")
    p.add_argument("--out", type=folder, default=None, help="report folder (default ./benchmarks/<category>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("gpu-check", help="prove the CUDA path on a GPU machine: CUDA tests, a bundle built on the "
                       "GPU, bench at batch 1-64, the service on CUDA under load; one JSON and one Markdown report "
                       "(make gpu-check; refuses without CUDA)")
    p.add_argument("--out", type=folder, default=Path("gpu_check"), help="report folder (default ./gpu_check)")
    p.set_defaults(func=_cmd_gpu_check)

    p = sub.add_parser("docker-smoke", help="an image built on this machine's Docker engine without Docker "
                       "Hub (base from Debian's packages), a demo bundle trained in it, the compose stack up, "
                       "inspections through it, the stack down; timed report (make docker-smoke)")
    p.add_argument("--target", choices=("cpu", "gpu"), default="cpu",
                   help="the Dockerfile's target: cpu (default), or gpu (gsplat's CUDA kernels compiled; on an "
                        "engine without the NVIDIA runtime its stack serves on the CPU)")
    p.add_argument("--cuda-archs", default=None, metavar="LIST",
                   help="gpu: TORCH_CUDA_ARCH_LIST for gsplat's kernels, e.g. '9.0' (default: the Dockerfile's "
                        "list; each architecture takes about 6 min on 2 cores)")
    p.add_argument("--out", type=folder, default=Path("docker_smoke"), help="report folder (default ./docker_smoke)")
    p.add_argument("--json", type=Path, default=None, help="also copy the JSON report here (docs/results/...)")
    p.set_defaults(func=_cmd_docker_smoke)

    p = sub.add_parser("screenshots", help="pictures of the operator's page in headless Chromium (inspect at 1280 x "
                       "800 and tablet width, history, a record with feedback) for the docs")
    p.add_argument("bundles", type=Path, help="bundles folder to serve")
    p.add_argument("queries", type=Path, nargs="+", help="images to inspect on the page")
    p.add_argument("--out", type=folder, default=Path("docs/images"), help="folder (default docs/images)")
    p.set_defaults(func=_cmd_screenshots)

    p = sub.add_parser("records-bench", help="the inspection records through the real service: the first history "
                       "page with N records, a SIGKILL during an 8-client load (every answered inspection "
                       "must have its record after the restart), and the one-client p50 with records on against "
                       "off, back to back")
    p.add_argument("bundles", type=Path, help="bundles folder to serve")
    p.add_argument("query", type=Path, help="image the clients inspect")
    p.add_argument("--category", required=True)
    p.add_argument("--records", type=positive_int, default=10_000, help="records in the database (default 10000)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the load (default 30)")
    p.add_argument("--kill-after", type=float, default=15.0, help="SIGKILL after this many seconds (default 15)")
    p.add_argument("--parts", nargs="+", choices=("history", "kill", "overhead", "interleaved"),
                   default=["history", "kill", "overhead", "interleaved"], help="which measurements (default all four)")
    p.add_argument("--pairs", type=positive_int, default=3, help="records on/off pairs, order alternating (default 3)")
    p.add_argument("--overhead-seconds", type=float, default=30.0,
                   help="length of each one-client run of a pair (default 30)")
    p.add_argument("--interleaved-seconds", type=float, default=60.0,
                   help="interleaved: one-client load per side, in segments (default 60)")
    p.add_argument("--segment-seconds", type=float, default=5.0,
                   help="interleaved: length of a segment; the sides alternate ABBA (default 5)")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.set_defaults(func=_cmd_records_bench)

    p = sub.add_parser("fanout-bench", help="rpe-pad train on N demo categories one after another, then fanned "
                       "out on a local Ray: both wall times and their ratio (issue 25's bar: <= 1.2); run it alone")
    p.add_argument("--out", type=folder, default=Path("fanout_bench"), help="folder for the categories (reused) and "
                   "both runs' bundles (replaced; default ./fanout_bench)")
    p.add_argument("--categories", type=positive_int, default=3, help="synthetic categories, seeds 0.. (default 3)")
    p.add_argument("--preset", default="demo", choices=list(registry.PRESETS), help="default demo")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.set_defaults(func=_cmd_fanout_bench)

    p = sub.add_parser("ablation", help="the paper's ablation (RVSS, IRPRN refinement, MPTS on and off) on a category")
    p.add_argument("category_dir", type=Path, help="the category rpe-pad train was run on")
    p.add_argument("bundles", type=Path, help="the bundles folder of that run (its .work/<category> splats and calibration are reused)")
    p.add_argument("--preset", default="cpu", choices=list(registry.PRESETS), help="training preset (default cpu)")
    p.add_argument("--variants", nargs="+", default=None,
                   choices=["none", "rvss", "rvss_irprn", "rvss_mpts", "all"], help="default: all five")
    p.add_argument("--poses", nargs="+", default=["rpe"], choices=registry.pose_modes(lab=True),
                   help="pose modes to evaluate each variant in (default rpe)")
    p.add_argument("--irprn-epochs", type=positive_int, default=None, help="IRPRN epochs (default: the preset's)")
    p.add_argument("--out", type=folder, default=None, help="report folder (default BUNDLES/reports/ablation)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_ablation)

