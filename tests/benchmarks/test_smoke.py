"""The benchmark scripts stay runnable: a tiny configuration, no timing assertions."""

import numpy as np

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


def test_feature_cache_benchmark_runs_tiny(capsys):
    from benchmarks import feature_cache

    results = feature_cache.main(
        ["--model", "vit-testing", "--image-size", "16", "--examples", "32", "--batch", "16", "--repeats", "1"]
    )
    assert results["ratio"] == results["backbone_seconds"] / results["cached_seconds"]
    assert "x faster" in capsys.readouterr().out


def test_transfer_methods_benchmark_runs_tiny(tmp_path, capsys, monkeypatch):
    from benchmarks import transfer_methods

    monkeypatch.setattr(transfer_methods, "PEFT", {"LoRA r=4": "lora"})
    tiny = ["--seeds", "0", "--steps", "3", "--source-steps", "3", "--workdir", str(tmp_path)]
    tables = transfer_methods.main([*tiny, "--section", "lora"])
    row = tables["lora"][2].split(" | ")
    assert row[0] == "| LoRA r=4" and row[2].startswith("1,189 (")  # 2 blocks x (query, value) x 2 x 32 x 4 + head
    assert "LoRA r=4" in capsys.readouterr().out
    scores = transfer_methods.scores_of(tmp_path / "source-steps3" / "export")
    assert set(scores) == {"LogME", "H-score", "NCE", "LEEP"} and all(np.isfinite(v) for v in scores.values())


def test_sentence_transfer_example_runs(capsys):
    from benchmarks import sentence_transfer

    results = sentence_transfer.main(["--seeds", "0", "--per-class", "4"])
    assert len(results["MiniLM features + linear classifier"]) == 1
    assert "never occur in any training sentence" in capsys.readouterr().out


def test_domain_adaptation_benchmark_runs_tiny(tmp_path, capsys):
    from benchmarks import domain_adaptation

    results = domain_adaptation.main(["--seeds", "0", "--steps", "2", "--methods", "cdan", "--workdir", str(tmp_path)])
    ((run,),) = results.values()
    assert 0.0 <= run["selected/dev/accuracy"] <= run["selected/oracle/accuracy"] <= 1.0
    assert "| CDAN+E |" in capsys.readouterr().out


def test_multitask_benchmark_runs_tiny(tmp_path, capsys, monkeypatch):
    from benchmarks import multitask

    monkeypatch.setattr(multitask, "TASKS", {"value": "mse"})  # the single-task runs: only this one
    results = multitask.main(["--seeds", "0", "--steps", "2", "--weightings", "equal", "--workdir", str(tmp_path)])
    (multi,), (single,) = results["equal"]["runs"], results["single task"]["runs"]
    assert set(multi) == set(single) == {"value"}
    assert results["equal"]["delta_m"] == [multitask.relative_change(multi, single)]
    assert "| equal |" in capsys.readouterr().out
