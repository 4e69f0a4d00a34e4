"""The benchmark scripts stay runnable: a tiny configuration, no timing assertions."""

import os

import numpy as np

from benchmarks import freezing


def test_freezing_benchmark_runs_tiny(capsys):
    tiny = [
        "--model",
        "vit-ti16",
        "--image-size",
        "32",
        "--batch",
        "2",
        "--iters",
        "1",
        "--overrides",
        '{"num_layers": 2}',
    ]
    results = freezing.main([*tiny, "--last-n", "1"])
    assert len(results) == 4 and all(ms > 0 for ms in results.values())
    assert "x full" in capsys.readouterr().out


def test_sharding_benchmark_runs_tiny(capsys):
    from benchmarks import sharding

    results = sharding.main(["--models", "vit-testing", "--image-size", "16", "--min-size", "0", "--devices", "4"])
    (_, _, replicated), (_, devices, fsdp) = results["vit-testing"]
    # The compiled step holds what the shardings say, about a quarter of the replicated state.
    assert devices == 4 and fsdp["state_bytes"] == fsdp["planned_bytes"] < replicated["state_bytes"] / 3.9
    assert "| vit-testing | FSDP | 4 |" in capsys.readouterr().out


def test_loading_benchmark_runs_tiny(capsys):
    from benchmarks import loading

    results = loading.main(["--depth", "1", "--repeats", "1"])
    assert set(results) == {"vit", "dinov2", "roberta"}
    assert all(set(r) == {"safetensors", "jtl"} and r["jtl"]["seconds"] > 0 for r in results.values())
    assert capsys.readouterr().out.count("jtl.weights.load_pretrained") == 3


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


def test_vs_pytorch_runs_bert_and_the_xla_attempts(capsys, monkeypatch):
    from benchmarks import vs_pytorch

    tiny = ["--seq-len", "8", "--batch", "2", "--warmup", "0", "--iters", "1"]
    results = vs_pytorch.main(["--models", "bert-tiny", "--modes", "lora", "last2", *tiny])
    row = results["bert-tiny"]["lora"]
    assert row["jtl"] > 0 and row["torch"] > 0 and row["flops"] > 0
    assert "torch/jtl" in capsys.readouterr().out

    monkeypatch.setattr(vs_pytorch, "XLA_ATTEMPTS", {"default": ""})
    attempts = vs_pytorch.main(["--models", "bert-tiny", "--xla-attempts", *tiny])
    assert set(attempts) == {"default"} and attempts["default"]["jtl"] > 0
    assert "XLA CPU options" in capsys.readouterr().out


