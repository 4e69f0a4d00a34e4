import jtl.quickstart


def test_quickstart_runs_end_to_end_and_prints_the_table(tmp_path, capsys):
    args = ["--workdir", str(tmp_path), "--seeds", "0", "--steps", "20", "--source-steps", "40"]
    accuracies = jtl.quickstart.main(args)
    assert set(accuracies) == {"from scratch", "frozen backbone, new head", "full fine-tuning"}
    assert all(0.0 <= acc[0] <= 1.0 for acc in accuracies.values())
    printed = capsys.readouterr()
    assert "source task (digits 0-4)" in printed.out and "full fine-tuning" in printed.out
    # What is running goes to stderr, one line a run, so stdout holds only the results.
    assert printed.err.splitlines() == [
        "running: the source task (digits 0-4), 40 steps, once",
        "running 1/3: from scratch, seed 0",
        "running 2/3: frozen backbone, new head, seed 0",
        "running 3/3: full fine-tuning, seed 0",
    ]
    # The source model is cached: a second run trains no source model.
    jtl.quickstart.main(args)
    assert "source task" not in capsys.readouterr().out
