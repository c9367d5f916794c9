"""The load generator's command line refuses what it cannot send, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from emm_ray.serve.loadgen import LoadResult, main


def test_a_body_that_is_not_json_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    body = tmp_path / "request.json"
    body.write_text("{records: oops")
    with pytest.raises(SystemExit) as exited:
        main(["http://127.0.0.1:9/predict", "--body", str(body), "--closed", "1"])
    assert exited.value.code == 2
    assert f"--body {body}: not a JSON object" in capsys.readouterr().err


def test_no_load_asked_is_an_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["http://127.0.0.1:9/healthz"])
    assert "--closed" in capsys.readouterr().err


def test_an_unreachable_server_is_counted_not_raised() -> None:
    import asyncio

    from emm_ray.serve.loadgen import closed_loop

    result = asyncio.run(closed_loop("http://127.0.0.1:9/healthz", [None], 1, 0.2, warmup_s=0))
    assert result.errors > 0 and not result.latencies_ms
    assert result.summary()["requests_per_s"] == 0.0
    assert isinstance(result, LoadResult)
