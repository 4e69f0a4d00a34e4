"""The benchmark scripts stay runnable: a tiny configuration, no timing assertions."""

from benchmarks import freezing


def test_freezing_benchmark_runs_tiny(capsys):
    tiny = ["--width", "16", "--depth", "2", "--heads", "2", "--tokens", "4", "--batch", "2", "--iters", "1"]
    results = freezing.main([*tiny, "--last-n", "1"])
    assert len(results) == 4 and all(ms > 0 for ms in results.values())
    assert "x full" in capsys.readouterr().out


def test_loading_benchmark_runs_tiny(capsys):
    from benchmarks import loading

    results = loading.main(["--depth", "1", "--repeats", "1"])
    assert set(results) == {"safetensors", "jtl"} and all(r["seconds"] > 0 for r in results.values())
    assert "jtl.weights.load_pretrained" in capsys.readouterr().out
