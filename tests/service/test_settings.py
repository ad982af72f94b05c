"""The service's settings (``service/settings.py``): what is refused at start, with the reason
on one line and exit status 2 from ``rpe-pad serve``, and what is cleaned."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from rpe_pad.cli import main
from service.app import create_app
from service.settings import MAX_AGE_DAYS, MAX_DRAIN_S, MAX_POLL_S, MAX_RETRY_AFTER_S, MAX_WAIT_MS, Settings

# Each duration: finite, and at most its documented bound (docs/SERVICE.md).
BOUNDS = {"MAX_WAIT_MS": MAX_WAIT_MS, "DRAIN_S": MAX_DRAIN_S, "BUNDLES_POLL_S": MAX_POLL_S,
          "RETRY_AFTER_S": MAX_RETRY_AFTER_S, "RECORDS_MAX_AGE_DAYS": MAX_AGE_DAYS}
UNBOUNDED = [(name, value) for name in BOUNDS for value in ("inf", "1e300", "nan", "-inf")]
UNBOUNDED += [(name, str(int(bound) + 1)) for name, bound in BOUNDS.items()]
UNBOUNDED += [("RECORDS_MAX_AGE_DAYS", "1000000")]


@pytest.mark.parametrize("name, value", UNBOUNDED)
def test_a_duration_that_is_endless_or_out_of_range_is_refused(name: str, value: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``RPEPAD_MAX_WAIT_MS=inf`` was taken, and each batch then slept forever (SIGTERM could
    not stop it); ``RPEPAD_RECORDS_MAX_AGE_DAYS=1000000`` made every retention run fail."""
    monkeypatch.setenv(f"RPEPAD_{name}", value)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    assert [e["loc"] for e in info.value.errors()] == [(name.lower(),)]


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_each_duration_is_taken_up_to_its_bound(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"RPEPAD_{name}", str(int(BOUNDS[name])))
    assert getattr(Settings(_env_file=None), name.lower()) == BOUNDS[name]


@pytest.mark.parametrize("name, value, problem", [
    ("MAX_WAIT_MS", "inf", "finite"),
    ("DRAIN_S", "1e300", "less than or equal to 3600"),
    ("BUNDLES_POLL_S", "inf", "finite"),
    ("RECORDS_MAX_AGE_DAYS", "1000000", "less than or equal to 36500"),
    ("API_KEY", "s3cret\twith a tab", "U+0009"),
])
def test_serve_refuses_a_bad_setting_in_one_line_with_status_2(name: str, value: str, problem: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    def serving(*args, **kwargs):
        raise AssertionError("the bad setting was taken: the service would start")

    monkeypatch.setattr("service.server.run", serving)
    monkeypatch.chdir(tmp_path)  # no .env but the test's
    monkeypatch.setenv(f"RPEPAD_{name}", value)
    assert main(["serve", "--bundles", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rpe-pad serve: error: RPEPAD_{name}:") and problem in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "s3cret" not in err  # a key is never echoed


# ------------------------------------------------------------ the API key


@pytest.mark.parametrize("text", ["s3cret\n", " s3cret ", "\ts3cret\r\n"])
def test_the_api_key_is_matched_without_its_surrounding_whitespace(text: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A key from ``kubectl create secret --from-file`` ends in the file's newline, which no
    client can send (HTTP strips a header's surrounding whitespace): it used to match nothing."""
    monkeypatch.setenv("RPEPAD_API_KEY", text)
    settings = Settings(bundles=tmp_path, device="cpu", records=False, warmup=False, _env_file=None)
    assert settings.api_key.get_secret_value() == "s3cret"
    with TestClient(create_app(settings)) as client:
        r = client.get("/categories", headers={"X-API-Key": "s3cret"})
        assert r.status_code != 401, r.text  # let in (nothing is loaded from the empty folder: a 503 says so)
        assert client.get("/categories", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/categories").status_code == 401


@pytest.mark.parametrize("text, problem", [
    ("\n", "only whitespace"),  # an empty secret file: refused, not a service without a key
    ("   ", "only whitespace"),
    ("s3\x00cret", "U+0000"),
    ("s3cret\nmore", "U+000A"),  # a newline inside is not surrounding whitespace
    ("s3\x7fcret", "U+007F"),
    ("s3crét", "U+00E9"),  # not ASCII: a client sends other bytes than the service compares
])
def test_an_api_key_no_header_can_carry_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ValidationError, match="api_key") as info:
        Settings(api_key=text, _env_file=None)  # an environment variable cannot hold a NUL: given here
    assert problem in str(info.value)


def test_an_empty_api_key_is_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose files pass ``RPEPAD_API_KEY: ${RPEPAD_API_KEY:-}``: empty when unset."""
    monkeypatch.setenv("RPEPAD_API_KEY", "")
    assert Settings(_env_file=None).api_key is None
    assert Settings(api_key="a key with spaces", _env_file=None).api_key.get_secret_value() == "a key with spaces"


def test_a_batch_larger_than_the_queue_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 16 files a batch and a queue of 4, every full batch was answered 503 "retry later" forever."""
    monkeypatch.setenv("RPEPAD_QUEUE_SIZE", "4")
    with pytest.raises(ValidationError, match="max_files_per_batch .16. is larger than queue_size .4."):
        Settings(_env_file=None)
    monkeypatch.setenv("RPEPAD_MAX_FILES_PER_BATCH", "4")
    assert Settings(_env_file=None).queue_size == 4
