"""The `rpe-pad` command: subcommands, exit codes, and the demo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rpe_pad.cli import main


def test_synth_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cat"
    assert main(["synth", str(out), "--seed", "5", "--size", "32", "--train-views", "3", "--test-views", "4"]) == 0
    assert (out / "train" / "transforms.json").is_file() and (out / "synth.json").is_file()
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert main(["show", str(out), "--sheet", str(sheet)]) == 0
    summary = json.loads(capsys.readouterr().out.split("contact sheet")[0])
    assert summary["train_views"] == 3 and summary["image_size"] == [32, 32]
    assert sum(summary["test_views"].values()) == 4
    assert sheet.stat().st_size > 1000


def test_user_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "x").write_text("x")
    assert main(["synth", str(tmp_path / "occupied")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "y"), "--size", "0"])
    assert exc.value.code == 2


def test_docker_smoke_refuses_cuda_architectures_for_the_cpu_image(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "docker-smoke", "--out", str(tmp_path / "s"), "--cuda-archs", "9.0"]) == 2
    assert "--cuda-archs is for --target gpu" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before any step


@pytest.mark.parametrize("argv, option", [
    (["synth", "OUT", "--size", "100000"], "--size"),  # would ask for hundreds of GB: refused by the bound
    (["synth", "OUT", "--seed", "-1"], "--seed"),
    (["show", "OUT", "--size", "100000"], "--size"),
    (["serve", "--port", "99999"], "--port"),
    (["serve", "--port", "-1"], "--port"),
    (["inspect", "B", "x.png", "--threshold", "nan"], "--threshold"),
    (["inspect", "B", "x.png", "--threshold", "-1"], "--threshold"),
    (["demo", "--out", ""], "--out"),  # an empty path would be the current folder
    (["train", "C", "--out", " "], "--out"),
])
def test_out_of_range_arguments_are_argument_errors(argv: list[str], option: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err


def test_what_the_machine_refuses_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file where a folder goes, or a folder that cannot be written: exit 2 and one line
    naming the path, not a traceback."""
    afile = tmp_path / "afile.png"
    afile.write_bytes(b"x")
    # An output folder that is a file, or lies under one: refused as the arguments are read,
    # not when the work is done (selfcheck and evaluate scored everything first).
    for argv in (["synth", str(afile)], ["synth", str(afile / "below")], ["demo", "--out", str(afile / "d")],
                 ["selfcheck", str(tmp_path), "--bundles", str(tmp_path), "--out", str(afile)],
                 ["inspect", str(tmp_path), str(afile), "--out", str(afile / "o")],
                 ["lab", "evaluate", str(tmp_path), str(tmp_path), "--out", str(afile)]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.strip().splitlines()[-1].startswith(f"rpe-pad {argv[0]}"), argv
        assert err.strip().splitlines()[-1].endswith(f"{afile} is a file, not a folder")  # after the usage
    with pytest.raises(SystemExit) as exc:  # NaN intrinsics passed here and failed image by image
        main(["inspect", str(tmp_path), str(afile), "--intrinsics", "nan,1,1,1"])
    assert exc.value.code == 2 and "must be finite with fx, fy > 0" in capsys.readouterr().err
    assert main(["show", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["serve", "--bundles", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["show", str(tmp_path), "--sheet", str(tmp_path)]) == 2
    assert "give the path of an image file to write" in capsys.readouterr().err
    assert main(["show", str(tmp_path), "--sheet", str(afile / "sheet.png")]) == 2  # before reading any photo
    assert f"{afile} is a file, not a folder" in capsys.readouterr().err


def test_an_unreadable_folder_is_left_to_the_command_to_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Path.exists`` raises on a folder that cannot be read; the argument check (run outside
    the CLI's error handling) then printed a traceback where the command said "Permission denied"."""
    from rpe_pad.argtypes import folder

    def denied(self) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", denied)
    assert folder(str(tmp_path / "locked" / "out")) == tmp_path / "locked" / "out"


def test_a_machine_failure_exits_1_in_one_line_or_with_its_traceback_on_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import training.synth

    def failing(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(training.synth, "generate", failing)
    assert main(["synth", str(tmp_path / "s")]) == 1  # not the user's mistake: not 2
    err = capsys.readouterr().err
    assert err.strip() == "rpe-pad synth: error: [Errno 5] Input/output error (RPEPAD_DEBUG=1 shows where)"
    monkeypatch.setenv("RPEPAD_DEBUG", "1")
    with pytest.raises(OSError, match="Input/output"):
        main(["synth", str(tmp_path / "s")])


def test_serve_refuses_one_bundle_for_its_parent_and_bad_settings(tiny_release: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--bundles", str(tiny_release)]) == 2
    assert f"serve its parent folder (--bundles {tiny_release.parent})" in capsys.readouterr().err
    assert main(["serve", "--bundles", "s3://"]) == 2  # named as the user gave it: the option
    assert capsys.readouterr().err.startswith("rpe-pad serve: error: --bundles:")
    assert main(["serve", "--bundles", ""]) == 2  # it served the current folder
    assert "--bundles: Value error, is empty" in capsys.readouterr().err
    monkeypatch.setenv("RPEPAD_DRAIN_S", "abc")
    assert main(["serve", "--bundles", str(tiny_release.parent)]) == 2
    err = capsys.readouterr().err
    assert "RPEPAD_DRAIN_S:" in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("RPEPAD_DRAIN_S")
    monkeypatch.setenv("RPEPAD_QUEUE_SIZE", "4")  # two settings at odds: named by what they are
    assert main(["serve", "--bundles", str(tiny_release.parent)]) == 2
    assert capsys.readouterr().err.startswith("rpe-pad serve: error: settings: Value error, max_files_per_batch (16)")


def test_serve_refuses_an_address_it_cannot_listen_on_in_one_line(tiny_release: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A port another process holds was six lines of uvicorn's log and exit 3, after every
    bundle had loaded; now one line naming the option, exit 2, before any bundle is read."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--bundles", str(tiny_release.parent), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.strip() == (f"rpe-pad serve: error: --port {port}: 127.0.0.1:{port} is in use by another "
                               "process (stop it, or choose another --port)")
    assert main(["serve", "--bundles", str(tiny_release.parent), "--host", "192.0.2.77"]) == 2  # TEST-NET-1
    assert "--host 192.0.2.77: not an address of this machine" in capsys.readouterr().err


def test_the_address_check_binds_as_the_server_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn's asyncio server binds every address a host resolves to, an IPv6 one for IPv6
    alone: a name whose second address is taken is refused, and ``::`` is free while another
    process holds the port on IPv4's ``0.0.0.0``."""
    import socket

    from service.server import check_address

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        real = socket.getaddrinfo

        def both(host, *args, **kwargs):  # a name listed as ::1 first, then 127.0.0.1
            if host != "both.test":
                return real(host, *args, **kwargs)
            return real("::1", *args, **kwargs) + real("127.0.0.1", *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", both)
        with pytest.raises(ValueError, match=f"--port {port}: both.test:{port} is in use"):
            check_address("both.test", port)
    with socket.socket() as wildcard:
        wildcard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen()
        check_address("::", wildcard.getsockname()[1])  # IPv6 alone: not in use


def test_inspect_refuses_a_threshold_the_bundle_cannot_use_before_any_image(
        tiny_release: Path, tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--threshold`` at or below the bundle's lowest normal score was refused image by image
    (exit 1); it is the option's mistake: one line, exit 2, no overlay folder."""
    from models.calibration import Calibration

    floor = Calibration.model_validate_json((tiny_release / "calibration" / "calibration.json").read_text()).score_floor
    image = min((tiny_synth / "test" / "good").glob("*.png"))
    out = tmp_path / "o"
    assert main(["inspect", str(tiny_release), str(image), "--threshold", str(floor / 2), "--out", str(out),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rpe-pad inspect: error: --threshold: threshold must be a number above") and not out.exists()
    assert len(err.strip().splitlines()) == 1


def test_output_folders_are_made_first_and_a_closed_pipe_is_quiet(tiny_synth: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``show --sheet`` into a folder not there yet makes it (it ended in a bare ``[Errno 2]``
    after every photo was read); one that cannot be made is named by its option, before the
    work; and ``rpe-pad show ... | head`` ends quietly, as a command that SIGPIPE ended."""
    sheet = tmp_path / "new" / "deeper" / "sheet.png"
    assert main(["show", str(tiny_synth), "--size", "32", "--sheet", str(sheet)]) == 0 and sheet.is_file()
    capsys.readouterr()
    assert main(["show", str(tiny_synth), "--sheet", "/proc/rpepad-no/sheet.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rpe-pad show: error: --sheet /proc/rpepad-no/sheet.png: the folder /proc/rpepad-no "
                          "cannot be made (") and "Loading" not in err
    proc = subprocess.Popen([sys.executable, "-m", "rpe_pad.cli", "show", str(tiny_synth), "--size", "32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the summary is written
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Broken pipe" not in stderr and b"Traceback" not in stderr, stderr


def test_inspect_given_the_bundles_folder_names_a_bundle_in_it(tiny_release: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "q.png"
    image.write_bytes(b"not read")
    assert main(["inspect", str(tiny_release.parent), str(image)]) == 3
    assert f"it holds bundles: give one of them ({tiny_release}, ...)" in capsys.readouterr().err


def test_inspect_on_cuda_without_a_gpu_is_a_user_error(tiny_release: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    image = tmp_path / "q.png"
    image.write_bytes(b"not read")
    assert main(["inspect", str(tiny_release), str(image), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert main(["serve", "--bundles", str(tiny_release.parent), "--device", "cuda"]) == 2  # before it starts
    assert "no CUDA GPU" in capsys.readouterr().err


def test_inspect_refuses_an_image_too_small_to_inspect(tiny_release: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (2, 2), (200, 30, 30)).save(tiny)
    assert main(["inspect", str(tiny_release), str(tiny), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    assert "2 x 2 is too small (at least 32 px a side)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # every image refused: no empty overlay folder left behind
    (tmp_path / "kept").mkdir()  # but a folder that was there before stays
    assert main(["inspect", str(tiny_release), str(tiny), "--out", str(tmp_path / "kept"), "--device", "cpu"]) == 1
    assert (tmp_path / "kept").is_dir() and "too small" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # refused as the arguments are read
        main(["inspect", str(tiny_release), str(tiny), "--out", str(tiny), "--device", "cpu"])
    assert exc.value.code == 2 and f"--out: {tiny} is a file, not a folder" in capsys.readouterr().err


def test_inspect_refuses_a_missing_image_before_loading_the_bundle(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped path is the user's mistake: exit 2 in one line naming it, before the bundle
    (here none at all) is loaded, not ``[Errno 2]`` and exit 1 after it."""
    missing = tmp_path / "nonexistent.png"
    assert main(["inspect", str(tmp_path / "no_bundle"), str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"rpe-pad inspect: error: {missing}: no such image file"
    assert main(["inspect", str(tmp_path / "no_bundle"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rpe-pad inspect: error: {tmp_path}: a folder, not an image") and len(err.splitlines()) == 1


def test_inspect_reports_each_image_it_does_not_read_and_inspects_the_others(
        tiny_release: Path, tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Decompression bombs (PNG, BMP and JPEG headers claiming 20000 x 20000 or 65500 x 65500
    pixels), what the service answers 415 or 422 (an icon, a GIF, an animated PNG) and a fuzzed
    TIFF Pillow raises TypeError on, a text file named .png: one line each, and the images after them are still
    inspected, as the README says (exit 1)."""
    from PIL import Image

    from tests import hostile

    bad = {"bomb.png": hostile.png_bomb(), "bomb.bmp": hostile.bmp_bomb(), "bomb.jpg": hostile.jpeg_bomb()}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "icon.ico")
    hostile.frames(tmp_path / "anim.gif", "GIF")
    hostile.frames(tmp_path / "anim.png", "PNG")
    shutil.copy(Path(__file__).parent / "data" / "hostile" / "strip_offsets_text.tiff", tmp_path / "odd.tiff")
    (tmp_path / "notes.png").write_text("not an image\n")
    query = min((tiny_synth / "test" / "good").glob("*.png"))
    refused = ["bomb.png", "bomb.bmp", "bomb.jpg", "icon.ico", "anim.gif", "anim.png", "odd.tiff", "notes.png"]
    out = tmp_path / "o"
    assert main(["inspect", str(tiny_release), *(str(tmp_path / n) for n in refused), str(query), "--out", str(out),
                 "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == len(refused) and "Traceback" not in captured.err
    for name, line in zip(refused, lines):
        assert line.startswith(f"{tmp_path / name}: error: ")
    assert "declares 400000000 pixels, more than the 25000000" in lines[0]
    assert "declares 4290250000 pixels" in lines[2]
    assert "format ICO is not read" in lines[3] and "format GIF is not read" in lines[4]
    assert "a PNG of 3 frames" in lines[5] and "cannot decode the image (TypeError: " in lines[6]  # a fuzzed TIFF
    assert lines[7].endswith("notes.png: error: not a decodable image (give PNG, JPEG, WebP, BMP or TIFF)")  # text
    assert f"{query}: " in captured.out and "score" in captured.out  # the good query after them was inspected
    assert [p.name for p in out.iterdir()] == [f"{query.stem}_overlay.png"]


def test_show_and_train_refuse_a_bomb_and_impossible_cameras_in_one_line(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A training image whose header claims 20000 x 20000 pixels, a field of view of 1e-9 rad
    and a camera 1e30 away: `show` and `train` exit 2 in one line naming the file (and frame),
    before any training (these passed `show`, and crashed `train` with a traceback)."""
    from tests import hostile

    cat = tmp_path / "cat"
    assert main(["synth", str(cat), "--seed", "1", "--size", "32", "--train-views", "4", "--test-views", "0"]) == 0
    capsys.readouterr()
    image = cat / "train" / "good" / "001.png"
    original = image.read_bytes()
    image.write_bytes(hostile.png_bomb())
    for command in (["show", str(cat)], ["train", str(cat), "--out", str(tmp_path / "B"), "--quiet"]):
        assert main(command) == 2
        err = capsys.readouterr().err.rsplit("\r", 1)[-1]  # after show's progress bar
        assert err.startswith(f"rpe-pad {command[0]}: error: {image}: its header declares 400000000 pixels")
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "B").exists()
    image.write_bytes(original)
    transforms = cat / "train" / "transforms.json"
    good = json.loads(transforms.read_text())
    for edit, message in ((lambda d: d.update(camera_angle_x=1e-9), "camera_angle_x: "),
                          (lambda d: d["frames"][2]["transform_matrix"][1].__setitem__(3, 1e30), "frame 2 ")):
        data = json.loads(json.dumps(good))
        edit(data)
        transforms.write_text(json.dumps(data))
        for command in (["show", str(cat)], ["train", str(cat), "--out", str(tmp_path / "B"), "--quiet"]):
            assert main(command) == 2
            err = capsys.readouterr().err.rsplit("\r", 1)[-1]
            assert err.startswith(f"rpe-pad {command[0]}: error: {transforms}: ") and message in err
            assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "B").exists()


def test_console_script_help() -> None:
    result = subprocess.run([sys.executable, "-m", "rpe_pad.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("synth", "show", "demo"):
        assert command in result.stdout


@pytest.mark.slow(seconds=17)
def test_demo_runs_the_whole_product(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's flow (same code as `make demo`) with the demo preset shrunk to test size
    (the fan-out test's sizes: 32 px views, a 60-step fit, a 1-epoch IRPRN at 112 px)."""
    from dataclasses import replace

    from models.irprn import IRPRNConfig
    from tests.conftest import TINY_IRPRN, TINY_SPLATS
    from training import irprn, pipeline, splats
    from training.calibrate import CalibConfig
    from training.demo import run_demo
    from training.synth import SynthConfig

    monkeypatch.setitem(splats.PRESETS, "demo", splats.preset("demo", **{**TINY_SPLATS, "image_size": None,
                                                                        "iterations": 60, "refine_stop": 50}))
    monkeypatch.setitem(irprn.PRESETS, "demo", irprn.preset("demo", **{**TINY_IRPRN, "epochs": 1,
                                                                      "model": replace(IRPRNConfig(), input_size=112)}))
    monkeypatch.setitem(pipeline.CALIBRATION, "demo", CalibConfig(max_views=8))
    synth = SynthConfig(seed=0, size=32, train_views=6, test_views=4)
    assert run_demo(tmp_path / "demo", synth) == 0
    out = capsys.readouterr().out
    bundle = tmp_path / "demo" / "bundles" / "synthetic_lego"
    assert (bundle / "manifest.json").is_file() and "| bundle |" in out
    # Two queries inspected through the loaded bundle, each with a verdict and an overlay.
    verdicts = [line for line in out.splitlines() if "score" in line and "overlay:" in line]
    assert len(verdicts) == 2 and all(sum(f": {w}" in v for w in ("ANOMALOUS", "NORMAL", "REVIEW")) == 1 for v in verdicts)
    # A query the pose check refuses says why.
    assert all("px from the query" in v or "silhouettes" in v or "no object" in v for v in verdicts if ": REVIEW" in v)
    assert len(list((tmp_path / "demo" / "inspections").glob("*.png"))) == 2
    metrics = json.loads((tmp_path / "demo" / "evaluation" / "metrics.json").read_text())
    assert metrics["n_queries"] == 4 and metrics["pose_mode"] == "rpe+refine" and metrics["bundle"] == "verified bundle"
    # A second run reuses the category and every stage instead of redoing them.
    assert run_demo(tmp_path / "demo", synth) == 0
    out = capsys.readouterr().out
    assert "reusing" in out and out.count("skipped (valid output reused)") == 7


def test_bench_render_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["lab", "bench-render", "--gaussians", "500", "--size", "32", "--repeats", "2", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_gaussians"] == 500 and result["size"] == 32
    assert 0 < result["cpu"]["forward_s_median"] < 10 and result["cpu"]["forward_backward_s_median"] > 0
    assert result["machine"]["cpu_count"] >= 1


def test_train_rejects_unknown_stage(tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tiny_synth), "--out", str(tmp_path), "--stages", "splats,warp", "--quiet"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_and_selfcheck_take_a_device(tiny_bundle: Path, tiny_synth: Path, tiny_heldout_bundles: Path,
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--device cpu`` reaches the stages that render (the report says where); ``cuda``
    without a GPU is refused before anything runs, and Ray's tasks take their own share."""
    import torch

    bundles = tmp_path / "B"
    shutil.copytree(tiny_bundle, bundles / ".work" / tiny_bundle.name)
    assert main(["train", str(tiny_synth), "--out", str(bundles), "--preset", "demo", "--stages", "calibration",
                 "--quiet", "--device", "cpu"]) == 0
    report = json.loads((bundles / ".work" / tiny_bundle.name / "reports" / "calibration.json").read_text())
    assert report["device"] == "cpu"
    capsys.readouterr()
    out = tmp_path / "sc"
    assert main(["selfcheck", str(tiny_synth), "--bundles", str(tiny_heldout_bundles), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert json.loads((out / "selfcheck.json").read_text())["device"] == "cpu"
    assert main(["train", str(tiny_synth), str(tiny_synth), "--out", str(tmp_path / "R"), "--device", "cpu"]) == 2
    assert "on Ray each task takes the GPU share" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", str(tiny_synth), "--out", str(tmp_path / "C"), "--device", "cuda", "--quiet"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "C").exists()
        assert main(["selfcheck", str(tiny_synth), "--bundles", str(tiny_heldout_bundles), "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_train_refuses_a_folder_name_no_bundle_can_take_before_training(tiny_synth: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A category folder named ``.hidden`` was refused only at the bundle stage, after all the
    training; now at once, before any stage runs."""
    hidden = tmp_path / ".hidden"
    shutil.copytree(tiny_synth, hidden)
    assert main(["train", str(hidden), "--out", str(tmp_path / "B"), "--quiet"]) == 2
    assert "must be a plain directory name" in capsys.readouterr().err
    assert not (tmp_path / "B").exists()  # nothing was trained


def _commands(parser) -> dict:
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_the_product_commands_come_first_and_stay_small() -> None:
    """At most 9 product commands plus the lab group, and at most 35 options among them (22
    after the redesign, docs/ARCHITECTURE.md, plus the self-check's two, prepare's three,
    train's --ray for the fan-out on a Ray cluster (its list of categories is positional or an
    @FILE, no option), --device on train and selfcheck as inspect and serve have it,
    train's --false-alarm-rate, the stated rate issue 22 asks to be a setting, session 43, and
    session 52's `records verify`, an auditor's check of the records' seals, with its four)."""
    from rpe_pad.cli import build_parser

    commands = _commands(build_parser())
    product = [name for name in commands if name != "lab"]
    assert product == ["synth", "show", "prepare", "train", "selfcheck", "inspect", "serve", "records", "demo"]
    assert len(product) <= 9
    assert list(_commands(commands["records"])) == ["verify"]
    commands = {**commands, "records": _commands(commands["records"])["verify"]}
    options = {name: [a.option_strings[-1] for a in commands[name]._actions
                      if a.option_strings and a.option_strings[-1] != "--help"] for name in product}
    assert sum(len(v) for v in options.values()) <= 35, options
    lab = _commands(commands["lab"])
    assert {"evaluate", "bench", "bench-render", "ablation", "pose-sweep", "sensitivity", "loadtest", "train",
            "verify-sweep", "scorer-study", "fidelity-study", "gpu-check", "screenshots", "records-bench", "onboard-check",
            "fanout-bench", "docker-smoke", "fleet-loadtest", "validation-split"} == set(lab)
    assert "--rvss-m" not in options["train"] and "--rvss-m" in [a.option_strings[-1] for a in lab["train"]._actions
                                                                 if a.option_strings]


def test_choices_come_from_the_registry() -> None:
    """Pose modes and presets are named once (models.registry): the CLI, the service
    settings and the training presets read them."""
    from models import registry
    from rpe_pad.cli import build_parser
    from service.settings import Settings
    from training import irprn, pipeline, splats

    commands = _commands(build_parser())
    choices = {a.dest: a.choices for a in commands["inspect"]._actions if a.choices}
    assert tuple(choices["pose"]) == registry.pose_modes()
    assert tuple(next(a.choices for a in commands["train"]._actions if a.dest == "preset")) == tuple(registry.PRESETS)
    assert tuple(pipeline.PRESETS) == tuple(registry.PRESETS)
    for command in ("train", "selfcheck", "inspect", "serve"):  # one list of devices
        assert next(a.choices for a in commands[command]._actions if a.dest == "device") == list(registry.DEVICES)
    assert tuple(registry.DEVICES) == Settings.model_fields["device"].annotation.__args__
    from training.prepare import sfm

    prepare_choices = next(a.choices for a in commands["prepare"]._actions if a.dest == "camera_model")
    assert tuple(prepare_choices) == tuple(registry.CAMERA_MODELS) == sfm.CAMERA_MODELS
    assert set(splats.PRESETS) == set(irprn.PRESETS) == set(registry.PRESETS)  # each stage has every preset
    lab_eval = _commands(commands["lab"])["evaluate"]
    assert set(next(a.choices for a in lab_eval._actions if a.dest == "pose")) == {*registry.pose_modes(lab=True),
                                                                                   "patchcore"}
    assert Settings(pose="rpe").pose == "rpe" and Settings().pose is None  # None: each bundle's own setting
    with pytest.raises(ValueError, match="not available"):
        Settings(pose="oracle")  # a lab mode is not the service's


def test_a_product_only_install_has_no_lab_group(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The service images ship models, training, service and rpe_pad only: the command still
    builds its parser, and `rpe-pad lab` says the lab is not installed."""
    from rpe_pad.cli import build_parser

    for name in [m for m in sys.modules if m == "lab" or m.startswith("lab.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lab", None)  # import lab -> ModuleNotFoundError
    commands = _commands(build_parser())
    assert {"train", "inspect", "serve", "lab"} <= set(commands)
    from rpe_pad.cli import main

    assert main(["lab", "evaluate", "x", "y"]) == 2  # one clear line, not a parser error
    assert "not installed" in capsys.readouterr().err
