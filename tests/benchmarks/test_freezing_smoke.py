"""The benchmark scripts stay runnable: a tiny configuration, no timing assertions."""

from benchmarks import freezing


def test_freezing_benchmark_runs_tiny(capsys):
    tiny = ["--width", "16", "--depth", "2", "--heads", "2", "--tokens", "4", "--batch", "2", "--iters", "1"]
    results = freezing.main([*tiny, "--last-n", "1"])
    assert len(results) == 4 and all(ms > 0 for ms in results.values())
    assert "x full" in capsys.readouterr().out
