"""What training shows while it runs: the time left, from the recent step rate only."""

from lmforge.training.progress import TimeLeft, TrainProgress, seconds_text


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_left_ignores_a_slow_start_and_waits_until_it_is_measured():
    clock = Clock()
    left = TimeLeft(total=1000, clock=clock)
    clock.now = 60.0  # the first 10 steps: threads, allocations, warm-up
    estimates = [left.update(10)]
    for step in range(20, 110, 10):  # then 1 s per 10 steps
        clock.now += 1.0
        estimates.append(left.update(step))
    assert estimates[:3] == [None, None, None]
    assert estimates[-1] == 90.0  # 900 steps left at 10 steps/s, not the start's pace
    assert all(estimate is not None and estimate < 100 for estimate in estimates[3:])


def test_seconds_read_as_a_person_says_them():
    assert [seconds_text(s) for s in (None, 44.6, 125, 7380)] == ["?", "45s", "2m 05s", "2h 03m"]


def test_plain_lines_show_time_left_only_once_known(capsys):
    progress = TrainProgress(total=100, start=0, every=10)
    for step in range(10, 60, 10):
        progress.update(step, loss=1.0, samples_per_s=50.0)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5 and all("left" not in line for line in lines[:3])
    assert "left" in lines[4]
