import jtl.quickstart


def test_quickstart_runs_and_beats_chance(capsys):
    accuracies = jtl.quickstart.main(["--seeds", "0", "--steps", "40"])
    assert set(accuracies) == {"from scratch", "frozen backbone, new head", "full fine-tuning"}
    assert all(0.5 < acc[0] <= 1.0 for acc in accuracies.values())  # five classes: chance is 0.2
    out = capsys.readouterr().out
    assert "masking report" in out and "total" in out


def test_digit_tasks_split_classes_and_shots():
    tasks = jtl.quickstart.load_digit_tasks(shots=10, seed=0)
    x_train, y_train = tasks["target_train"]
    assert x_train.shape == (50, 64) and sorted(set(y_train.tolist())) == [0, 1, 2, 3, 4]
    assert set(tasks["source"][1].tolist()) == {0, 1, 2, 3, 4}
    assert len(tasks["target_test"][1]) + 50 == sum(tasks["source"][1].shape) * 0 + 1797 - len(tasks["source"][1])