def test_gpu_script_cpu_smoke_mode():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu.sh"), "--cpu-smoke"],
        env={**os.environ, "PYTHON": sys.executable, "XLA_FLAGS": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "jtl MFU" in done.stdout and "bfloat16" in done.stdout
    lines = done.stdout.splitlines()
    assert {line.split()[0] for line in lines if line.startswith(("full ", "lora "))} == {"full", "lora"}
    # The sharded variant: FSDP over both devices, with remat and scanned blocks, timed.
    assert lines[-1].startswith("| vit-testing | FSDP | 2 |") and lines[-1].endswith("| n/a (CPU) |")


def test_input_pipeline_benchmark_runs_tiny(capsys):
    from benchmarks import input_pipeline

    tiny = ["--batches", "2", "--iters", "1", "--images", "4", "--image-width", "40", "--image-height", "30"]
    rows = input_pipeline.main([*tiny, "--folder-model", "vit-ti16", "--folder-size", "32", "--folder-batch", "2"])
    assert len(rows) == 3 and all(rate > 0 for row in rows for rate in row[1:])
    assert "together/step" in capsys.readouterr().out


def test_startup_benchmark_runs_tiny(capsys):
    from benchmarks import startup

    tiny = ["--image-size", "32", "--batch", "2", "--repeats", "1", "--overrides", '{"num_layers": 1}']
    medians = startup.main(["--model", "vit-ti16", *tiny])
    for marks in medians.values():
        assert [marks[p] for p in startup.PHASES] == sorted(marks[p] for p in startup.PHASES)
    assert "warm cache" in capsys.readouterr().out


def test_audio_transfer_benchmark_runs_tiny(tmp_path, capsys):
    from benchmarks import audio_transfer

    tiny = ["--seeds", "0", "--steps", "2", "--source-steps", "2", "--source-clips", "1,1", "--target-clips", "1,1"]
    # The registry's ast-testing as it is: 16 frames x 8 mel bins, 2 blocks of width 16.
    results = audio_transfer.main([*tiny, "--model", "{}", "--workdir", str(tmp_path)])
    assert set(results) == {"source", "from scratch", "speech-pretrained, fine-tuned"}
    assert all(len(values) == 1 and 0.0 <= values[0] <= 1.0 for values in results.values())
    assert (tmp_path / "source-steps2" / "export").is_dir()  # the source model, exported once
    assert "| speech-pretrained, fine-tuned |" in capsys.readouterr().out


def test_zero_shot_benchmark_runs_tiny(tmp_path, capsys, monkeypatch):
    from benchmarks import zero_shot

    tower = dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
    monkeypatch.setattr(zero_shot, "VISION", tower)
    monkeypatch.setattr(zero_shot, "TEXT", tower)
    tiny = ["--seeds", "0", "--steps", "2", "--shots", "2", "--pretrain-steps", "2", "--workdir", str(tmp_path)]
    results = zero_shot.main(tiny)
    (run,) = results["runs"]
    assert all(0.0 <= run[f"wise_ft/{a}/eval_ood/accuracy"] <= 1.0 for a in ("0", "0.25", "0.5", "0.75"))
    assert results["table"][2].startswith("| zero-shot (alpha 0) |") and len(results["table"]) == 7
    assert "| fine-tuned (alpha 1) |" in capsys.readouterr().out


def test_peft_methods_benchmark_runs_tiny(capsys):
    from benchmarks import peft_methods

    results = peft_methods.main(["--models", "vit-testing", "--batch", "2", "--iters", "1"])
    rows = {row["method"]: row for row in results["vit-testing"]}
    assert set(rows) == set(peft_methods.methods(vision=True)) and rows["full fine-tuning"]["step_vs_full"] == 1.0
    # 2 blocks x (query, value) x (16 x 8 + 8 x 16) + the 16 x 10 head
    assert rows["LoRA r=8 (q, v)"]["trainable"] == 2 * 2 * 2 * 16 * 8 + 16 * 10 + 10
    # AdamW keeps two float32 moments per trainable parameter, and a step count
    assert rows["LoRA r=8 (q, v)"]["opt_state_bytes"] == 2 * 4 * rows["LoRA r=8 (q, v)"]["trainable"] + 4
    stored, weights = rows["QLoRA NF4 r=8 (all linear)"]["base_bytes"]
    # 2 blocks x 6 kernels: 4 of 16 x 16, 16 x 32, 32 x 16; codes at half a byte, one float32 scale per output
    # (the blocks of inputs are the whole input here: gcd(16 or 32, 64))
    assert weights == 2 * (4 * 16 * 16 + 2 * 16 * 32)
    assert stored == weights // 2 + 4 * 2 * (4 * 16 + 32 + 16)
    assert "quantized kernels" in capsys.readouterr().out


def test_text_peft_benchmark_runs_tiny(capsys):
    from benchmarks import text_peft

    results = text_peft.main(["--seeds", "0", "--steps", "1", "--methods", "DoRA r=8 (q, v)"])
    assert list(results) == ["DoRA r=8 (q, v)"] and 0.0 <= results["DoRA r=8 (q, v)"][0] <= 1.0
    assert "DoRA r=8 (q, v)" in capsys.readouterr().out


def test_checkpointing_benchmark_runs_tiny(capsys):
    from benchmarks import checkpointing

    tiny = ["--model", "vit-testing", "--image-size", "16", "--batch", "2", "--steps", "1", "--every", "1"]
    results = checkpointing.main([*tiny, "--repeats", "1"])
    assert list(results) == list(checkpointing.WAYS) and results["no saving"]["vs_no_saving"] == 1.0
    assert results["no saving"]["save_blocks_ms"] == 0.0 and results["asynchronous saves"]["save_blocks_ms"] > 0
    assert "| asynchronous saves |" in capsys.readouterr().out


def test_memory_benchmark_runs_tiny(capsys, monkeypatch):
    from benchmarks import memory

    monkeypatch.setattr(memory, "REMAT", ("full",))
    monkeypatch.setattr(memory, "SCAN_REMAT", ("full",))
    tiny = '{"num_layers": 2, "hidden_size": 16, "num_heads": 2, "mlp_dim": 32}'
    sizes = ["--remat-image-size", "32", "--scan-image-size", "32", "--batch", "2", "--iters", "1"]
    tables = memory.main(["--overrides", tiny, *sizes])
    assert tables["remat"][0] == "| scan_layers | remat | temporary | arguments | peak | XLA GFLOP | step time |"
    assert [row.split(" | ")[:2] for row in tables["remat"][2:]] == [["| False", "full"], ["| True", "full"]]
    assert len(tables["scan"]) == 4 and "| True | full |" in tables["scan"][3]
    assert "2 blocks, width 16, 2 heads, MLP 32, patch 16, 32 px, batch 2" in capsys.readouterr().out
